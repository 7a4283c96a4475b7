"""A verification as the user reads it: a table of fresh starts and one verdict line per SLO."""

from __future__ import annotations

import math
from typing import Mapping

from rich.table import Table

from autotune.cost import COST_KEY, format_cost
from autotune.load.stats import Summary
from autotune.figures import label, trial_name
from autotune.spec import Objective
from autotune.verify import Verification
from autotune.verify.judge import _fmt, _pct
from autotune.verify.records import SHOWN_FIGURES
from autotune.versus import Versus, versus_defaults

__all__ = ["figure_rows", "verdict_lines", "verified_lines", "verify_table", "versus_line"]


def figure_rows(result: Verification) -> list[tuple[str, str, str, str]]:
    """(figure, mean ± std, 95% CI, n) for the figures a user reads, cost included."""
    rows = []
    summary = result.summary()
    for key in SHOWN_FIGURES:
        s = summary.get(key)
        if key == COST_KEY and s is None and result.ok_starts:
            rows.append((label(key), "-", "-", "-"))  # no price: no cost, not a free 0
            continue
        if s is None:
            continue
        if key == COST_KEY:
            rows.append((label(key), f"{format_cost(s.mean)} ± {format_cost(s.std)}",
                         f"{format_cost(s.ci95[0])} .. {format_cost(s.ci95[1])}", str(s.n)))
        else:
            fmt = "{:,.2f}" if abs(s.mean) < 100 else "{:,.0f}"
            rows.append((label(key), s.text(fmt), _ci_text(s, fmt), str(s.n)))
    for text, (met, n, lo, hi) in result.attainment().items():
        rows.append((f"attainment {text}", _pct(met / n) if n else "-", f"{_pct(lo)} .. {_pct(hi)}", f"{n} req"))
    return rows


def verify_table(results: list[Verification]) -> Table:
    table = Table(title="Verification: fresh starts, mean ± std and 95% interval", title_justify="left")
    for col, justify in (("trial", "right"), ("starts", "right"), ("figure", "left"), ("mean ± std", "right"),
                         ("95% CI", "right"), ("n", "right"), ("verdict", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in results:
        rows = figure_rows(r)
        ok = f"{len(r.ok_starts)}/{len(r.starts)} ok"
        verdict = "[green]verified[/]" if r.verified else "[red]not verified[/]"
        if not rows:
            table.add_row(str(r.trial), ok, "-", "-", "-", "-", verdict, end_section=True)
            continue
        for i, row in enumerate(rows):
            table.add_row(str(r.trial) if i == 0 else "", ok if i == 0 else "", *row, verdict if i == 0 else "",
                          end_section=i == len(rows) - 1)
    return table


def verdict_lines(result: Verification) -> list[str]:
    head = f"{trial_name(result.trial)}: " + ("VERIFIED" if result.verified else "NOT VERIFIED")
    holds = [f"{c.slo} holds ({c.basis}: {_fmt(c.value, c.unit) if c.unit else _pct(c.value)})"
             for c in result.checks if c.holds]
    lines = [head + (f" - {'; '.join(holds)}" if result.verified and holds else "")]
    lines += [f"  - {r}" for r in result.reasons]
    lines += [f"  note: {n}" for n in result.notes]
    return lines


def _ci_text(s: Summary, fmt: str) -> str:
    if not math.isfinite(s.ci95[0]):
        return "-"
    return f"{fmt.format(s.ci95[0])} .. {fmt.format(s.ci95[1])}"


def versus_line(v: Versus) -> str:
    """One verified recommendation against the verified defaults, in words."""
    what = f"the defaults' {label(v.metric)}" if v.maximize else f"lower {label(v.metric)} than the defaults"
    head = f"{trial_name(v.trial)}: {v.ratio:.2f}x {what}"
    if v.low is None or v.high is None:
        return f"{head} ({v.note or 'no interval'}; {v.starts[0]} and {v.starts[1]} fresh starts)"
    apart = ("the two 95% intervals are apart" if v.apart
             else "the two 95% intervals overlap: not better beyond the noise of these starts")
    return (f"{head} (95% CI {v.low:.2f}..{v.high:.2f}, Welch over {v.starts[0]} and {v.starts[1]} fresh starts); "
            f"{apart}")


def verified_lines(kept: Mapping[int, Verification], objectives: list[Objective]) -> list[str]:
    """The stored verifications (``autotune.verify.stored``) against the verified defaults: what the
    fresh starts say, beside the study's own single readings (one still missing starts says so)."""
    if not objectives or -1 not in kept:
        return []
    lines = []
    for v in versus_defaults(list(kept.values()), objectives[0]):
        short = [r for r in (kept[v.trial], kept[-1]) if len(r.starts) < r.repeats_wanted]
        head = ("verification under way (" + ", ".join(
            f"{trial_name(r.trial)} {len(r.starts)} of {r.repeats_wanted} starts" for r in short) + "): "
            if short else "verified: ")
        lines.append(head + versus_line(v))
    return lines
