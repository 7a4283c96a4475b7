"""SLO constraints and study objectives: what each one means and which figure it reads.

Users write ``ttft<300ms@95%, p99(tpot)<40ms`` and ``max:goodput``; the tuner needs
numbers it can hand to Optuna. This module is the one place that turns the former
into the latter, so that every other part of autotune (the study, the report, the
CLI) agrees on what an SLO means and on which benchmark figure it reads.

The parser is a hand-written tokenizer plus recursive descent rather than regexes
so that every error can point at the exact token and column that is wrong, and so
that new constraint forms (``passkey@32k>=0.9``) are one more entry in
``_CONSTRAINT_RULES`` instead of another pattern that interacts with the others.

Grammar (whitespace allowed between any two tokens, names and units case-insensitive)::

    slos        := constraint ((',' | 'and') constraint)*
    constraint  := quality | performance            # picked by the leading name
    performance := target op NUMBER unit? ('@' NUMBER '%')?
    quality     := 'ppl' op ('+'? NUMBER '%' | NUMBER)
    passkey     := 'passkey' ('@' NUMBER 'k'?)? op NUMBER '%'?   # accuracy, 0..1 or a percentage
    target      := NAME | STAT '(' NAME ')'
    op          := '<' | '<=' | '>' | '>='
    unit        := 'ms' | 's' | 'us'                # required for time metrics only

    objectives  := objective (',' objective)*
    objective   := DIRECTION ':' target
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = ["DEFAULT_ATTAINMENT", "Constraint", "Objective"]

#: Attainment target of a bare per-request SLO such as ``ttft<300ms``.
DEFAULT_ATTAINMENT = 0.99

# Time metrics: spelling -> canonical name. ``e2el`` is what vllm bench serve calls it.
_TIME_METRICS: dict[str, str] = {
    "ttft": "ttft",
    "tpot": "tpot",
    "itl": "itl",
    "e2e": "e2e",
    "e2el": "e2e",
}
# Canonical time metric -> the name vllm bench serve uses inside its figure keys.
_TIME_FIGURE_NAME: dict[str, str] = {"ttft": "ttft", "tpot": "tpot", "itl": "itl", "e2e": "e2el"}
# Canonical time metric -> the key of a per-request record (values in seconds).
_PER_REQUEST_KEY: dict[str, str] = {"ttft": "ttft_s", "tpot": "tpot_s", "itl": "itl_s", "e2e": "e2e_s"}

# Throughput metrics: spelling -> canonical name, and canonical name -> figure key.
_THROUGHPUT_METRICS: dict[str, str] = {
    "output_tps": "output_tps",
    "output_throughput": "output_tps",
    "total_tps": "total_tps",
    "total_token_throughput": "total_tps",
    "request_throughput": "request_throughput",
    "rps": "request_throughput",
    "goodput": "goodput",
}
_THROUGHPUT_FIGURE: dict[str, str] = {
    "output_tps": "output_throughput",
    "total_tps": "total_token_throughput",
    "request_throughput": "request_throughput",
    "goodput": "goodput",
}
# Metrics that only make sense as something to optimise, not to bound (yet).
_OBJECTIVE_ONLY: dict[str, str] = {"cost": "cost_per_1k_tokens", "cost_per_1k_tokens": "cost_per_1k_tokens"}

# Divisors that bring a number in this unit to seconds; division (not multiplication by
# 1e-3) keeps 300ms == 0.3 exactly, so thresholds and converted figures compare equal.
_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e3, "us": 1e6}
_FIXED_STATS = ("mean", "median", "max", "std")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_DIRECTIONS: dict[str, str] = {
    "max": "maximize",
    "maximize": "maximize",
    "min": "minimize",
    "minimize": "minimize",
}

_KNOWN_SLO_METRICS = "ttft, tpot, itl, e2e, e2el, output_tps, total_tps, request_throughput, rps, goodput, ppl, passkey"
_KNOWN_OBJECTIVE_METRICS = (
    "goodput, output_tps, total_tps, request_throughput, rps, cost, ppl, passkey, or stat(ttft|tpot|itl|e2e)"
)
_OP_HINT = "use <, <=, >, >="
_UNIT_HINT = "use ms, s or us"

# A strict bound met with equality is broken, but (measured - threshold) is 0 there,
# which Optuna would read as feasible; this keeps `violation > 0` exactly when broken.
_TIE = 1e-9
# Attainment differences below this are float noise (0.95 vs 19/20), not a miss.
_ATTAINMENT_EPS = 1e-12

@dataclass(frozen=True)
class Constraint:
    """One SLO, already resolved to the figure or per-request field it is judged on.

    ``attainment`` set means a per-request SLO (judged on the fraction of requests
    meeting it); ``attainment`` None means a bound on one benchmark figure.
    """

    text: str
    metric: str
    stat: str | None
    op: str
    threshold: float
    attainment: float | None
    kind: str
    relative: bool = False

    def figure_key(self) -> str:
        """Key of the benchmark figure this constraint bounds (vllm bench serve names).

        Attainment SLOs are judged on per-request data and have no such figure, so
        asking for one is a programming error rather than a silent miss later.
        """
        if self.kind == "latency":
            if self.stat is None:
                raise ValueError(f"SLO '{self.text}' is judged on per-request data and has no figure key")
            return f"{self.stat}_{_TIME_FIGURE_NAME[self.metric]}_ms"
        if self.kind == "throughput":
            return _THROUGHPUT_FIGURE[self.metric]
        # Pass-key accuracy: one figure per prompt length, or over all lengths.
        if self.kind == "passkey":
            return "passkey_acc" if self.stat is None else f"passkey_acc_{self.stat}"
        return "ppl_rel_change" if self.relative else "ppl"

    def violation(
        self,
        figures: Mapping[str, Any],
        per_request: Sequence[Mapping[str, Any]] | None = None,
    ) -> float:
        """How far from holding: <= 0 holds, > 0 broken; fed to Optuna's constraints_func.

        Values are relative (a fraction of the threshold, or of the attainment target's
        scale) so that several constraints of different units are comparable when a
        sampler weighs them against each other.
        """
        if self.attainment is not None:
            if per_request is None:
                raise ValueError(f"SLO '{self.text}' needs per-request measurements to be judged")
            gap = self.attainment - self.achieved_fraction(per_request)
            return 0.0 if abs(gap) < _ATTAINMENT_EPS else gap
        measured = _lookup(figures, self.figure_key(), f"SLO '{self.text}'")
        if self.kind == "latency":
            measured /= 1000.0  # figures are in ms, thresholds in seconds
        return _relative_gap(measured, self.op, self.threshold)

    def achieved_fraction(self, per_request: Sequence[Mapping[str, Any]]) -> float:
        """Fraction of requests meeting this per-request SLO (what ``@95%`` is compared to).

        Named ``achieved_fraction`` because the dataclass field ``attainment`` already
        holds the target. A request that failed cannot have met a latency promise, so it
        counts as a miss; an empty run met nothing, so it attains 0 rather than passing.
        """
        if self.attainment is None:
            raise ValueError(f"SLO '{self.text}' bounds an aggregate figure, not per-request attainment")
        if not per_request:
            return 0.0
        met = sum(1 for record in per_request if self._request_meets(record))
        return met / len(per_request)

    def _request_meets(self, record: Mapping[str, Any]) -> bool:
        # A request that never completed (no end-to-end latency) is a failure even if
        # it produced a first token quickly; the user experienced an error.
        if record.get("success", True) is False or ("e2e_s" in record and record["e2e_s"] is None):
            return False
        key = _PER_REQUEST_KEY[self.metric]
        if key not in record:
            raise KeyError(f"per-request field '{key}' needed by SLO '{self.text}' is missing")
        value = record[key]
        if value is None:
            return False
        compare = _OPS[self.op]
        if self.metric == "itl":
            # One slow gap is a visible stall, so a request meets an ITL SLO only if every gap does.
            return all(compare(float(gap), self.threshold) for gap in value)
        return compare(float(value), self.threshold)


def _relative_gap(measured: float, op: str, threshold: float) -> float:
    if math.isnan(measured):
        return math.inf  # no measurement cannot count as meeting the bound
    scale = abs(threshold) or 1.0  # e.g. output_tps>0: avoid dividing by zero
    gap = (measured - threshold) / scale if op in ("<", "<=") else (threshold - measured) / scale
    if op in ("<", ">") and measured == threshold:
        return _TIE
    return gap


def figure_alternatives(key: str) -> tuple[str, ...]:
    # vllm names goodput 'request_goodput'; p50 and median are the same figure.
    if key == "goodput":
        return ("request_goodput",)
    if key.startswith("p50_"):
        return ("median_" + key[len("p50_") :],)
    if key.startswith("median_"):
        return ("p50_" + key[len("median_") :],)
    return ()


def _lookup(figures: Mapping[str, Any], key: str, owner: str) -> float:
    for candidate in (key, *figure_alternatives(key)):
        value = figures.get(candidate)
        if value is not None:
            return float(value)
    have = sorted(figures)
    shown = ", ".join(have[:12]) + (", ..." if len(have) > 12 else "") if have else "none"
    raise KeyError(f"figure '{key}' needed by {owner} is missing from the results (have: {shown})")


@dataclass(frozen=True)
class Objective:
    """One study objective; ``direction`` is spelled the way Optuna takes it."""

    text: str
    direction: str
    metric: str

    def value(self, figures: Mapping[str, Any]) -> float:
        """The figure this objective optimises, as reported (latencies in ms)."""
        return _lookup(figures, self.metric, f"objective '{self.text}'")


