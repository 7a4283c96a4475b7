"""How a verification is judged from its starts: each SLO with 95% confidence, a failed start blocking it."""

from __future__ import annotations

import math
from typing import Any, Mapping

from autotune.figures import label
from autotune.load.stats import Summary
from autotune.spec import Constraint
from autotune.spec.slo import figure_alternatives
from autotune.verify.records import Check, Start, Verification, _finite_number

METHODOLOGY_REPEATS = 10
REPLAYED_NOTE = ("every start replayed the study's arrival schedule (recorded before each start drew its own): "
                 "the spread is the starts', not the arrival process's")


def judge_starts(result: Verification, constraints: list[Constraint]) -> None:
    """Sets ``checks``, ``verified`` and ``reasons``: verified only when every SLO holds at 95%, or, where
    each start searched its goodput (``result.goodput_unit``), by each start's own level test."""
    ok = result.ok_starts
    failed = [s for s in result.starts if s.status != "ok"]
    reasons: list[str] = []
    notes = [n for n in result.notes if not n.startswith("only ") and n != REPLAYED_NOTE]
    if result.starts and not result.own_schedules:
        notes.append(REPLAYED_NOTE)
    if len(result.starts) < result.repeats_wanted:
        reasons.append(f"only {len(result.starts)} of {result.repeats_wanted} starts measured so far")
    if failed:
        reasons.append(f"{len(failed)} of {len(result.starts)} fresh starts failed (first: {failed[0].reason})")
    if not ok:
        reasons.append("no start produced a measurement")
    if result.repeats_wanted < METHODOLOGY_REPEATS:
        notes.append(f"only {result.repeats_wanted} repeats: the methodology asks for at least {METHODOLOGY_REPEATS}")
    summary = result.summary()
    pooled = result.attainment()
    checks = [
        _goodput_check(c, ok, result.goodput_unit) if result.goodput_unit and c.kind not in ("quality", "passkey")
        else _check(c, summary, pooled, result.quality)
        for c in constraints
    ] if ok else []
    reasons += [c.reason for c in checks if not c.holds and c.reason]
    result.checks = checks
    result.reasons = reasons
    result.notes = notes
    result.verified = not reasons


def _check(
    c: Constraint,
    summary: dict[str, Summary],
    pooled: dict[str, tuple[int, int, float, float]],
    quality: Mapping[str, Any] | None = None,
) -> Check:
    if c.kind in ("quality", "passkey"):
        return _quality_check(c, quality or {})
    if c.attainment is not None:
        met, n, lo, _hi = pooled.get(c.text, (0, 0, 0.0, 1.0))
        holds = n > 0 and lo >= c.attainment - 1e-12
        reason = None
        if not holds:
            reason = (
                f"{c.text}: {met} of {n} requests met it ({_pct(met / n) if n else '-'}), 95% lower bound "
                f"{_pct(lo)} is under the {_pct(c.attainment)} target by {_pct(c.attainment - lo)}"
            )
            if n and met == n:
                reason += f" (every request met it; {n} requests are too few to show {_pct(c.attainment)})"
        return Check(c.text, f"Wilson 95% lower bound of attainment over {n} requests", lo, c.attainment, "",
                     holds, reason)
    key = c.figure_key()
    s = next((summary[k] for k in (key, *figure_alternatives(key)) if k in summary), None)
    scale, unit = (1000.0, "ms") if c.kind == "latency" else (1.0, "")
    limit = c.threshold * scale
    upper = c.op in ("<", "<=")
    name = label(key)
    if s is None or s.n == 0:
        return Check(c.text, f"{name}: not measured", None, limit, unit, False, f"{c.text}: {name} was not measured")
    bound = s.ci95[1] if upper else s.ci95[0]
    basis = f"{'upper' if upper else 'lower'} 95% bound of mean {name} over {s.n} starts"
    if s.n < 2 or not math.isfinite(bound):
        return Check(c.text, basis, None, limit, unit, False,
                     f"{c.text}: one start gives no confidence interval (mean {_fmt(s.mean, unit)})")
    if upper:
        holds = bound < limit if c.op == "<" else bound <= limit
    else:
        holds = bound > limit if c.op == ">" else bound >= limit
    reason = None
    if not holds:
        gap = abs(bound - limit)
        rel = f" ({gap / abs(limit):.0%})" if limit else ""
        reason = (
            f"{c.text}: {basis} is {_fmt(bound, unit)}, {'over' if upper else 'under'} the limit "
            f"{_fmt(limit, unit)} by {_fmt(gap, unit)}{rel} (mean {_fmt(s.mean, unit)} ± {_fmt(s.std, unit)})"
        )
    return Check(c.text, basis, bound, limit, unit, holds, reason)


def _goodput_check(c: Constraint, ok: list[Start], unit: str) -> Check:
    """An SLO of a goodput search, judged on each start's own search.

    A start's figures are those of its highest load that held every SLO: a
    different load on each start, and at the bound by construction, so a
    confidence bound of their mean across starts would fail a configuration
    for being measured at its limit. What each start shows is that its level
    test held the SLO at its goodput; SLOs only get harder as load rises, so
    the lowest goodput of the starts is a load that held on every one. How
    far the goodput itself varies is the goodput figure's own interval.
    """
    goodputs = [float(s.figures.get("goodput") or 0.0) for s in ok]
    held = [g for g in goodputs if g > 0]
    holds = len(held) == len(goodputs)
    basis = f"each start's level test at its own goodput, {len(held)} of {len(goodputs)} starts; lowest goodput"
    reason = None if holds else (
        f"{c.text}: {len(goodputs) - len(held)} of {len(goodputs)} starts found no load at which every SLO held"
    )
    return Check(c.text, basis, min(held) if held else None, math.nan, unit, holds, reason)


def _quality_check(c: Constraint, quality: Mapping[str, Any]) -> Check:
    """A quality bound is judged on the study's one measurement of the setting.

    Perplexity and greedy pass-key answers are the same on every start of the same
    engine, model and setting (the same token ids in, the same logprobs out), so
    fresh starts add nothing to them; a speed figure is what varies between starts.
    """
    key = c.figure_key()
    value = quality.get(key)
    basis = f"{key} measured once for this setting in the study"
    if not _finite_number(value):
        return Check(c.text, basis, None, c.threshold, "", False,
                     f"{c.text}: {key} was not measured for this configuration's setting in the study")
    holds = c.violation({key: value}) <= 0
    reason = None if holds else f"{c.text}: {key} is {value:.4g}, beyond the bound {c.threshold:g}"
    return Check(c.text, basis, float(value), c.threshold, "", holds, reason)


def _fmt(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:.1f}%"
