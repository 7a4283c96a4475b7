"""The charts of report.html, drawn by plotly from the points ``front`` computes.

Each chart marks what a reader looks for first: the recommended point (a star,
labelled), the engine defaults (a diamond, labelled "engine defaults"), every
SLO's bound, and a log axis, said in a note, when one value dwarfs the rest.
"""

from __future__ import annotations

import math
from typing import Any

from autotune.report.front import Scale, SloSeries, axes, hover, scale, slo_lines, xy
from autotune.spec import Constraint, Objective
from autotune.tuning import StudyResults

__all__ = ["importance_figure", "pareto_figure", "pareto_scales", "slo_figure"]

BLUE, LIGHT, RED, GREY, BLACK = "#1a73e8", "#7baaf7", "#d93025", "#9aa0a6", "#202124"


def pareto_scales(drawn: list[dict[str, Any]], objectives: list[Objective]) -> tuple[Scale, Scale]:
    """The x and y scales of the Pareto chart (the trial-number axis of one objective stays linear)."""
    pts = [xy(p, objectives) for p in drawn]
    x_name, y_name = axes(objectives)
    xs = Scale(False) if len(objectives) == 1 else scale([x for x, _ in pts], f"the x axis, {x_name.split(',')[0]},")
    return xs, scale([y for _, y in pts], f"the y axis, {y_name.split(',')[0]},")


def pareto_figure(
    points: list[dict[str, Any]], objectives: list[Objective], constraints: list[Constraint] | None = None,
    baseline: dict[str, Any] | None = None,
) -> Any:
    import plotly.graph_objects as go

    x_name, y_name = axes(objectives)
    fig = go.Figure()
    groups = (
        ("Pareto front", lambda p: p["front"] and not p["best"], dict(size=12, color=BLUE, symbol="circle")),
        ("met the SLO", lambda p: p["feasible"] and not p["front"], dict(size=9, color=LIGHT, symbol="circle")),
        ("missed an SLO", lambda p: not p["feasible"], dict(size=10, color=RED, symbol="x")),
        ("recommended", lambda p: p["best"], dict(size=22, color=BLUE, symbol="star", line=dict(width=2, color=BLACK))),
    )
    front = sorted((p for p in points if p["front"]), key=lambda p: xy(p, objectives))
    if len(objectives) > 1 and len(front) > 1:
        fxs, fys = zip(*(xy(p, objectives) for p in front))
        fig.add_trace(go.Scatter(x=list(fxs), y=list(fys), mode="lines", line=dict(dash="dot", width=1, color=BLUE),
                                 hoverinfo="skip", showlegend=False))
    for name, keep, marker in groups:
        chosen = sorted((p for p in points if keep(p)), key=lambda p: xy(p, objectives))
        if not chosen:
            continue
        xs, ys = zip(*(xy(p, objectives) for p in chosen))
        fig.add_trace(go.Scatter(
            x=list(xs), y=list(ys), mode="markers", name=name, marker=marker,
            text=[hover(p) for p in chosen], hovertemplate="%{text}<extra></extra>",
        ))
    if baseline is not None:
        bx, by = xy(baseline, objectives) if len(objectives) > 1 else (-0.5, float(baseline["values"][0]))
        fig.add_trace(go.Scatter(
            x=[bx], y=[by], mode="markers+text", name="engine defaults", text=["engine defaults"],
            textposition="bottom center", marker=dict(size=14, color=BLACK, symbol="diamond"),
            hovertext=[hover(baseline)], hovertemplate="%{hovertext}<extra></extra>",
        ))
    x_scale, y_scale = pareto_scales(points + ([baseline] if baseline else []), objectives)
    for p in points:
        if p["best"]:
            px, py = xy(p, objectives)
            fig.add_annotation(x=_axis_pos(px, x_scale), y=_axis_pos(py, y_scale),
                               text=f"recommended: trial {p['trial']}", showarrow=True, arrowhead=2, ax=40, ay=-40,
                               font=dict(color=BLUE))
    for axis, text, limit in slo_lines(constraints or [], objectives):
        # the label is an annotation of its own: plotly misplaces a line's label on a log axis
        label = dict(text=f"SLO {text}", showarrow=False, font=dict(color=RED))
        if axis == "y":
            fig.add_hline(y=limit, line_dash="dash", line_color=RED)
            fig.add_annotation(x=0, xref="paper", y=_axis_pos(limit, y_scale), xanchor="left", yanchor="bottom", **label)
        else:
            fig.add_vline(x=limit, line_dash="dash", line_color=RED)
            fig.add_annotation(y=1, yref="paper", x=_axis_pos(limit, x_scale), xanchor="left", yanchor="top", **label)
    fig.update_layout(
        xaxis_title=x_name, yaxis_title=y_name, template="plotly_white", height=540,
        legend=dict(orientation="h", y=-0.18), margin=dict(l=70, r=20, t=30, b=70),
    )
    everything = points + ([baseline] if baseline else [])
    for axis, axis_scale, index in (("xaxis", x_scale, 0), ("yaxis", y_scale, 1)):
        if axis_scale.log:
            fig.update_layout({axis: _log_axis([xy(p, objectives)[index] for p in everything])})
    return fig


