"""Goodput in DistServe's sense: the highest load at which every SLO still holds.

A configuration that serves 40 req/s with a p99 TTFT of 3 s is not better than
one that serves 25 req/s within the SLO, so throughput alone is the wrong thing
to maximise.  Goodput answers "how much load can this deployment take while
keeping its promises": it is found by offering increasing load (a Poisson
request rate in req/s, or a closed-loop concurrency) and keeping the highest
level at which all SLOs hold.

The search (``search_goodput``) is pure logic over a caller-supplied
``measure(load) -> (figures, per_request)``; ``endpoint_measure``
(``autotune.load.endpoint``) builds such a function for a live
OpenAI-compatible server.  Keeping HTTP and asyncio out of the search keeps it
testable against a synthetic latency curve and lets a caller wrap ``measure``
(caching, logging, a different load generator).

Search, at most ``max_levels`` measurements and never the same level twice:

1. Bracket.  Start at ``start``; while the level holds, multiply it by
   ``growth`` (capped at ``upper``); while it fails, divide (floored at ``min_load``).
2. Bisect between the highest level that held and the lowest failing level
   above it until their relative gap ``(hi - lo) / lo`` is below
   ``resolution`` (for concurrency: also until they are adjacent integers), or
   the budget is spent.  The reported goodput is the highest level that held,
   so with a monotone system the true crossing lies within ``resolution`` above it.

With an ``incumbent`` (the best goodput a study has found so far) the search
starts there instead: a trial that fails the incumbent's load with confidence
cannot beat it, and its own goodput is not worth three more levels to learn,
so the search stops at once with ``goodput_upper_bound`` set.  One that holds
searches upward as usual; an uncertain one is searched as if no incumbent had
been given.

Each level is judged as a statistical test (``autotune.load.levels``):
``holds``, ``fails`` or ``uncertain``, with the interval behind it; an
uncertain level acts on its point estimates (by default) or fails
(``conservative=True``).  The search assumes SLOs get harder to meet as load
rises (true of latency bounds).  A throughput *floor* such as
``output_tps>100`` is the opposite: it fails at low load, and halving will not
rescue it; goodput is then 0 unless some bracketed level meets both kinds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from autotune.load.endpoint import DEFAULT_INFLIGHT_HORIZON_S, endpoint_measure, workload_at_level
from autotune.load.levels import SloVerdict, confidence_of, judge, judge_level, wilson_interval
from autotune.spec.slo import Constraint

__all__ = [
    "DEFAULT_INFLIGHT_HORIZON_S",
    "GoodputResult",
    "LevelResult",
    "Unit",
    "endpoint_measure",
    "judge",
    "search_goodput",
    "wilson_interval",
    "workload_at_level",
]

Unit = Literal["req/s", "concurrency"]
Measure = Callable[[float], tuple[dict[str, float], list[dict[str, Any]]]]

_UNITS: tuple[str, ...] = ("req/s", "concurrency")
BELOW_INCUMBENT = "below incumbent"
# Figures copied into the compact JSON of each level and of the best level.
_THROUGHPUT_KEYS: tuple[str, ...] = ("output_throughput", "request_throughput", "total_token_throughput")
# The load generator's health at each level: a saturated level offered less than its load,
# a capped one held requests back and started their clocks late.
_LOADGEN_KEYS: tuple[str, ...] = (
    "loadgen_saturated", "loadgen_cpu_percent", "loadgen_cpu_wait_percent", "loadgen_send_lag_p90_ms",
    "inflight_capped_requests", "inflight_capped_wait_max_ms",
)
# How the level was run: its plan, whether it was extended or cut short, its warm-up at load.
_PLAN_KEYS: tuple[str, ...] = (
    "planned_requests", "max_requests", "cut_short_of", "load_warmup_s", "load_warmup_requests",
)


@dataclass
class LevelResult:
    """One measured load level and the verdict on it.

    ``verdict`` is the statistical one (``holds``, ``fails`` or
    ``uncertain``); ``holds`` is what the search acted on.  ``slos`` holds each
    SLO's verdict and interval, ``requests`` how many requests it rests on.
    """

    load: float  # the rate (req/s) or concurrency tried
    figures: dict[str, float]  # summarize() output at that level
    per_request: list[dict[str, Any]]  # per_request_view() output
    holds: bool  # what the search acted on (see the module docstring)
    attainment: dict[str, dict[str, float]] = field(default_factory=dict)
    violations: dict[str, float] = field(default_factory=dict)
    verdict: str = ""  # empty: taken from ``holds``, for a level judged elsewhere
    slos: dict[str, SloVerdict] = field(default_factory=dict)
    backlog: dict[str, Any] = field(default_factory=dict)
    requests: int = -1  # -1: len(per_request)
    stop_reason: str = ""

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = "holds" if self.holds else "fails"
        if self.requests < 0:
            self.requests = len(self.per_request)

    def to_json(self) -> dict[str, Any]:
        """Compact, strictly JSON-safe summary of the level (NaN and inf become None)."""
        f = self.figures
        return {
            "load": self.load,
            "holds": self.holds,
            "verdict": self.verdict,
            "requests": self.requests,
            **{k: _num(f.get(k)) for k in _PLAN_KEYS if k in f},
            "extended": bool(f.get("extended")),
            "stopped_early": bool(f.get("stopped_early")),
            "stop_reason": self.stop_reason or None,
            "output_throughput": _num(f.get("output_throughput")),
            "request_throughput": _num(f.get("request_throughput")),
            "p99_ttft_ms": _num(f.get("p99_ttft_ms")),
            "sustained_ratio": _num(f.get("sustained_ratio")),
            "violations": {text: _num(v) for text, v in self.violations.items()},
            **{k: _num(f.get(k)) for k in _LOADGEN_KEYS if k in f},
            **({"inflight_capped": bool(f["inflight_capped"])} if "inflight_capped" in f else {}),
            "attainment": {text: {k: _num(v) for k, v in info.items()} for text, info in self.attainment.items()},
            "slos": {text: slo.to_json() for text, slo in self.slos.items()},
            "backlog": _clean(self.backlog),
        }


@dataclass
class GoodputResult:
    """The outcome of a goodput search; ``best`` is the highest level that held.

    ``stopped == "below incumbent"``: the first level, at the incumbent's
    load, failed with confidence; ``goodput`` is then 0.0 (no level held) and
    ``goodput_upper_bound`` the incumbent's load: the trial's goodput lies
    below it, unmeasured.  ``incumbent`` records the load started from, its
    verdict and what the search did about it.
    """

    goodput: float  # best load that held, 0.0 if none did
    unit: str  # "req/s" or "concurrency"
    levels: list[LevelResult]  # in the order tried
    best: LevelResult | None
    incumbent: dict[str, Any] | None = None
    stopped: str | None = None
    goodput_upper_bound: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Compact, strictly JSON-safe summary (NaN and inf become None)."""
        best = None
        if self.best is not None:
            best = {"load": self.best.load, **{k: _num(self.best.figures.get(k)) for k in _THROUGHPUT_KEYS}}
        return {
            "goodput": self.goodput,
            "unit": self.unit,
            "best": best,
            "incumbent": self.incumbent,
            "stopped": self.stopped,
            "goodput_upper_bound": self.goodput_upper_bound,
            "levels": [level.to_json() for level in self.levels],
        }


