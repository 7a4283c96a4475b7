"""``pareto.png``: the study's front for places HTML does not go (matplotlib, from the same points)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotune.report.front import axes, slo_lines, xy
from autotune.spec import Constraint, Objective

__all__ = ["write_pareto_png"]


def write_pareto_png(
    points: list[dict[str, Any]], objectives: list[Objective], path: Path, *, title: str,
    constraints: list[Constraint] | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = axes(objectives)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        others = [p for p in points if not p["front"]]
        ok = [xy(p, objectives) for p in others if p["feasible"]]
        bad = [xy(p, objectives) for p in others if not p["feasible"]]
        front = sorted(xy(p, objectives) for p in points if p["front"])
        if ok:
            ax.scatter(*zip(*ok), s=30, color="#7baaf7", label="met the SLO")
        if bad:
            ax.scatter(*zip(*bad), s=30, color="#d93025", marker="x", label="missed the SLO")
        if front:
            ax.plot(*zip(*front), linestyle=":", color="#1a73e8", linewidth=1)
            ax.scatter(*zip(*front), s=70, color="#1a73e8", label="Pareto front (recommended)", zorder=3)
            for p in points:
                if p["front"]:
                    ax.annotate(f"trial {p['trial']}", xy(p, objectives), textcoords="offset points", xytext=(6, 6),
                                fontsize=8)
        for axis, text, limit in slo_lines(constraints or [], objectives):
            draw = ax.axhline if axis == "y" else ax.axvline
            draw(limit, color="#d93025", linestyle="--", linewidth=1, label=f"SLO {text}")
        if not points:
            ax.text(0.5, 0.5, "no measured trial", transform=ax.transAxes, ha="center")
        ax.set_xlabel(x_name)
        ax.set_ylabel(y_name)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if points:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
