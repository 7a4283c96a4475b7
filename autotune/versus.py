"""A verified recommendation against the verified defaults: the ratio a user is promised, with its interval.

A study's own ratio to the defaults rests on one reading of each; ``autotune
verify --defaults`` starts both again from nothing, several times, and this
sets the two sets of starts against each other on the study's first
objective.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from autotune.json_safe import json_safe
from autotune.load.stats import Summary
from autotune.spec.slo import Objective
from autotune.verify import Verification

__all__ = ["Versus", "versus_defaults"]


@dataclass
class Versus:
    """A verified recommendation against the verified defaults, on the study's first objective.

    ``ratio`` is how many times better the recommendation is (for a figure to
    minimise, the defaults' over the recommendation's), as the ratio of the
    geometric means over the fresh starts; ``low``/``high`` its 95% interval
    from Welch's t on the logarithms (unequal spreads, few starts). ``apart``:
    each side's own Student-t 95% interval of the mean lies clear of the
    other's, the recommendation's on the better side.
    """

    trial: int
    metric: str
    maximize: bool
    ratio: float
    low: float | None
    high: float | None
    apart: bool
    starts: tuple[int, int]  # the recommendation's and the defaults' measured starts
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def versus_defaults(results: list[Verification], objective: Objective) -> list[Versus]:
    """Each verified trial against the defaults' verification (trial -1), when both were verified here."""
    base = next((r for r in results if r.trial < 0), None)
    if base is None:
        return []
    metric, maximize = objective.metric, objective.direction == "maximize"
    a = _values(base, objective)
    out = []
    for r in results:
        if r.trial < 0:
            continue
        b = _values(r, objective)
        if not a or not b:
            continue
        better, worse = (b, a) if maximize else (a, b)
        if min(better + worse) <= 0:
            ratio = statistics.fmean(better) / statistics.fmean(worse) if statistics.fmean(worse) > 0 else math.inf
            out.append(Versus(r.trial, metric, maximize, ratio, None, None, False, (len(b), len(a)),
                              "a start measured 0: no interval on a ratio"))
            continue
        ratio = math.exp(statistics.fmean(map(math.log, better)) - statistics.fmean(map(math.log, worse)))
        low = high = None
        note = None
        if len(a) >= 2 and len(b) >= 2 and len(set(better)) == len(set(worse)) == 1:
            low = high = ratio  # every start of each side read the same: the ratio is exact
        elif len(a) >= 2 and len(b) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # one side's starts all alike
                ci = stats.ttest_ind(np.log(better), np.log(worse), equal_var=False).confidence_interval(0.95)
            low, high = (math.exp(ci.low), math.exp(ci.high)) if math.isfinite(ci.low) else (None, None)
        else:
            note = "one start on a side: no interval"
        sb, sa = Summary.of(b), Summary.of(a)
        apart = sb.n >= 2 and sa.n >= 2 and (sb.ci95[0] > sa.ci95[1] if maximize else sb.ci95[1] < sa.ci95[0])
        out.append(Versus(r.trial, metric, maximize, ratio, low, high, apart, (len(b), len(a)), note))
    return out


def _values(result: Verification, objective: Objective) -> list[float]:
    out = []
    for s in result.ok_starts:
        try:
            value = objective.value(s.figures)
        except KeyError:  # a start that never measured the figure
            continue
        if math.isfinite(value):
            out.append(value)
    return out
