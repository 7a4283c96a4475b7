"""Where a study's engine time went: starting engines, under load, or neither.

A trial's wall time runs from Optuna's start to its completion; its engine
start and its measurement are timed by the trial itself, and the rest
(teardown, quality checks, the wait for GPU memory to come back) is neither.
The defaults' measurement, which is no Optuna trial, is counted from its own
figures. Trials refused before launch cost nothing and are left out.
"""

from __future__ import annotations

from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

__all__ = ["engine_time", "engine_time_line", "fits_in_time", "over_gpu_budget", "over_wall_time", "start_and_load"]


def _trial_costs(study: optuna.Study) -> list[tuple[float, float, float]]:
    """``(total, starting, load)`` seconds of each trial that ran, the defaults' measurement included."""
    costs = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.datetime_start is None or t.datetime_complete is None or t.user_attrs.get("status") in (None, "surplus"):
            continue
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        up, measured = start_and_load(t.user_attrs)
        if not up and not measured:  # a start that failed: all of it went to starting
            up = _seconds((t.user_attrs.get("startup") or {}).get("total_s")) or wall
        costs.append((max(wall, up + measured), up, measured))
    baseline = study.user_attrs.get("baseline") or {}
    up, measured = start_and_load(baseline)
    if up or measured:
        costs.append((up + measured, up, measured))
    return costs


def engine_time(study: optuna.Study) -> dict[str, float]:
    """Seconds: ``total``, ``starting`` (engine starts, failed ones included), ``load``, ``other``."""
    costs = _trial_costs(study)
    total, starting, load = (sum(c[i] for c in costs) for i in range(3))
    return {"total": total, "starting": starting, "load": load, "other": max(0.0, total - starting - load)}


def over_gpu_budget(study: optuna.Study, gpu_minutes: float, gpus: int = 1) -> str | None:
    """Why one more trial would take the study past ``gpu_minutes``, or None while it fits.

    Counted from what the study has stored, so every run of a resumed study and
    every worker's finished trials draw on one budget. The next trial is taken
    to cost as much as the slowest so far: a bound, not a guess, since a budget
    is a ceiling (a winner's full goodput search costs several times a loser's
    early stop). Before any trial ran the cost is unknown, and the first runs.
    """
    costs = [c[0] * gpus for c in _trial_costs(study)]
    spent, slowest = sum(costs), _slowest(costs)
    if spent + slowest <= gpu_minutes * 60:
        return None
    return (f"stopping: {spent / 60:,.1f} of {gpu_minutes:g} GPU-minutes spent, and the slowest trial so far "
            f"took {slowest / 60:,.1f}")


def over_wall_time(study: optuna.Study, seconds_left: float) -> str | None:
    """Why one more trial would end after this run's wall time, or None while it fits.

    The same bound as the GPU-minute budget's, the slowest trial so far, so
    that a run given ten minutes is over in ten, not ten plus a trial: on a
    machine lent for a fixed time, a trial cut off mid-start is lost whole.
    """
    slowest = _slowest([c[0] for c in _trial_costs(study)])
    if fits_in_time(seconds_left, [slowest]):
        return None
    return (f"stopping: {max(seconds_left, 0.0):,.0f} s of the wall time left, and the slowest trial so far "
            f"took {slowest:,.0f} s")


def fits_in_time(seconds_left: float, costs: list[float]) -> bool:
    """Whether one more run, taken to cost as much as the slowest of ``costs``, ends inside ``seconds_left``."""
    return seconds_left > 0 and _slowest(costs) <= seconds_left


def engine_time_line(study: optuna.Study, device: str = "cpu") -> str | None:
    """``GPU time: 21 min, 61% starting engines, 35% under load, 4% other``; None before any trial ran."""
    split = engine_time(study)
    if split["total"] <= 0:
        return None
    share = {k: 100.0 * split[k] / split["total"] for k in ("starting", "load", "other")}
    what = "GPU time" if device == "cuda" else "engine time"
    return (f"{what}: {split['total'] / 60:,.1f} min, {share['starting']:.0f}% starting engines, "
            f"{share['load']:.0f}% under load, {share['other']:.0f}% other (teardown, quality, waits)")


def start_and_load(record: Mapping[str, Any]) -> tuple[float, float]:
    """Seconds a trial, the defaults' measurement or a verify start spent starting its engine and under
    load, as stored with it (0 where not recorded)."""
    return _seconds(record.get("startup_s")), _seconds(record.get("measure_s"))


def _slowest(costs: list[float]) -> float:
    """The next trial's cost as both budgets bound it; 0 before any trial ran (the first one runs)."""
    return max(costs, default=0.0)


def _seconds(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0