def _log_axis(values: list[float]) -> dict[str, Any]:
    """A log axis labelled at 1-2-5 steps in plain numbers, not plotly's bare minor digits."""
    low, high = min(values), max(values)
    ticks = [m * 10 ** e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5) if low / 2 <= m * 10 ** e <= high * 2]
    return dict(type="log", tickvals=ticks, ticktext=[f"{t:,g}" for t in ticks])


def _axis_pos(value: float, axis: Scale) -> float:
    """An annotation's coordinate: plotly places annotations on a log axis by the value's log10."""
    return math.log10(value) if axis.log and value > 0 else value


def slo_figure(series: list[SloSeries]) -> Any | None:
    """One panel per SLO: each measured trial's value of what the SLO judges, against its bound."""
    shown = [s for s in series if s.trials]
    if not shown:
        return None
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(shown), subplot_titles=[f"SLO {s.text} (bound {s.limit:,.4g})" for s in shown],
                        horizontal_spacing=0.12 if len(shown) > 1 else 0.0)
    for i, s in enumerate(shown, start=1):
        colors = [LIGHT if ok else RED for ok in s.holds]
        symbols = ["circle" if ok else "x" for ok in s.holds]
        fig.add_trace(go.Scatter(
            x=s.trials, y=s.values, mode="markers", marker=dict(size=10, color=colors, symbol=symbols),
            showlegend=False, text=[f"trial {t}: {v:,.4g} ({'holds' if ok else 'missed'})"
                                    for t, v, ok in zip(s.trials, s.values, s.holds)],
            hovertemplate="%{text}<extra></extra>",
        ), row=1, col=i)
        fig.add_hline(y=s.limit, line_dash="dash", line_color=RED, row=1, col=i)
        log = scale(s.values + [s.limit], s.text).log
        fig.update_yaxes(title_text=s.title, row=1, col=i, **(_log_axis(s.values + [s.limit]) if log else {}))
        fig.update_xaxes(title_text="trial", tickformat="d", dtick=1 if len(s.trials) <= 20 else None, row=1, col=i)
    fig.update_layout(template="plotly_white", height=380, margin=dict(l=70, r=20, t=50, b=50))
    return fig


def importance_figure(results: StudyResults, objectives: list[Objective]) -> tuple[Any | None, str | None]:
    """The knobs' importances for the first objective (the ranking ``review`` prints), or why there are none."""
    n = len(results.measured())
    if n < 2:
        return None, f"needs at least 2 measured trials (this study has {n})"
    ranked = sorted(results.importances.items(), key=lambda kv: kv[1])
    if not ranked or not any(v > 0 for _, v in ranked):
        return None, "no parameter varied enough across the measured trials to rank"
    import plotly.graph_objects as go

    color = GREY if results.importance_note() else BLUE
    fig = go.Figure(go.Bar(x=[v for _, v in ranked], y=[k for k, _ in ranked], orientation="h",
                           marker_color=color, hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(height=120 + 40 * len(ranked), template="plotly_white",
                      title=f"for {objectives[0].text} (fANOVA, {n} measured trials)",
                      xaxis_title="importance (share of the objective's variance)", margin=dict(l=200, r=20, t=50, b=50))
    return fig, None