def _num(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return _num(value)
    return value


def search_goodput(
    measure: Measure,
    constraints: Sequence[Constraint],
    *,
    unit: Unit,
    start: float,
    max_levels: int = 6,
    upper: float | None = None,
    min_load: float | None = None,
    resolution: float = 0.1,
    on_level: Callable[[LevelResult], None] | None = None,
    conservative: bool = False,
    confidence_z: float = 1.96,
    growth: float = 2.0,
    incumbent: float | None = None,
    min_sustained: float = 0.85,
    design_effect: float = 1.0,
    first_growth: float | None = None,
) -> GoodputResult:
    """Find the highest load at which every SLO holds; see the module docstring.

    ``growth`` is the bracketing factor (2 doubles and halves). A smaller one,
    such as 1.25, suits a ``start`` near the expected goodput (a repeat of an
    earlier measurement): the bracket closes in fewer levels. ``first_growth``
    replaces it for the first step from ``start`` only: ``1 + resolution`` from
    a start at a goodput measured before closes the bracket in two levels
    when the reading repeats, and widens to ``growth`` when it does not.

    ``measure(load)`` runs the load once and returns ``(figures, per_request)``
    as ``summarize`` and ``per_request_view`` give them; it is called at most
    ``max_levels`` times, never twice with the same load.  For ``"concurrency"``
    loads are integers (``start`` rounded, ``upper`` floored, ``min_load``
    ceiled and at least 1).  ``on_level`` sees each level as soon as it is
    judged.  ``confidence_z`` sets the two-sided confidence of every interval
    (1.96: 95%); ``min_sustained`` the share of an open-loop rate a server
    must confidently keep up with; ``design_effect`` how much more a level's
    miss count varies than independent requests' would (clustered misses,
    ``autotune.load.intervals``).  ``incumbent``, when given, replaces
    ``start`` (clamped to ``min_load`` and ``upper``).
    """
    constraints = list(constraints)
    if not constraints:
        raise ValueError("goodput needs at least one SLO: without one every load holds and goodput is unbounded")
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {', '.join(_UNITS)}, got {unit!r}")
    if max_levels < 1:
        raise ValueError("max_levels must be >= 1")
    if not resolution > 0:
        raise ValueError("resolution must be > 0")
    if not growth > 1:
        raise ValueError("growth must be > 1")
    if first_growth is not None and not first_growth > 1:
        raise ValueError("first_growth must be > 1")
    if incumbent is not None:
        if not incumbent > 0:
            raise ValueError("incumbent must be > 0")
        start = max(min(incumbent, upper if upper is not None else incumbent), min_load or 0.0)
    integer = unit == "concurrency"
    first, floor, ceiling = _limits(start, min_load, upper, integer)
    confidence = confidence_of(confidence_z)

    levels: list[LevelResult] = []

    def probe(load: float) -> LevelResult:
        figures, per_request = measure(int(load) if integer else load)
        figures = dict(figures)
        queue = figures.pop("engine_queue", None)
        reason = figures.pop("stop_reason", "")
        v = judge_level(constraints, figures, per_request, confidence=confidence, conservative=conservative,
                        min_sustained=min_sustained, queue=queue, design_effect=design_effect)
        level = LevelResult(float(load), figures, list(per_request), v.holds, v.attainment, v.violations,
                            v.verdict, v.slos, v.backlog, v.requests, str(reason or ""))
        levels.append(level)
        if on_level is not None:
            on_level(level)
        return level

    # Phase 1: bracket by growing from a pass or shrinking from a failure.
    load = first
    opening = probe(load)
    seen: dict[str, Any] | None = None
    if incumbent is not None:
        outcome = {"fails": BELOW_INCUMBENT, "holds": "searched up from the incumbent"}.get(
            opening.verdict, "uncertain at the incumbent: searched as without one"
        )
        seen = {"load": opening.load, "verdict": opening.verdict, "outcome": outcome}
        if opening.verdict == "fails":
            return GoodputResult(0.0, unit, levels, None, seen, BELOW_INCUMBENT, opening.load)
    going_up = opening.holds
    while len(levels) < max_levels:
        step = first_growth if first_growth is not None and len(levels) == 1 else growth
        if going_up:
            up = max(load + 1, round(load * step)) if integer else load * step
            nxt = up if ceiling is None else min(up, ceiling)
            if nxt <= load:
                break  # held at the ceiling
        else:
            nxt = min(load - 1, int(load / step)) if integer else load / step
            nxt = max(nxt, floor)
            if nxt >= load or nxt <= 0:
                break  # failed at the floor
        load = nxt
        if probe(load).holds != going_up:
            break

    # Phase 2: bisect the bracket (highest pass, lowest failure above it).
    while len(levels) < max_levels:
        bracket = _bracket(levels)
        if bracket is None:
            break
        lo, hi = bracket
        if (hi - lo) / lo < resolution or (integer and hi - lo <= 1):
            break
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        if any(level.load == mid for level in levels):  # backstop: a float midpoint rounding onto an end
            break
        probe(mid)

    best = max((level for level in levels if level.holds), key=lambda level: level.load, default=None)
    return GoodputResult(best.load if best is not None else 0.0, unit, levels, best, seen)


def _limits(start: float, min_load: float | None, upper: float | None, integer: bool) -> tuple[Any, Any, Any]:
    """First level, floor and ceiling (None: unbounded), as ints for concurrency."""
    if not start > 0:
        raise ValueError("start must be > 0")
    if min_load is not None and not min_load > 0:
        raise ValueError("min_load must be > 0")
    if upper is not None and not upper > 0:
        raise ValueError("upper must be > 0")
    first: float | int = start
    floor: float | int = 0.0 if min_load is None else min_load
    ceiling: float | int | None = upper
    if integer:
        first = max(1, math.floor(start + 0.5))
        floor = max(1, math.ceil(floor))
        ceiling = None if upper is None else math.floor(upper)
        if ceiling is not None and ceiling < 1:
            raise ValueError("upper must allow a concurrency of at least 1")
    if ceiling is not None and first > ceiling:
        raise ValueError(f"start ({first:g}) is above upper ({ceiling:g})")
    if first < floor:
        raise ValueError(f"start ({first:g}) is below min_load ({floor:g})")
    return first, floor, ceiling


def _bracket(levels: Sequence[LevelResult]) -> tuple[float, float] | None:
    """Highest holding load and the lowest failing load above it, if both exist.

    No measured level lies strictly between the two (it would have to hold, so be
    above the highest pass, or fail, so be below the lowest failure), so a
    midpoint is always a new level, even when the measurements are not monotone.
    """
    passing = [level.load for level in levels if level.holds]
    if not passing:
        return None
    lo = max(passing)
    failing = [level.load for level in levels if not level.holds and level.load > lo]
    if not failing:
        return None
    return lo, min(failing)
