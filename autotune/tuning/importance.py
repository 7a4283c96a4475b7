"""Which knobs matter: one computation of parameter importances for the rounds, review, the report and locate.

Each knob gets one distribution, the widest it had, because Optuna's
evaluators refuse a space that changed between rounds; a knob the rounds
pinned takes its value from the trial's configuration. The target is one
objective in its own direction, with infeasible trials set below the worst
feasible value, so "matters" means "matters for a feasible, good result".
Below, not at: a goodput study stops a loser at the incumbent's rate and
records that rate as its bound, so where every feasible trial read the
incumbent's goodput, losers set at the worst value would tie with them and
the knob that made them lose would look as if it did nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from autotune.tuning.records import TrialRecord

__all__ = ["EVALUATORS", "param_importances", "union_distributions"]

#: The evaluator used everywhere a single ranking is shown; locate shows PED-ANOVA beside it.
DEFAULT_EVALUATOR = "fanova"
EVALUATORS = ("fanova", "ped_anova")
#: Below this many measured trials an importance is a hint, not a finding.
FEW_TRIALS = 20


def param_importances(
    study: optuna.Study,
    params: Sequence[str] | None = None,
    seed: int = 0,
    *,
    objective: int = 0,
    evaluator: str = DEFAULT_EVALUATOR,
) -> dict[str, float]:
    """Importances of ``params`` (default: every knob seen) for one objective; empty when there is too little."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.values]
    dists = union_distributions(complete)
    names = [p for p in (params if params is not None else sorted(dists)) if p in dists]
    rows = []
    for t in complete:
        record = TrialRecord.of(t)
        config = record.config
        if all(p in config and _contains(dists[p], config[p]) for p in names):
            rows.append(({p: config[p] for p in names}, record))
    if len(rows) < 2 or not names:
        return {}
    maximize = study.directions[objective] == optuna.study.StudyDirection.MAXIMIZE
    below = _below_every_feasible([r.values[objective] for _, r in rows if r.values and r.feasible], maximize)
    copy = optuna.create_study(direction="maximize" if maximize else "minimize")
    for params_of, r in rows:
        value = r.values[objective] if r.values and r.feasible else below
        copy.add_trial(optuna.trial.create_trial(
            params=params_of, distributions={p: dists[p] for p in names}, value=value,
        ))
    if len({round(v, 12) for v in (t.value for t in copy.trials)}) < 2:
        return {p: 0.0 for p in names}  # a flat response: nothing matters
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(
                copy, evaluator=_evaluator(evaluator, seed)).items()}
    except (ValueError, RuntimeError):
        return {}


def _below_every_feasible(feasible: list[float], maximize: bool) -> float:
    """The value an infeasible trial is given: worse than the worst feasible one by the feasible
    trials' own spread (by 5% of the worst where they all read the same); 0 where none is feasible,
    so that every trial ties and nothing is said to matter."""
    if not feasible:
        return 0.0
    worst, best = (min(feasible), max(feasible)) if maximize else (max(feasible), min(feasible))
    gap = abs(best - worst) or 0.05 * abs(worst) or 1.0
    return worst - gap if maximize else worst + gap


def _evaluator(name: str, seed: int) -> Any:
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    if name == "ped_anova":
        return optuna.importance.PedAnovaImportanceEvaluator()
    raise ValueError(f"unknown importance evaluator {name!r} (known: {', '.join(EVALUATORS)})")


def union_distributions(trials: Sequence[FrozenTrial]) -> dict[str, BaseDistribution]:
    """Per parameter, one distribution covering every range it was suggested with."""
    out: dict[str, BaseDistribution] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            prev = out.get(name)
            if prev is None:
                out[name] = dist
            elif isinstance(prev, IntDistribution) and isinstance(dist, IntDistribution):
                out[name] = IntDistribution(min(prev.low, dist.low), max(prev.high, dist.high), log=prev.log, step=prev.step)
            elif isinstance(prev, FloatDistribution) and isinstance(dist, FloatDistribution):
                out[name] = FloatDistribution(min(prev.low, dist.low), max(prev.high, dist.high), log=prev.log, step=prev.step)
    return out


def _contains(dist: BaseDistribution, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
