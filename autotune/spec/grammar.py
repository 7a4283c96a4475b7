"""The SLO and objective grammars: text in, ``Constraint`` and ``Objective`` out.

See ``autotune.spec.slo`` for the grammar and what each form means.
"""

from __future__ import annotations

from typing import Callable

from autotune.spec._lexer import (
    _Parser, _parse_number, _parse_op, _parse_target, _reject_attainment, _reject_unit, _unknown_metric,
)
from autotune.spec.slo import (
    _KNOWN_OBJECTIVE_METRICS, _KNOWN_SLO_METRICS, _OBJECTIVE_ONLY, _THROUGHPUT_FIGURE,
    _THROUGHPUT_METRICS, _DIRECTIONS, _TIME_FIGURE_NAME, _TIME_METRICS, _UNIT_HINT, _UNITS, DEFAULT_ATTAINMENT, Constraint, Objective,
)

__all__ = ["parse_objectives", "parse_slos"]


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
