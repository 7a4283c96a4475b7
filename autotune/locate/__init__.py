"""Locate: name a trial's bottleneck from its signals, and say what to change next.

Each rule (``autotune.locate.rules``) reads the figures a trial left behind
(load-generator figures, engine metrics, GPU telemetry, the configuration) and
either stays silent or returns a ``Diagnosis``: the bottleneck, the evidence
that points to it, a confidence, and the knobs to turn, in which direction.
The study-level half is the parameter importances: which knobs moved the
objectives, by Optuna's fANOVA and PED-ANOVA evaluators
(``autotune.tuning.importance``, the same computation ``review`` shows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from autotune.errors import UserError
from autotune.locate.rules import (
    RULES,
    diagnose,
    rule_communication,
    rule_compute,
    rule_frontend,
    rule_kv_cache,
    rule_load_generator,
    rule_memory_bandwidth,
    rule_prefill_interference,
    rule_queueing,
)
from autotune.locate.signals import (
    Advice,
    Diagnosis,
    Evidence,
    Importance,
    Signals,
    StudyDiagnosis,
    TrialDiagnosis,
)
from autotune.tuning import EVALUATORS, StudyResults

__all__ = [
    "RULES",
    "Advice",
    "Diagnosis",
    "Evidence",
    "Importance",
    "Signals",
    "StudyDiagnosis",
    "TrialDiagnosis",
    "diagnose",
    "locate_study",
    "locate_trial",
    "parameter_importances",
    "rule_communication",
    "rule_compute",
    "rule_frontend",
    "rule_kv_cache",
    "rule_load_generator",
    "rule_memory_bandwidth",
    "rule_prefill_interference",
    "rule_queueing",
]


def _missing(s: Signals) -> list[str]:
    out = []
    if s.get("running_peak") is None and s.get("kv_cache_usage_peak") is None:
        out.append("engine metrics (KV cache, queue): the engine exposed none")
    if s.on_gpu and s.get("sm_util_mean") is None:
        out.append("GPU telemetry (NVML): not recorded")
    return out


def locate_trial(attrs: Mapping[str, Any], number: int | None = None) -> TrialDiagnosis:
    """Diagnoses one trial from its stored attributes (or an outcome.json with the same keys)."""
    s = Signals(attrs.get("figures"), attrs.get("telemetry"), attrs.get("config"), attrs.get("environment"))
    return TrialDiagnosis(number, dict(s.config), diagnose(s), _missing(s), attrs.get("startup"))


def parameter_importances(
    results: StudyResults, objectives: list[tuple[str, int]] | None = None
) -> tuple[list[Importance], list[str]]:
    """Every evaluator's importances per objective; notes say why one could not be computed.

    ``objectives``: (name, index into a trial's values); None names them value0, value1...
    """
    complete = results.measured()
    varied = {
        name for t in complete for name in t.params
        if len({repr(u.params.get(name)) for u in complete}) > 1
    }
    if len(complete) < 3 or not varied:
        return [], [f"importances need at least 3 finished trials with varied knobs ({len(complete)} finished)"]
    if objectives is None:
        objectives = [(f"value{i}", i) for i in range(len(results.directions))]
    notes: list[str] = []
    out: list[Importance] = []
    for name, index in objectives:
        for evaluator in EVALUATORS:
            try:
                values = results.importances_by(evaluator, index)
            except ImportError as e:
                notes.append(f"{evaluator}: {e}".split(". Actual error")[0])
                continue
            except Exception as e:
                notes.append(f"{evaluator} on {name}: {type(e).__name__}: {e}")
                continue
            if values:
                out.append(Importance(evaluator, name, values))
            else:
                notes.append(f"{evaluator} on {name}: not computable from these trials")
    return out, list(dict.fromkeys(notes))


def locate_study(study_dir: Path | None, trial: int | None = None, *, storage: str | None = None,
                 name: str | None = None) -> StudyDiagnosis:
    """Diagnoses a study's trials (or one) and computes its parameter importances."""
    results = StudyResults.load(study_dir, storage=storage, name=name)
    if trial is not None:
        chosen = [t for t in results.trials if t.number == trial]
        if not chosen:
            raise UserError(f"study {results.name} has no trial {trial} (trials 0..{len(results.trials) - 1})")
    else:
        chosen = [t for t in results.trials if t.measured or t.figures]
    diagnosed = [locate_trial(t.attrs, t.number) for t in chosen]
    objectives = [(o.text, i) for i, o in enumerate(results.spec.objective_list)]
    importances, notes = parameter_importances(results, objectives)
    return StudyDiagnosis(results.name, diagnosed, importances, notes)
