"""The engine's own defaults, measured first: the reference every trial is read against.

Kept as the study attribute ``baseline`` rather than as an Optuna trial: a
configuration with no knob set has no parameters, and a completed trial
without parameters would empty the search space that the GP and multivariate
TPE samplers model jointly. It is measured on top of the trial budget, once
per study (a resumed study, or another worker, finds it stored).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from autotune.cost import cost_figures
from autotune.figures import label
from autotune.json_safe import json_safe
from autotune.spec import StudySpec
from autotune.trial import TrialSetup, run_trial
from autotune.tuning.quality_cache import quality_hook
from autotune.tuning.records import TrialRecord

__all__ = [
    "BASELINE_ATTR", "INCUMBENT_CONSTRAINT", "goodput_reference", "incumbent_violation", "measure_baseline",
    "versus_defaults",
]

BASELINE_ATTR = "baseline"
_CLAIM_ATTR = "baseline_claimed_by"
#: A goodput this far under a configuration one knob away (or the defaults) is measured again.
SUSPICIOUS_SHARE = 0.85
#: The constraint every trial of a study searched from its incumbent carries (``incumbent_violation``).
INCUMBENT_CONSTRAINT = "goodput at least the incumbent's"


def measure_baseline(
    study: optuna.Study, spec: StudySpec, setup: TrialSetup, environment: Mapping[str, Any], reporter: Any,
    worker: str,
) -> dict[str, Any] | None:
    """Measures the defaults unless the spec opts out, the engine is not autotune's to start, or it is stored."""
    if not spec.baseline or not setup.engine.capabilities.launches:
        return None
    stored = study.user_attrs.get(BASELINE_ATTR)
    if stored is not None:
        return stored
    if study.user_attrs.get(_CLAIM_ATTR) not in (None, worker):
        return None  # another worker measures it
    study.set_user_attr(_CLAIM_ATTR, worker)
    assert spec.study_dir is not None
    trial_dir = spec.study_dir / "baseline"
    reporter.trial_started(-1, {})
    quality = quality_hook(study, setup, spec.constraints, spec.objective_list, -1, {}, trial_dir,
                           reporter.trial_status)
    outcome = run_trial(setup, {}, trial_dir, status=reporter.trial_status, progress=reporter.requests_progress,
                        quality=quality)
    figures = dict(outcome.figures)
    values: list[float] | None = None
    feasible: bool | None = None
    slo: dict[str, Any] = {}
    if outcome.status == "ok":
        figures.update(cost_figures(figures, {}, gpu_count=spec.hardware.gpu_count, device=setup.device,
                                    price_per_gpu_hour=spec.hardware.price_per_gpu_hour))
        try:
            values = [o.value(figures) for o in spec.objective_list]
        except KeyError:
            values = None
        try:
            violations = {c.text: c.violation(figures, outcome.per_request) for c in spec.constraints}
        except KeyError as e:  # a figure the engine could not give: the defaults are measured, not judged
            reporter.trial_status(f"the defaults are not judged: {e.args[0]}")
        else:
            slo = {text: {"violation": v, "holds": v <= 0} for text, v in violations.items()}
            feasible = all(v <= 0 for v in violations.values())
    data = {
        "config": {}, "status": outcome.status, "reason": outcome.reason, "figures": figures, "values": values,
        "feasible": feasible, "slo": slo, "environment": dict(environment), "command": outcome.command,
        "config_file": outcome.config_file, "env": outcome.env, "startup_s": outcome.startup_s,
        "measure_s": outcome.measure_s, "goodput": outcome.goodput, "telemetry": outcome.telemetry,
        "repeats": outcome.repeats, "startup": outcome.startup,
        "trial_dir": str(trial_dir.resolve()),
    }
    study.set_user_attr(BASELINE_ATTR, json_safe(data))
    reporter.trial_finished(-1, outcome, feasible)
    return data


def goodput_reference(
    study: optuna.Study, spec: StudySpec, config: Mapping[str, Any]
) -> tuple[float | None, float | None]:
    """(incumbent, recheck_below) for a goodput search of ``config``; (None, None) outside goodput studies.

    The incumbent is the best feasible goodput so far, the defaults' included; a
    trial that fails there with confidence is a loser, not worth its exact
    figure. Only a study whose one objective is goodput starts from it: with
    several objectives a lower goodput may still be on the front. ``recheck_below``
    is a share of the best goodput among the defaults and the configurations one
    knob away: a reading under it is more likely bad luck than a bad knob.
    """
    if spec.goodput is None:
        return None, None
    measured = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    baseline = study.user_attrs.get(BASELINE_ATTR) or {}
    feasible_goodputs = [_goodput(r.figures) for r in measured if r.feasible]
    if baseline.get("feasible"):
        feasible_goodputs.append(_goodput(baseline.get("figures") or {}))
    known = [g for g in feasible_goodputs if g is not None and g > 0]
    incumbent = max(known) if known and _from_incumbent(spec) else None
    near = [_goodput(r.figures) for r in measured if _one_knob_apart(r.config, config)]
    near.append(_goodput(baseline.get("figures") or {}) if baseline.get("status") == "ok" else None)
    near_known = [g for g in near if g is not None and g > 0]
    recheck = SUSPICIOUS_SHARE * max(near_known) if near_known else None
    return incumbent, recheck


