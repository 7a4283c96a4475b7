"""The study's points as the charts draw them, computed once for the HTML page and the PNG alike.

Besides the points, what a reader needs to read them: axis titles with units,
whether an axis is better on a log scale (one 2,245 ms trial must not squash
the others into the bottom of the chart), the recommended point, the engine
defaults' baseline, and every SLO as a bound on the figure it reads.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from autotune.cost import format_cost
from autotune.figures import axis_title, format_figure, label
from autotune.report.console import trial_cost
from autotune.spec import Constraint, Objective
from autotune.tuning import StudyResults, TrialRecord

__all__ = ["Scale", "SloSeries", "axes", "baseline_point", "hover", "points", "scale", "short", "slo_lines",
           "slo_series", "xy"]

#: An axis whose largest value is this many times its median is drawn on a log scale.
LOG_SPREAD = 4.0


def _point(t: TrialRecord, results: StudyResults, price: float | None, *, front: bool, best: bool) -> dict[str, Any]:
    return {
        "trial": t.number,
        "values": list(t.values or ()),
        "feasible": t.feasible,
        "front": front,
        "best": best,
        "baseline": False,
        "config": t.config,
        "figures": t.figures,
        "cost": trial_cost(t, results.spec, price),
        "verdict": t.verdict_text,
    }


def points(results: StudyResults, price: float | None) -> list[dict[str, Any]]:
    """Every measured trial that carries its environment, with what a hover should say."""
    front = {t.number for t in results.front()}
    best = results.best()
    return [
        _point(t, results, price, front=t.number in front, best=best is not None and t.number == best.number)
        for t in results.measured() if t.reported and t.values
    ]


def baseline_point(results: StudyResults, price: float | None) -> dict[str, Any] | None:
    """The engine defaults, measured first, as a point of its own (never on the front)."""
    base = results.baseline()
    if base is None or not base.values:
        return None
    point = _point(base, results, price, front=False, best=False)
    point["baseline"] = True
    return point


def axes(objectives: list[Objective]) -> tuple[str, str]:
    def name(o: Objective) -> str:
        return f"{axis_title(o.metric)}, {'higher' if o.direction == 'maximize' else 'lower'} is better"

    if len(objectives) == 1:
        return "trial", name(objectives[0])
    return name(objectives[0]), name(objectives[1])


def xy(point: dict[str, Any], objectives: list[Objective]) -> tuple[float, float]:
    if len(objectives) == 1:
        return float(point["trial"]), float(point["values"][0])
    return float(point["values"][0]), float(point["values"][1])


@dataclass(frozen=True)
class Scale:
    """How one axis is drawn, and the note that says why when it is not linear."""

    log: bool
    note: str | None = None


def scale(values: list[float], what: str) -> Scale:
    """Log when one value dwarfs the rest (and all are positive): every point stays readable."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 3 or min(finite) <= 0:
        return Scale(False)
    median = statistics.median(finite)
    top = max(finite)
    if median > 0 and top / median >= LOG_SPREAD:
        return Scale(True, f"{what} is on a log scale: its largest value ({top:,.4g}) is "
                           f"{top / median:,.0f}x the median ({median:,.4g})")
    return Scale(False)


def hover(point: dict[str, Any]) -> str:
    f = point["figures"]
    head = "engine defaults" if point["baseline"] else f"trial {point['trial']}"
    if point["best"]:
        head += " (recommended)"
    elif point["front"]:
        head += " (Pareto front)"
    lines = [f"<b>{head}</b>"]
    lines += [f"{html.escape(str(k))} = {html.escape(short(v))}" for k, v in sorted(point["config"].items())]
    lines.append("")
    for key in ("output_throughput", "p99_ttft_ms", "mean_tpot_ms", "goodput"):
        if isinstance(f.get(key), (int, float)):
            lines.append(f"{label(key)}: {format_figure(key, f[key])}")
    lines.append(f"$/1K tokens: {format_cost(point['cost'])}")
    lines.append(html.escape(point["verdict"]))
    return "<br>".join(lines)


def slo_lines(constraints: list[Constraint], objectives: list[Objective]) -> list[tuple[str, str, float]]:
    """(axis, SLO text, limit in the objective's unit) for each SLO that bounds a plotted objective."""
    on = ["y"] if len(objectives) == 1 else ["x", "y"]
    plotted = [o.metric for o in objectives[: len(on)]] if len(objectives) > 1 else [objectives[0].metric]
    out = []
    for c in constraints:
        if c.attainment is not None or c.kind not in ("latency", "throughput"):
            continue
        key = c.figure_key()
        if key in plotted:
            out.append((on[plotted.index(key)], c.text, _limit(c)))
    return out


@dataclass
class SloSeries:
    """One SLO as a chart draws it: each trial's value of what it judges, and the bound."""

    text: str
    title: str  # the y axis: what is judged, with its unit
    limit: float
    upper: bool  # the bound is a ceiling (latency) rather than a floor (throughput, attainment)
    trials: list[int]
    values: list[float]
    holds: list[bool]


def slo_series(results: StudyResults) -> list[SloSeries]:
    """Every SLO of the study, each with the value every measured trial reached."""
    measured = [t for t in results.measured() if t.reported]
    out = []
    for c in results.spec.constraints:
        upper = c.attainment is None and c.op in ("<", "<=")
        series = SloSeries(c.text, _judged(c), _limit(c), upper, [], [], [])
        for t in measured:
            value = _value(c, t)
            verdict = t.slo.get(c.text)
            if value is None or verdict is None:
                continue
            series.trials.append(t.number)
            series.values.append(value)
            series.holds.append(bool(verdict.get("holds")))
        out.append(series)
    return out


def _limit(c: Constraint) -> float:
    if c.attainment is not None:
        return c.attainment * 100.0
    return c.threshold * (1000.0 if c.kind == "latency" else 100.0 if c.kind == "quality" and c.relative else 1.0)


def _judged(c: Constraint) -> str:
    if c.attainment is not None:
        return f"requests within {c.threshold * 1000:g} ms (%)"
    if c.kind == "quality" and c.relative:
        return "perplexity change (%)"
    return axis_title(c.figure_key())


def _value(c: Constraint, t: TrialRecord) -> float | None:
    if c.attainment is not None:
        verdict = t.slo.get(c.text)
        if verdict is None or not isinstance(verdict.get("violation"), (int, float)):
            return None
        return (c.attainment - float(verdict["violation"])) * 100.0
    value = t.figures.get(c.figure_key())
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) * (100.0 if c.kind == "quality" and c.relative else 1.0)


def short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
