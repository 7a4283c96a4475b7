"""Goodput in DistServe's sense: the highest load at which every SLO still holds.

A configuration that serves 40 req/s with a p99 TTFT of 3 s is not better than
one that serves 25 req/s within the SLO, so throughput alone is the wrong thing
to maximise.  Goodput answers "how much load can this deployment take while
keeping its promises": it is found by offering increasing load (a Poisson
request rate in req/s, or a closed-loop concurrency) and keeping the highest
level at which all SLOs hold.

The search (``search_goodput``) is pure logic over a caller-supplied
``measure(load) -> (figures, per_request)``; ``endpoint_measure`` builds such a
function for a live OpenAI-compatible server.  Keeping HTTP and asyncio out of
the search keeps it testable against a synthetic latency curve and lets a
caller wrap ``measure`` (caching, logging, a different load generator).

Search, at most ``max_levels`` measurements and never the same level twice:

1. Bracket.  Start at ``start``; while the level holds, double it (capped at
   ``upper``); while it fails, halve it (floored at ``min_load``).
2. Bisect between the highest level that held and the lowest failing level
   above it until their relative gap ``(hi - lo) / lo`` is below
   ``resolution`` (for concurrency: also until they are adjacent integers), or
   the budget is spent.  The reported goodput is the highest level that held,
   so with a monotone system the true crossing lies within ``resolution`` above it.

The search assumes SLOs get harder to meet as load rises (true of latency
bounds).  A throughput *floor* such as ``output_tps>100`` is the opposite: it
fails at low load, and halving will not rescue it; goodput is then 0 unless
some bracketed level meets both kinds.

Attainment SLOs (``ttft<300ms@99%``) are judged on a sample of requests, so
their achieved fraction is noisy; ``judge`` reports the Wilson score interval
for every such SLO and decides by one of two rules:

* default: the SLO holds iff the point estimate meets the target *and* the
  Wilson upper bound does (the target is not confidently missed).  Because the
  Wilson interval always contains the point estimate, the second clause
  follows from the first: in effect this is the plain point-estimate rule,
  the same verdict ``Constraint.violation`` gives.  It is the default because
  the strict rule below cannot pass a high target at the request counts a
  tuning trial can afford: with zero misses the Wilson lower bound is
  ``n / (n + z**2)``, so ``@99%`` needs ``n >= 0.99 * z**2 / 0.01``, i.e.
  381 requests at z=1.96 (73 for ``@95%``), and a rule that fails every level
  reports a goodput of 0 for every configuration, which ranks nothing.
* ``conservative=True``: the SLO holds iff the Wilson *lower* bound meets the
  target, i.e. the pass is statistically confident and a lucky sample cannot
  pass.  Use it with enough requests per level (see the figures above).

``violations`` always holds ``Constraint.violation`` as the SLO module defines
it (target minus achieved fraction for attainment SLOs), whichever rule judged.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from autotune.load.runner import run_load
from autotune.load.stats import per_request_view, summarize
from autotune.load.prompts import PromptTokenizer, build_requests
from autotune.load.workload import Workload
from autotune.spec.slo import Constraint

__all__ = [
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
# Same tolerance as autotune.slo: 0.95 vs 19/20 is float noise, not a miss.
_ATTAINMENT_EPS = 1e-12
# In an open loop the in-flight cap should never bind at a load the server can
# sustain; see workload_at_level.
DEFAULT_INFLIGHT_HORIZON_S = 8.0
# Figures copied into the compact JSON of each level and of the best level.
_THROUGHPUT_KEYS: tuple[str, ...] = ("output_throughput", "request_throughput", "total_token_throughput")
# The load generator's health at each level: a saturated level offered less than its load.
_LOADGEN_KEYS: tuple[str, ...] = (
    "loadgen_saturated", "loadgen_cpu_percent", "loadgen_cpu_wait_percent", "loadgen_send_lag_p90_ms",
)


# --------------------------------------------------------------------------- results


@dataclass
class LevelResult:
    """One measured load level and the verdict on it."""

    load: float  # the rate (req/s) or concurrency tried
    figures: dict[str, float]  # summarize() output at that level
    per_request: list[dict[str, Any]]  # per_request_view() output
    holds: bool  # every SLO holds here (attainment judged as in the module docstring)
    attainment: dict[str, dict[str, float]] = field(default_factory=dict)
    violations: dict[str, float] = field(default_factory=dict)


@dataclass
class GoodputResult:
    """The outcome of a goodput search; ``best`` is the highest level that held."""

    goodput: float  # best load that held, 0.0 if none did
    unit: str  # "req/s" or "concurrency"
    levels: list[LevelResult]  # in the order tried
    best: LevelResult | None

    def to_json(self) -> dict[str, Any]:
        """Compact, strictly JSON-safe summary (NaN and inf become None)."""
        best = None
        if self.best is not None:
            best = {"load": self.best.load, **{k: _num(self.best.figures.get(k)) for k in _THROUGHPUT_KEYS}}
        return {
            "goodput": self.goodput,
            "unit": self.unit,
            "best": best,
            "levels": [
                {
                    "load": level.load,
                    "holds": level.holds,
                    "output_throughput": _num(level.figures.get("output_throughput")),
                    "request_throughput": _num(level.figures.get("request_throughput")),
                    "p99_ttft_ms": _num(level.figures.get("p99_ttft_ms")),
                    "sustained_ratio": _num(level.figures.get("sustained_ratio")),
                    "violations": {text: _num(v) for text, v in level.violations.items()},
                    **{k: _num(level.figures.get(k)) for k in _LOADGEN_KEYS if k in level.figures},
                    "attainment": {
                        text: {k: _num(v) for k, v in info.items()} for text, info in level.attainment.items()
                    },
                }
                for level in self.levels
            ],
        }


def _num(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not
    collapse to a point at 0 or n successes, which is exactly where SLO
    attainment lives (99% targets, few misses).  ``n == 0`` gives ``(0, 1)``:
    nothing is known.  z=1.96 is a two-sided 95% interval.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if z < 0:
        raise ValueError("z must be >= 0")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lower = 0.0 if successes == 0 else max(0.0, center - half)
    upper = 1.0 if successes == n else min(1.0, center + half)
    return lower, upper


def judge(
    constraints: Sequence[Constraint],
    figures: Mapping[str, Any],
    per_request: Sequence[Mapping[str, Any]] | None,
    *,
    confidence_z: float = 1.96,
    conservative: bool = False,
    min_sustained: float = 0.85,
) -> tuple[bool, dict[str, dict[str, float]], dict[str, float]]:
    """Do all ``constraints`` hold at one measured level?

    Aggregate SLOs hold iff ``violation <= 0``.  Attainment SLOs are judged on
    the Wilson interval of their achieved fraction, by the default or the
    conservative rule (module docstring).  Returns ``(holds, attainment,
    violations)``: ``attainment`` maps each attainment SLO's text to
    ``{"achieved", "lower", "upper", "n", "target"}``; ``violations`` maps every
    SLO's text to ``Constraint.violation``.
    """
    holds = True
    attainment: dict[str, dict[str, float]] = {}
    violations: dict[str, float] = {}
    for c in constraints:
        violation = c.violation(figures, per_request)
        violations[c.text] = violation
        if c.attainment is None:
            holds = holds and violation <= 0
            continue
        assert per_request is not None  # c.violation raised otherwise
        n = len(per_request)
        achieved = c.achieved_fraction(per_request)
        lower, upper = wilson_interval(round(achieved * n), n, confidence_z)
        target = c.attainment
        attainment[c.text] = {"achieved": achieved, "lower": lower, "upper": upper, "n": n, "target": target}
        holds = holds and _attainment_holds(achieved, lower, upper, target, conservative)
    sustained = figures.get("sustained_ratio")
    if isinstance(sustained, (int, float)) and math.isfinite(sustained):
        # An open-loop rate the server could not keep up with is no goodput, whatever the latency says.
        violations["sustained"] = min_sustained - sustained
        holds = holds and sustained >= min_sustained
    return holds, attainment, violations


def _attainment_holds(achieved: float, lower: float, upper: float, target: float, conservative: bool) -> bool:
    if conservative:
        return lower >= target - _ATTAINMENT_EPS
    # Not confidently below (upper) and not below on the point estimate; the first
    # is implied by the second (the interval contains the estimate) but is stated
    # so the rule reads as documented.
    return upper >= target - _ATTAINMENT_EPS and achieved >= target - _ATTAINMENT_EPS


# --------------------------------------------------------------------------- search


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
) -> GoodputResult:
    """Find the highest load at which every SLO holds; see the module docstring.

    ``growth`` is the bracketing factor (2 doubles and halves). A smaller one,
    such as 1.25, suits a ``start`` near the expected goodput (a repeat of an
    earlier measurement): the bracket closes in fewer levels.

    ``measure(load)`` runs the load once and returns ``(figures, per_request)``
    as ``summarize`` and ``per_request_view`` give them; it is called at most
    ``max_levels`` times, never twice with the same load.  For ``"concurrency"``
    loads are integers (``start`` rounded, ``upper`` floored, ``min_load``
    ceiled and at least 1).  ``on_level`` sees each level as soon as it is judged.
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
    integer = unit == "concurrency"
    first, floor, ceiling = _limits(start, min_load, upper, integer)

    levels: list[LevelResult] = []

    def probe(load: float) -> bool:
        figures, per_request = measure(int(load) if integer else load)
        holds, attainment, violations = judge(
            constraints, figures, per_request, confidence_z=confidence_z, conservative=conservative
        )
        level = LevelResult(float(load), dict(figures), list(per_request), holds, attainment, violations)
        levels.append(level)
        if on_level is not None:
            on_level(level)
        return holds

    # Phase 1: bracket by doubling up from a pass or halving down from a failure.
    load = first
    going_up = probe(load)
    while len(levels) < max_levels:
        if going_up:
            up = max(load + 1, round(load * growth)) if integer else load * growth
            nxt = up if ceiling is None else min(up, ceiling)
            if nxt <= load:
                break  # held at the ceiling
        else:
            nxt = min(load - 1, int(load / growth)) if integer else load / growth
            nxt = max(nxt, floor)
            if nxt >= load or nxt <= 0:
                break  # failed at the floor
        load = nxt
        if probe(load) != going_up:
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
    return GoodputResult(goodput=best.load if best is not None else 0.0, unit=unit, levels=levels, best=best)


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


