"""The study's points as the figures draw them, computed once for the HTML page and the PNG alike."""

from __future__ import annotations

import html
import json
from typing import Any

from autotune.cost import format_cost
from autotune.report.console import trial_cost
from autotune.spec import Constraint, Objective
from autotune.tuning import StudyResults

__all__ = ["axes", "hover", "points", "short", "slo_lines", "xy"]


def points(results: StudyResults, price: float | None) -> list[dict[str, Any]]:
    """Every measured trial that carries its environment, with what a hover should say."""
    front = {t.number for t in results.front()}
    return [
        {
            "trial": t.number,
            "values": list(t.values or ()),
            "feasible": t.feasible,
            "front": t.number in front,
            "config": t.config,
            "figures": t.figures,
            "cost": trial_cost(t, results.spec, price),
        }
        for t in results.measured() if t.reported and t.values
    ]


def axes(objectives: list[Objective]) -> tuple[str, str]:
    def name(o: Objective) -> str:
        return f"{o.metric} ({'higher' if o.direction == 'maximize' else 'lower'} is better)"

    if len(objectives) == 1:
        return "trial", name(objectives[0])
    return name(objectives[0]), name(objectives[1])


def xy(point: dict[str, Any], objectives: list[Objective]) -> tuple[float, float]:
    if len(objectives) == 1:
        return float(point["trial"]), float(point["values"][0])
    return float(point["values"][0]), float(point["values"][1])


def hover(point: dict[str, Any]) -> str:
    f = point["figures"]
    lines = [f"<b>trial {point['trial']}</b>" + (" (Pareto front)" if point["front"] else "")]
    lines += [f"{html.escape(str(k))} = {html.escape(short(v))}" for k, v in sorted(point["config"].items())]
    lines.append("")
    for key, label in (("output_throughput", "out tok/s"), ("p99_ttft_ms", "p99 TTFT ms"),
                       ("mean_tpot_ms", "TPOT ms"), ("goodput", "goodput")):
        if isinstance(f.get(key), (int, float)):
            lines.append(f"{label}: {f[key]:,.1f}")
    lines.append(f"$/1K tokens: {format_cost(point['cost'])}")
    lines.append("SLO met" if point["feasible"] else "SLO missed")
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
            limit = c.threshold * (1000.0 if c.kind == "latency" else 1.0)
            out.append((on[plotted.index(key)], c.text, limit))
    return out


def short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
