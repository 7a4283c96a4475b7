"""Quality figures measured once per quality-relevant setting and reused from the study's storage.

Perplexity and pass-key accuracy depend only on the quality knobs (quantization,
KV-cache dtype ...), so each setting is measured once and kept in the study's
storage (study attribute ``quality:<setting>``), where every later trial, on any
worker, finds it. The baseline (every quality knob at its neutral value: no
quantization, the KV cache in the model's dtype) is measured once per study: by
the trial that runs it, or, when a trial of another setting comes first, on a
start of its own before that trial.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna

from autotune import quality as q
from autotune.json_safe import json_safe
from autotune.space import SearchSpace
from autotune.spec import Constraint, Objective
from autotune.trial import QualityHook, TrialSetup, run_quality_only

__all__ = ["QUALITY_ATTR", "quality_hook"]

#: Study attribute prefix of a stored quality measurement; the rest is the setting's key.
QUALITY_ATTR = "quality:"


def quality_hook(
    study: optuna.Study, setup: TrialSetup, constraints: list[Constraint], objectives: list[Objective],
    number: int, config: Mapping[str, Any], trial_dir: Path, say: Callable[[str], None],
) -> QualityHook | None:
    """What ``run_trial`` calls on the running server for the quality figures, or None
    when no SLO or objective reads one."""
    plan = q.plan_for(constraints, objectives)
    if not plan.needed:
        return None
    full = SearchSpace.load(setup.engine.name).for_hardware(setup.device, setup.hardware)
    knobs = [k for k in q.quality_knobs(full) if k in setup.space.knobs]
    key = q.setting_key(config, knobs)
    base_config = q.baseline_config(config, full)
    base_key = q.setting_key(base_config, knobs)

    launches = setup.engine.capabilities.launches  # an endpoint autotune does not start has no baseline start
    if plan.perplexity and launches and key != base_key and _stored(study, base_key) is None:
        try:
            result = run_quality_only(
                setup, base_config, trial_dir / "quality-baseline",
                lambda url: _measure(setup, plan, base_config, url).to_json(), status=say,
            )
            _store(study, base_key, dict(result), number)
        except Exception as e:  # the trial goes on; its relative perplexity is then unknown
            say(f"quality baseline not measured: {e}")

    def hook(url: str) -> dict[str, Any]:
        stored = _stored(study, key)
        measured_here = stored is None
        if stored is None:
            stored = _store(study, key, _measure(setup, plan, config, url).to_json(), number)
        figures = dict(stored["figures"])
        if plan.perplexity:
            base = stored if key == base_key else _stored(study, base_key)
            rel = q.relative_to_baseline(figures, base["figures"]) if base else {}
            figures.update(rel or {"ppl_rel_change": math.nan})  # unknown: breaks a relative bound
        return {
            "figures": figures,
            "setting": json.loads(key),
            "baseline": json.loads(base_key),
            "measured_here": measured_here,
            "measured_in_trial": stored.get("trial"),
            **stored.get("info", {}),
        }

    return hook


def _measure(setup: TrialSetup, plan: Any, config: Mapping[str, Any], url: str) -> Any:
    model_dir = setup.model.tokenizer_dir or setup.model.source
    if not Path(model_dir).is_dir():
        raise q.QualityError(f"quality needs the model's files on this machine ({model_dir} is not a folder)")
    max_len = setup.model.max_model_len or int((setup.model_config or {}).get("max_position_embeddings") or 2048)
    caps = setup.engine.capabilities
    return q.measure_quality(
        url, setup.engine.request_model(setup.model), model_dir, plan, max_model_len=max_len,
        prompt_logprobs=caps.prompt_logprobs, token_ids=caps.token_id_prompts,
        dtype=config.get("dtype"), api_key=setup.api_key,
    )


def _stored(study: optuna.Study, key: str) -> dict[str, Any] | None:
    stored = study.user_attrs.get(QUALITY_ATTR + key)  # read from the storage: other workers' too
    if stored is None:
        return None
    figures = {k: (math.nan if v is None else v) for k, v in stored.get("figures", {}).items()}
    return {**stored, "figures": figures}


def _store(study: optuna.Study, key: str, result: dict[str, Any], number: int) -> dict[str, Any]:
    stored = {**result, "figures": json_safe(result["figures"]), "trial": number, "measured_at": time.time()}
    study.set_user_attr(QUALITY_ATTR + key, stored)
    return {**stored, "figures": dict(result["figures"])}
