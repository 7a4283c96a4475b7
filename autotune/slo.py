"""SLO constraints and study objectives: the small language users state their goals in.

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

from autotune.errors import UserError

__all__ = [
    "DEFAULT_ATTAINMENT",
    "Constraint",
    "Objective",
    "parse_objectives",
    "parse_slos",
]

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


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # 'num' | 'name' | 'op' | 'punct' | 'end'
    text: str
    col: int  # 1-based column in the user's text, for error messages

    def describe(self) -> str:
        return "end of input" if self.kind == "end" else f"'{self.text}'"

    def is_punct(self, ch: str) -> bool:
        return self.kind == "punct" and self.text == ch

    def is_name(self, name: str) -> bool:
        return self.kind == "name" and self.text.lower() == name


_DIGITS = frozenset("0123456789")
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | _DIGITS
_PUNCT = frozenset("()@%,:+-")
# Any run of these is read as one operator token, so that '==', '=<' or '!=' are
# reported as a bad operator rather than as two confusing tokens.
_OP_CHARS = frozenset("<>=!")


def _tokenize(src: str, fail: Callable[[str, int], UserError]) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if c in _DIGITS or (c == "." and i + 1 < n and src[i + 1] in _DIGITS):
            while i < n and src[i] in _DIGITS:
                i += 1
            if i + 1 < n and src[i] == "." and src[i + 1] in _DIGITS:
                i += 1
                while i < n and src[i] in _DIGITS:
                    i += 1
            tokens.append(_Token("num", src[start:i], start + 1))
        elif c in _NAME_START:
            # A '.' followed by a digit stays inside the name so 'p99.9' is one token.
            while i < n and (src[i] in _NAME_CHARS or (src[i] == "." and i + 1 < n and src[i + 1] in _DIGITS)):
                i += 1
            tokens.append(_Token("name", src[start:i], start + 1))
        elif c in _OP_CHARS:
            while i < n and src[i] in _OP_CHARS:
                i += 1
            tokens.append(_Token("op", src[start:i], start + 1))
        elif c in _PUNCT:
            i += 1
            tokens.append(_Token("punct", c, start + 1))
        else:
            raise fail(f"unexpected character {c!r}", start + 1)
    tokens.append(_Token("end", "", n + 1))
    return tokens


class _Parser:
    """Token cursor plus error formatting shared by the SLO and objective grammars."""

    def __init__(self, text: str, what: str) -> None:
        self.what = what
        # Shown in errors on one line; any whitespace becomes one space so columns still line up.
        self.shown = "".join(" " if ch.isspace() else ch for ch in text)
        self.tokens = _tokenize(text, self.fail)
        self.pos = 0

    def fail(self, message: str, col: int | None = None, hint: str | None = None) -> UserError:
        where = f" at column {col}" if col is not None else ""
        tail = f" ({hint})" if hint else ""
        return UserError(f"bad {self.what} '{self.shown}': {message}{where}{tail}")

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def next(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def at_end(self) -> bool:
        return self.peek().kind == "end"

    def accept_punct(self, ch: str) -> _Token | None:
        if self.peek().is_punct(ch):
            return self.next()
        return None

    def text_since(self, start: int) -> str:
        """Normalised source of tokens[start:pos]: no whitespace, names and units lower-case."""
        return "".join(t.text.lower() for t in self.tokens[start : self.pos])


# --------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class _Target:
    stat: str | None
    stat_tok: _Token | None
    name_tok: _Token

    @property
    def name(self) -> str:
        return self.name_tok.text.lower()


def _is_decimal(s: str) -> bool:
    whole, dot, frac = s.partition(".")
    return bool(whole) and set(whole) <= _DIGITS and (not dot or (bool(frac) and set(frac) <= _DIGITS))


def _format_percentile(value: float) -> str:
    # Same spelling vllm bench serve uses in its keys: p99, p99.9, p50.
    return str(int(value)) if value.is_integer() else repr(value)


def _parse_stat(p: _Parser, tok: _Token) -> str:
    name = tok.text.lower()
    if name in _FIXED_STATS:
        return name
    if name.startswith("p") and _is_decimal(name[1:]):
        value = float(name[1:])
        if not 0 < value <= 100:
            raise p.fail(f"percentile '{tok.text}' out of range", tok.col, "must be above p0 and at most p100")
        return "p" + _format_percentile(value)
    raise p.fail(f"unknown statistic '{tok.text}'", tok.col, "known: mean, median, max, std, pNN such as p99 or p99.9")


def _parse_target(p: _Parser) -> _Target:
    tok = p.next()
    if tok.kind != "name":
        raise p.fail(f"expected a metric but found {tok.describe()}", tok.col)
    if not p.accept_punct("("):
        return _Target(None, None, tok)
    stat = _parse_stat(p, tok)
    inner = p.next()
    if inner.kind != "name":
        raise p.fail(f"expected a metric inside '{tok.text}(...)' but found {inner.describe()}", inner.col)
    close = p.next()
    if not close.is_punct(")"):
        raise p.fail(f"expected ')' after '{inner.text}' but found {close.describe()}", close.col)
    return _Target(stat, tok, inner)


def _parse_op(p: _Parser, after: str) -> str:
    tok = p.next()
    if tok.kind == "op":
        if tok.text in _OPS:
            return tok.text
        raise p.fail(f"bad operator '{tok.text}'", tok.col, _OP_HINT)
    raise p.fail(f"expected an operator after '{after}' but found {tok.describe()}", tok.col, _OP_HINT)


def _parse_number(p: _Parser, after: str, what: str = "a number") -> _Token:
    tok = p.next()
    if tok.kind != "num":
        raise p.fail(f"expected {what} after '{after}' but found {tok.describe()}", tok.col)
    return tok


def _reject_unit(p: _Parser, number: _Token, metric: str) -> None:
    tok = p.peek()
    if tok.kind == "name" and not tok.is_name("and"):
        raise p.fail(f"unexpected unit '{tok.text}' after '{number.text}'", tok.col, f"'{metric}' takes no unit")


def _reject_attainment(p: _Parser, why: str) -> None:
    tok = p.peek()
    if tok.is_punct("@"):
        raise p.fail("attainment target '@' not allowed here", tok.col, why)


def _unknown_metric(p: _Parser, tok: _Token, known: str) -> UserError:
    return p.fail(f"unknown metric '{tok.text}'", tok.col, f"known: {known}")


# --------------------------------------------------------------------------- constraints


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
        # --- pass-key accuracy: one figure per prompt length, or over all lengths (begin) ---
        if self.kind == "passkey":
            return "passkey_acc" if self.stat is None else f"passkey_acc_{self.stat}"
        # --- pass-key (end) ---
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


def _figure_alternatives(key: str) -> tuple[str, ...]:
    # vllm names goodput 'request_goodput'; p50 and median are the same figure.
    if key == "goodput":
        return ("request_goodput",)
    if key.startswith("p50_"):
        return ("median_" + key[len("p50_") :],)
    if key.startswith("median_"):
        return ("p50_" + key[len("median_") :],)
    return ()


def _lookup(figures: Mapping[str, Any], key: str, owner: str) -> float:
    for candidate in (key, *_figure_alternatives(key)):
        value = figures.get(candidate)
        if value is not None:
            return float(value)
    have = sorted(figures)
    shown = ", ".join(have[:12]) + (", ..." if len(have) > 12 else "") if have else "none"
    raise KeyError(f"figure '{key}' needed by {owner} is missing from the results (have: {shown})")


def _parse_performance(p: _Parser) -> Constraint:
    """Latency (per-request or aggregate) and throughput bounds."""
    start = p.pos
    target = _parse_target(p)
    target_text = p.text_since(start)
    name = target.name
    if name in _TIME_METRICS:
        metric, kind = _TIME_METRICS[name], "latency"
    elif name in _THROUGHPUT_METRICS:
        metric, kind = _THROUGHPUT_METRICS[name], "throughput"
        if target.stat_tok is not None:
            raise p.fail(
                f"statistic '{target.stat_tok.text}' does not apply to '{target.name_tok.text}'",
                target.stat_tok.col,
                "throughput is already one figure per run; write e.g. output_tps>100",
            )
    elif name in _CONSTRAINT_RULES and target.stat_tok is not None:
        raise p.fail(
            f"statistic '{target.stat_tok.text}' does not apply to '{target.name_tok.text}'", target.stat_tok.col
        )
    else:
        raise _unknown_metric(p, target.name_tok, _KNOWN_SLO_METRICS)

    op = _parse_op(p, target_text)
    value_start = p.pos
    number = _parse_number(p, op)
    value = float(number.text)

    if kind == "latency":
        unit_tok = p.peek()
        if unit_tok.kind != "name" or unit_tok.is_name("and"):
            raise p.fail(
                f"missing unit after '{number.text}' for time metric '{target.name_tok.text}'",
                number.col + len(number.text),
                _UNIT_HINT,
            )
        unit = unit_tok.text.lower()
        if unit not in _UNITS:
            raise p.fail(f"unknown unit '{unit_tok.text}'", unit_tok.col, _UNIT_HINT)
        p.next()
        if value == 0:
            raise p.fail(f"threshold '{number.text}{unit_tok.text}' must be positive", number.col)
        threshold = value / _UNITS[unit]
    else:
        _reject_unit(p, number, target.name_tok.text)
        threshold = value

    value_text = p.text_since(value_start)
    attainment: float | None = None
    at = p.accept_punct("@")
    if at is not None:
        if target.stat_tok is not None:
            raise p.fail(
                f"attainment target '@' not allowed on aggregate '{target_text}'",
                at.col,
                f"for a per-request target write e.g. {name}{op}{value_text}@95%",
            )
        if kind != "latency":
            raise p.fail(
                "attainment target '@' not allowed here",
                at.col,
                f"'{target.name_tok.text}' is one figure per run, not a per-request metric",
            )
        pct_tok = _parse_number(p, "@", "a percentage")
        if not p.accept_punct("%"):
            bad = p.peek()
            raise p.fail(f"expected '%' after '{pct_tok.text}' but found {bad.describe()}", bad.col)
        pct = float(pct_tok.text)
        if not 0 < pct <= 100:
            raise p.fail(
                f"attainment target '{pct_tok.text}%' out of range", pct_tok.col, "must be above 0% and at most 100%"
            )
        attainment = pct / 100
    elif kind == "latency" and target.stat is None:
        attainment = DEFAULT_ATTAINMENT

    return Constraint(
        text=p.text_since(start),
        metric=metric,
        stat=target.stat,
        op=op,
        threshold=threshold,
        attainment=attainment,
        kind=kind,
    )


def _parse_quality(p: _Parser) -> Constraint:
    """``ppl<+5%`` (relative to the unquantised baseline) or ``ppl<12.0`` (absolute)."""
    start = p.pos
    name = p.next()
    if p.peek().is_punct("("):
        raise p.fail(f"'{name.text}' takes no statistic", p.peek().col, "write e.g. ppl<+5% or ppl<12")
    op = _parse_op(p, name.text)
    plus = p.accept_punct("+")
    number = _parse_number(p, "+" if plus else op)
    value = float(number.text)
    relative = p.accept_punct("%") is not None
    if plus is not None and not relative:
        bad = p.peek()
        raise p.fail(
            f"expected '%' after '+{number.text}' but found {bad.describe()}",
            bad.col,
            "a '+' bound is relative, e.g. ppl<+5%",
        )
    _reject_unit(p, number, name.text)
    _reject_attainment(p, f"'{name.text}' is one figure per run, not a per-request metric")
    return Constraint(
        text=p.text_since(start),
        metric="ppl",
        stat=None,
        op=op,
        threshold=value / 100 if relative else value,
        attainment=None,
        kind="quality",
        relative=relative,
    )


# --- pass-key accuracy: passkey@32k>=0.9 (begin) ---
_PASSKEY_HINT = "write e.g. passkey@32k>=0.9, passkey@4096>=90% or passkey>=0.9 (all lengths)"


def _parse_passkey(p: _Parser) -> Constraint:
    """``passkey@32k>=0.9``: retrieval accuracy at one prompt length (``k`` = 1024 tokens),
    or over every length measured when no length is given. Stored with the length in
    tokens as ``stat``, so the figure is ``passkey_acc_<tokens>``."""
    start = p.pos
    name = p.next()
    if p.peek().is_punct("("):
        raise p.fail(f"'{name.text}' takes no statistic", p.peek().col, _PASSKEY_HINT)
    length: int | None = None
    at = p.accept_punct("@")
    if at is not None:
        number = _parse_number(p, "@", "a prompt length")
        value = float(number.text)
        unit = p.peek()
        if unit.kind == "name" and unit.text.lower() == "k":
            p.next()
            value *= 1024
        elif unit.kind == "name" and not unit.is_name("and"):
            raise p.fail(f"unknown length unit '{unit.text}'", unit.col, "use k (1024 tokens) or a token count")
        if not value.is_integer() or value < 1:
            raise p.fail(f"prompt length '{p.text_since(start + 2)}' is not a whole number of tokens", number.col)
        length = int(value)
    target_text = p.text_since(start)
    op = _parse_op(p, target_text)
    number = _parse_number(p, op, "an accuracy")
    value = float(number.text)
    if p.accept_punct("%") is not None:
        value /= 100
    else:
        _reject_unit(p, number, name.text)
    if not 0 <= value <= 1:
        raise p.fail(f"accuracy '{number.text}' out of range", number.col, "between 0 and 1, or 0% and 100%")
    _reject_attainment(p, f"'{name.text}' is one figure per run, not a per-request metric")
    return Constraint(
        text=p.text_since(start),
        metric="passkey",
        stat=None if length is None else str(length),
        op=op,
        threshold=value,
        attainment=None,
        kind="passkey",
    )
# --- pass-key (end) ---


# Constraint forms that are not ``target op value``, keyed by their leading name.
# A new form is one function and one entry here.
_CONSTRAINT_RULES: dict[str, Callable[[_Parser], Constraint]] = {
    "ppl": _parse_quality,
    "passkey": _parse_passkey,
}


def _parse_constraint(p: _Parser) -> Constraint:
    first = p.peek()
    rule = _CONSTRAINT_RULES.get(first.text.lower()) if first.kind == "name" else None
    if rule is not None:
        return rule(p)
    return _parse_performance(p)


def parse_slos(text: str) -> list[Constraint]:
    """Parse ``ttft<300ms@95%, p99(tpot)<40ms and output_tps>100`` into constraints.

    Raises ``UserError`` with a one-line message naming the bad token and its column.
    """
    p = _Parser(text, "SLO")
    if p.at_end():
        raise p.fail("empty expression", hint="e.g. ttft<300ms, p99(tpot)<40ms")
    constraints = [_parse_constraint(p)]
    while not p.at_end():
        sep = p.next()
        if not (sep.is_punct(",") or sep.is_name("and")):
            raise p.fail(f"unexpected {sep.describe()}", sep.col, "expected ',' or 'and' between constraints")
        constraints.append(_parse_constraint(p))
    return constraints


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """One study objective; ``direction`` is spelled the way Optuna takes it."""

    text: str
    direction: str
    metric: str

    def value(self, figures: Mapping[str, Any]) -> float:
        """The figure this objective optimises, as reported (latencies in ms)."""
        return _lookup(figures, self.metric, f"objective '{self.text}'")


def _parse_objective(p: _Parser) -> tuple[Objective, int]:
    start = p.pos
    dir_tok = p.next()
    if dir_tok.kind != "name":
        raise p.fail(f"expected a direction but found {dir_tok.describe()}", dir_tok.col, "e.g. max:goodput")
    direction = _DIRECTIONS.get(dir_tok.text.lower())
    if direction is None:
        raise p.fail(f"unknown direction '{dir_tok.text}'", dir_tok.col, "use max, min, maximize or minimize")
    colon = p.next()
    if not colon.is_punct(":"):
        raise p.fail(f"expected ':' after '{dir_tok.text}' but found {colon.describe()}", colon.col, "e.g. max:goodput")

    target = _parse_target(p)
    name = target.name
    if target.stat is not None:
        if name in _TIME_METRICS:
            metric = f"{target.stat}_{_TIME_FIGURE_NAME[_TIME_METRICS[name]]}_ms"
        elif name in _THROUGHPUT_METRICS or name in _OBJECTIVE_ONLY or name in ("ppl", "passkey"):
            assert target.stat_tok is not None
            raise p.fail(
                f"statistic '{target.stat_tok.text}' does not apply to '{target.name_tok.text}'", target.stat_tok.col
            )
        else:
            raise _unknown_metric(p, target.name_tok, _KNOWN_OBJECTIVE_METRICS)
    elif name in _THROUGHPUT_METRICS:
        metric = _THROUGHPUT_FIGURE[_THROUGHPUT_METRICS[name]]
    elif name in _OBJECTIVE_ONLY:
        metric = _OBJECTIVE_ONLY[name]
    elif name == "ppl":
        metric = "ppl"
    elif name == "passkey":  # accuracy over every pass-key length measured
        metric = "passkey_acc"
    elif name in _TIME_METRICS:
        raise p.fail(
            f"metric '{target.name_tok.text}' needs a statistic",
            target.name_tok.col,
            f"e.g. {dir_tok.text.lower()}:p99({name}) or {dir_tok.text.lower()}:mean({name})",
        )
    else:
        raise _unknown_metric(p, target.name_tok, _KNOWN_OBJECTIVE_METRICS)
    return Objective(text=p.text_since(start), direction=direction, metric=metric), dir_tok.col


def parse_objectives(text: str) -> list[Objective]:
    """Parse ``max:goodput, min:p99(ttft)`` into objectives, in the order given.

    Order matters: it is the order of Optuna's directions and of the values a trial
    returns. The same figure twice is rejected since it would only skew the Pareto front.
    """
    p = _Parser(text, "objective")
    if p.at_end():
        raise p.fail("empty expression", hint="e.g. max:goodput, min:p99(ttft)")
    objectives: list[Objective] = []
    while True:
        objective, col = _parse_objective(p)
        if any(o.metric == objective.metric for o in objectives):
            raise p.fail(f"duplicate objective '{objective.text}'", col)
        objectives.append(objective)
        if p.at_end():
            return objectives
        sep = p.next()
        if not sep.is_punct(","):
            raise p.fail(f"unexpected {sep.describe()}", sep.col, "expected ',' between objectives")
