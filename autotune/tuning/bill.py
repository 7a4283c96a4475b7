"""Where a study's engine time went: starting engines, under load, or neither.

A trial's wall time runs from Optuna's start to its completion; its engine
start and its measurement are timed by the trial itself, and the rest
(teardown, quality checks, the wait for GPU memory to come back) is neither.
The defaults' measurement, which is no Optuna trial, is counted from its own
figures. Trials refused before launch cost nothing and are left out.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = ["engine_time", "engine_time_line"]


def engine_time(study: optuna.Study) -> dict[str, float]:
    """Seconds: ``total``, ``starting`` (engine starts, failed ones included), ``load``, ``other``."""
    starting = load = total = 0.0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.datetime_start is None or t.datetime_complete is None or t.user_attrs.get("status") in (None, "surplus"):
            continue
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        up, measured = _seconds(t.user_attrs.get("startup_s")), _seconds(t.user_attrs.get("measure_s"))
        if not up and not measured:  # a start that failed: all of it went to starting
            up = _seconds((t.user_attrs.get("startup") or {}).get("total_s")) or wall
        total += max(wall, up + measured)
        starting += up
        load += measured
    baseline = study.user_attrs.get("baseline") or {}
    up, measured = _seconds(baseline.get("startup_s")), _seconds(baseline.get("measure_s"))
    total += up + measured
    starting += up
    load += measured
    return {"total": total, "starting": starting, "load": load, "other": max(0.0, total - starting - load)}


def engine_time_line(study: optuna.Study, device: str = "cpu") -> str | None:
    """``GPU time: 21 min, 61% starting engines, 35% under load, 4% other``; None before any trial ran."""
    split = engine_time(study)
    if split["total"] <= 0:
        return None
    share = {k: 100.0 * split[k] / split["total"] for k in ("starting", "load", "other")}
    what = "GPU time" if device == "cuda" else "engine time"
    return (f"{what}: {split['total'] / 60:,.1f} min, {share['starting']:.0f}% starting engines, "
            f"{share['load']:.0f}% under load, {share['other']:.0f}% other (teardown, quality, waits)")


def _seconds(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0