def incumbent_violation(spec: StudySpec, bound: float | None) -> dict[str, float]:
    """The constraint that tells Optuna a trial stopped below the incumbent: 1 where it did, -1 elsewhere.

    Set on every trial of a study searched from its incumbent, under one name:
    Optuna's GP sampler models each constraint across all trials and refuses a
    study whose trials carry different constraint names, so a constraint only
    the stopped trials had (or one named after the incumbent's value) stopped
    the study at its first GP draw.
    """
    if not _from_incumbent(spec):
        return {}
    return {INCUMBENT_CONSTRAINT: 1.0 if bound is not None else -1.0}


def _from_incumbent(spec: StudySpec) -> bool:
    """Only a study whose one objective is goodput starts a search from the incumbent."""
    single = [o.metric for o in spec.objective_list] == ["goodput"]
    return spec.goodput is not None and single and spec.goodput.from_incumbent


def _goodput(figures: Mapping[str, Any]) -> float | None:
    value = figures.get("goodput")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _one_knob_apart(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = set(a) | set(b)
    return sum(a.get(k) != b.get(k) for k in keys) == 1


def versus_defaults(best: TrialRecord | None, baseline: TrialRecord | None, metric: str, maximize: bool) -> str:
    """The study's last word: how far the best trial beat the defaults, with an interval, or that it did not.

    The interval comes from what each reading knows of its own uncertainty: a
    goodput lies between the highest level that held and the lowest that failed,
    and a figure measured with repeats has its Student-t interval. Without
    either there is no interval, and the line says so rather than invent one.
    """
    if baseline is None:
        return "the engine's defaults were not measured: no ratio to them"
    base = baseline.figures if baseline.get("status") == "ok" else {}
    if best is None:
        return "no trial met every SLO: nothing to set against the defaults"
    b = _span(best.figures, best.get("goodput"), best.get("repeats"), metric)
    a = _span(base, baseline.get("goodput"), baseline.get("repeats"), metric)
    if b is None or a is None or not a[0] > 0:
        return f"best: trial {best.number}; the defaults' {label(metric)} was not measured, so no ratio"
    ratio = b[0] / a[0] if maximize else a[0] / b[0]
    low, high = (b[1] / a[2], b[2] / a[1]) if maximize else (a[1] / b[2], a[2] / b[1])
    what = label(metric) if maximize else f"lower {label(metric)}"
    if not (math.isfinite(low) and low > 0) or (low == high == ratio):
        if ratio <= 1:  # below the defaults on its own reading: no interval could make that a win
            return (f"nothing beat the defaults (best: trial {best.number}, {ratio:.2f}x the defaults' {what}, "
                    "one reading each)")
        return (f"best: trial {best.number}, {ratio:.2f}x the defaults' {what} (one reading each, no interval: "
                "`autotune verify` measures one)")
    interval = f"95% CI {low:.2f}..{high:.2f}" if math.isfinite(high) else f"95% CI above {low:.2f}"
    if low > 1:
        return f"best: trial {best.number}, {ratio:.2f}x the defaults' {what} ({interval})"
    return (f"nothing beat the defaults beyond the measurement's noise (best: trial {best.number}, "
            f"{ratio:.2f}x the defaults' {what}, {interval})")


def _span(
    figures: Mapping[str, Any], goodput: Mapping[str, Any] | None, repeats: Mapping[str, Any] | None, metric: str,
) -> tuple[float, float, float] | None:
    """(value, low, high) of one reading: a goodput's bracket, a repeated figure's interval, else the value alone."""
    value = figures.get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if metric == "goodput" and goodput:
        failing = [lv.get("load") for lv in goodput.get("levels", []) if not lv.get("holds") and lv.get("load")]
        above = [f for f in failing if f > value]
        return float(value), float(value), float(min(above)) if above else math.inf
    repeated = ((repeats or {}).get("summary") or {}).get(metric) or {}
    ci = repeated.get("ci95")
    if ci and None not in ci:
        return float(value), float(ci[0]), float(ci[1])
    return float(value), float(value), float(value)