# --------------------------------------------------------------------------- live server


def workload_at_level(
    workload: Workload,
    unit: Unit,
    load: float,
    *,
    inflight_horizon_s: float = DEFAULT_INFLIGHT_HORIZON_S,
    min_duration_s: float | None = None,
) -> Workload:
    """The workload to offer at one level, re-validated.

    ``"concurrency"``: a closed loop with ``int(load)`` requests in flight.

    ``"req/s"``: Poisson arrivals at ``rate=load`` (gamma arrivals with the
    workload's burstiness, if it has them).  ``concurrency`` stays the
    in-flight cap (so an overloaded server cannot make the client open
    unbounded connections) but is raised to at least
    ``ceil(rate * inflight_horizon_s)``.  The cap must not bind at a load the
    server can sustain: a request waiting for a slot is queued client-side and
    its latency clock starts only when sent, so a binding cap hides the
    server's queueing and flatters TTFT exactly where goodput is decided.  By
    Little's law the mean number in flight is ``rate * mean lifetime``, so the
    cap binds only once requests live about ``inflight_horizon_s`` (8 s) on
    average, by which point interactive latency SLOs have long failed.  For
    workloads whose requests last longer by design (long outputs), pass a
    larger horizon or a larger ``workload.concurrency``.
    """
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {', '.join(_UNITS)}, got {unit!r}")
    if not load > 0:
        raise ValueError("load must be > 0")
    fields = workload.model_dump()
    if min_duration_s and unit == "req/s":
        # Long enough at this rate for a queue to build if the server cannot keep up.
        fields["num_requests"] = max(workload.num_requests, math.ceil(load * min_duration_s))
    if unit == "concurrency":
        if int(load) < 1:
            raise ValueError("a concurrency level must be >= 1")
        fields.update(arrival="concurrency", concurrency=int(load))
    else:
        cap = max(workload.concurrency, math.ceil(load * inflight_horizon_s))
        # A gamma workload keeps its burstiness at every rate; anything else is Poisson.
        arrival = "gamma" if workload.arrival == "gamma" else "poisson"
        fields.update(arrival=arrival, rate=float(load), concurrency=cap)
    return Workload.model_validate(fields)


