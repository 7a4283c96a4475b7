"""``pareto.png``: the study's front for places HTML does not go (matplotlib, from the same points).

It marks what the HTML chart marks: the recommended point, the engine
defaults, the SLO bounds on the plotted axes, and a log axis where one value
dwarfs the rest (named in the axis title).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotune.report.charts import BLACK, BLUE, LIGHT, RED, pareto_scales
from autotune.report.front import axes, slo_lines, xy
from autotune.spec import Constraint, Objective

__all__ = ["write_pareto_png"]


def write_pareto_png(
    points: list[dict[str, Any]], objectives: list[Objective], path: Path, *, title: str,
    constraints: list[Constraint] | None = None, baseline: dict[str, Any] | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = axes(objectives)
    x_scale, y_scale = pareto_scales(points + ([baseline] if baseline else []), objectives)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        others = [p for p in points if not p["front"]]
        ok = [xy(p, objectives) for p in others if p["feasible"]]
        bad = [xy(p, objectives) for p in others if not p["feasible"]]
        front = sorted(xy(p, objectives) for p in points if p["front"])
        if ok:
            ax.scatter(*zip(*ok), s=30, color=LIGHT, label="met the SLO")
        if bad:
            ax.scatter(*zip(*bad), s=36, color=RED, marker="x", label="missed an SLO")
        if front:
            ax.plot(*zip(*front), linestyle=":", color=BLUE, linewidth=1)
            ax.scatter(*zip(*front), s=70, color=BLUE, label="Pareto front", zorder=3)
        for p in points:
            if p["best"]:
                ax.scatter(*xy(p, objectives), s=260, color=BLUE, marker="*", edgecolors=BLACK, zorder=4,
                           label=f"recommended (trial {p['trial']})")
                ax.annotate(f"recommended: trial {p['trial']}", xy(p, objectives), textcoords="offset points",
                            xytext=(10, 10), fontsize=9, color=BLUE)
        if baseline is not None:
            b = xy(baseline, objectives) if len(objectives) > 1 else (-0.5, float(baseline["values"][0]))
            ax.scatter(*b, s=90, color=BLACK, marker="D", zorder=4, label="engine defaults")
            ax.annotate("engine defaults", b, textcoords="offset points", xytext=(8, -14), fontsize=9)
        for axis, text, limit in slo_lines(constraints or [], objectives):
            draw = ax.axhline if axis == "y" else ax.axvline
            draw(limit, color=RED, linestyle="--", linewidth=1, label=f"SLO {text}")
        if not points:
            ax.text(0.5, 0.5, "no measured trial", transform=ax.transAxes, ha="center")
        if x_scale.log:
            ax.set_xscale("log")
        if y_scale.log:
            ax.set_yscale("log")
        ax.set_xlabel(x_name + (" (log scale)" if x_scale.log else ""))
        ax.set_ylabel(y_name + (" (log scale)" if y_scale.log else ""))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if points:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