def endpoint_measure(
    base_url: str,
    model: str,
    tokenizer: PromptTokenizer,
    vocab_size: int,
    workload: Workload,
    *,
    unit: Unit,
    ignore_eos: bool = True,
    api_key: str | None = None,
    inflight_horizon_s: float = DEFAULT_INFLIGHT_HORIZON_S,
    progress: Callable[[int, int], None] | None = None,
    min_duration_s: float | None = None,
    seed_offset: int = 0,
) -> Measure:
    """A ``measure`` for ``search_goodput`` that loads a live server.

    Each call offers ``workload_at_level(workload, unit, load)`` (warm-up
    included) and returns ``(summarize(result), per_request_view(records))``.
    Every call draws its prompts with its own ``seed_offset`` (``seed_offset``
    + 1, + 2, ... in call order; 0 is what a plain trial run uses; a repeat
    passes its own ``seed_offset``), so no level re-sends
    prompts an earlier level left in the prefix cache, which would flatter
    later levels.  Poisson arrival times depend only on ``workload.seed``, so
    every req/s level replays the same arrival pattern, scaled: differences
    between levels come from the load, not from a luckier draw.  Each call
    blocks on its own event loop (``run_load``), so do not call it from
    inside a running one.
    """
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {', '.join(_UNITS)}, got {unit!r}")
    calls = itertools.count(seed_offset + 1)

    def measure(load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        level = workload_at_level(
            workload, unit, load, inflight_horizon_s=inflight_horizon_s, min_duration_s=min_duration_s
        )
        specs = build_requests(
            level,
            tokenizer,
            vocab_size,
            count=level.warmup_requests + level.num_requests,
            seed_offset=next(calls),
        )
        result = run_load(base_url, model, specs, level, ignore_eos=ignore_eos, api_key=api_key, progress=progress)
        return summarize(result), per_request_view(result.records)

    return measure
