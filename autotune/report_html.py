"""``report.html`` and ``pareto.png``: the study as something to read and share.

The HTML is one file that opens from disk with no network: plotly.js is
inlined once in the page, and nothing else is fetched. It holds the Pareto
front (hover a point for its configuration), parameter importances, the
diagnosis of each recommendation where the locate module provides one, the
verification table, the environment, and each recommendation's command line.
``pareto.png`` (matplotlib) is the same front for places HTML does not go.

Only results that carry their environment record are shown; the others are
named in a note at the top.
"""

from __future__ import annotations

import html
import importlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.cost import COST_KEY, format_cost
from autotune.environment import describe, missing
from autotune.report import pareto_front, serve_command, trial_cost, unreported
from autotune.slo import Constraint, Objective, parse_objectives
from autotune.spec import StudySpec
from autotune.verify import Verification, figure_rows, stored

HTML_NAME = "report.html"
PNG_NAME = "pareto.png"

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.l,th.l{text-align:left}pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.note{color:#8a5300}.muted{color:#666}
"""


def write_report(
    study: optuna.Study, spec: StudySpec, study_dir: Path, *, price_per_gpu_hour: float | None = None
) -> tuple[Path, Path]:
    """Writes ``report.html`` and ``pareto.png`` into the study folder; returns their paths."""
    study_dir.mkdir(parents=True, exist_ok=True)
    objectives = parse_objectives(spec.objectives)
    points = _points(study, spec, objectives, price_per_gpu_hour)
    png = study_dir / PNG_NAME
    write_pareto_png(points, objectives, png, title=f"Pareto front of {spec.name}", constraints=spec.constraints)
    page = render(study, spec, study_dir, objectives, points, price_per_gpu_hour)
    out = study_dir / HTML_NAME
    out.write_text(page, encoding="utf-8")
    return out, png


# --------------------------------------------------------------------------- data


def _points(
    study: optuna.Study, spec: StudySpec, objectives: list[Objective], price: float | None
) -> list[dict[str, Any]]:
    """Every measured trial that carries its environment, with what a hover should say."""
    front = {t.number for t in pareto_front(study)}
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if missing(t.user_attrs.get("environment")) or not t.values:
            continue
        figures = t.user_attrs.get("figures", {})
        config = t.user_attrs.get("config", dict(t.params))
        out.append({
            "trial": t.number,
            "values": list(t.values),
            "feasible": bool(t.user_attrs.get("feasible", True)),
            "front": t.number in front,
            "config": config,
            "figures": figures,
            "cost": trial_cost(t, spec, price),
        })
    return out


def _axes(objectives: list[Objective]) -> tuple[str, str]:
    def name(o: Objective) -> str:
        return f"{o.metric} ({'higher' if o.direction == 'maximize' else 'lower'} is better)"

    if len(objectives) == 1:
        return "trial", name(objectives[0])
    return name(objectives[0]), name(objectives[1])


def _xy(point: dict[str, Any], objectives: list[Objective]) -> tuple[float, float]:
    if len(objectives) == 1:
        return float(point["trial"]), float(point["values"][0])
    return float(point["values"][0]), float(point["values"][1])


def _hover(point: dict[str, Any]) -> str:
    f = point["figures"]
    lines = [f"<b>trial {point['trial']}</b>" + (" (Pareto front)" if point["front"] else "")]
    lines += [f"{html.escape(str(k))} = {html.escape(_short(v))}" for k, v in sorted(point["config"].items())]
    lines.append("")
    for key, label in (("output_throughput", "out tok/s"), ("p99_ttft_ms", "p99 TTFT ms"),
                       ("mean_tpot_ms", "TPOT ms"), ("goodput", "goodput")):
        if isinstance(f.get(key), (int, float)):
            lines.append(f"{label}: {f[key]:,.1f}")
    lines.append(f"$/1K tokens: {format_cost(point['cost'])}")
    lines.append("SLO met" if point["feasible"] else "SLO missed")
    return "<br>".join(lines)


# --------------------------------------------------------------------------- figures


def slo_lines(constraints: list[Constraint], objectives: list[Objective]) -> list[tuple[str, str, float]]:
    """(axis, SLO text, limit in the objective's unit) for each SLO that bounds a plotted objective."""
    axes = ["y"] if len(objectives) == 1 else ["x", "y"]
    plotted = [o.metric for o in objectives[: len(axes)]] if len(objectives) > 1 else [objectives[0].metric]
    out = []
    for c in constraints:
        if c.attainment is not None or c.kind not in ("latency", "throughput"):
            continue
        key = c.figure_key()
        if key in plotted:
            limit = c.threshold * (1000.0 if c.kind == "latency" else 1.0)
            out.append((axes[plotted.index(key)], c.text, limit))
    return out


def pareto_figure(
    points: list[dict[str, Any]], objectives: list[Objective], constraints: list[Constraint] | None = None
) -> Any:
    import plotly.graph_objects as go

    x_name, y_name = _axes(objectives)
    fig = go.Figure()
    groups = (
        ("Pareto front (recommended)", lambda p: p["front"], dict(size=13, color="#1a73e8", symbol="circle")),
        ("met the SLO", lambda p: p["feasible"] and not p["front"], dict(size=9, color="#7baaf7", symbol="circle")),
        ("missed the SLO", lambda p: not p["feasible"], dict(size=9, color="#d93025", symbol="x")),
    )
    for label, keep, marker in groups:
        chosen = sorted((p for p in points if keep(p)), key=lambda p: _xy(p, objectives))
        xs, ys = zip(*(_xy(p, objectives) for p in chosen)) if chosen else ((), ())
        fig.add_trace(go.Scatter(
            x=list(xs), y=list(ys), mode="markers+lines" if label.startswith("Pareto") and len(objectives) > 1 else "markers",
            name=label, marker=marker, line=dict(dash="dot", width=1), text=[_hover(p) for p in chosen],
            hovertemplate="%{text}<extra></extra>",
        ))
    for axis, text, limit in slo_lines(constraints or [], objectives):
        line = dict(line_dash="dash", line_color="#d93025", annotation_text=f"SLO {text}")
        fig.add_hline(y=limit, **line) if axis == "y" else fig.add_vline(x=limit, **line)
    fig.update_layout(
        xaxis_title=x_name, yaxis_title=y_name, template="plotly_white", height=520,
        legend=dict(orientation="h", y=-0.18), margin=dict(l=60, r=20, t=30, b=60),
    )
    return fig


def importance_figure(study: optuna.Study, objectives: list[Objective]) -> tuple[Any | None, str | None]:
    """Optuna's parameter-importance plot for the first objective, or why there is none."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return None, f"needs at least 2 measured trials (this study has {len(done)})"
    try:
        import warnings

        from optuna.visualization import plot_param_importances

        # Optuna's default evaluator ranks what leads to *low* target values: negate a maximised one.
        sign = -1.0 if objectives[0].direction == "maximize" else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns on few trials; the caption says how many
            fig = plot_param_importances(
                study, target=lambda t: sign * t.values[0], target_name=objectives[0].metric,
            )
        if not any(len(getattr(trace, "x", None) or ()) for trace in fig.data):
            return None, "no parameter varied enough across the measured trials to rank"
        fig.update_layout(height=360, template="plotly_white",
                          title=f"Parameter importances for {objectives[0].text} ({len(done)} measured trials)")
        return fig, None
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return None, f"not computable yet: {' '.join(str(e).split())}"


def write_pareto_png(
    points: list[dict[str, Any]], objectives: list[Objective], path: Path, *, title: str,
    constraints: list[Constraint] | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = _axes(objectives)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        others = [p for p in points if not p["front"]]
        ok = [_xy(p, objectives) for p in others if p["feasible"]]
        bad = [_xy(p, objectives) for p in others if not p["feasible"]]
        front = sorted(_xy(p, objectives) for p in points if p["front"])
        if ok:
            ax.scatter(*zip(*ok), s=30, color="#7baaf7", label="met the SLO")
        if bad:
            ax.scatter(*zip(*bad), s=30, color="#d93025", marker="x", label="missed the SLO")
        if front:
            ax.plot(*zip(*front), linestyle=":", color="#1a73e8", linewidth=1)
            ax.scatter(*zip(*front), s=70, color="#1a73e8", label="Pareto front (recommended)", zorder=3)
            for p in points:
                if p["front"]:
                    ax.annotate(f"trial {p['trial']}", _xy(p, objectives), textcoords="offset points", xytext=(6, 6),
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


# --------------------------------------------------------------------------- diagnosis


def diagnoses(study: optuna.Study, trials: list[FrozenTrial]) -> tuple[dict[int, Any], str | None]:
    """Each trial's diagnosis from ``autotune.locate``, when that module is there to give one."""
    try:
        locate = importlib.import_module("autotune.locate")
    except ImportError:
        return {}, "no diagnosis: the locate module is not installed"
    locate_trial = getattr(locate, "locate_trial", None)
    if locate_trial is None:
        return {}, "no diagnosis: autotune.locate has no locate_trial()"
    out: dict[int, Any] = {}
    problems = []
    for t in trials:
        try:
            out[t.number] = locate_trial(t.user_attrs, t.number)
        except Exception as e:  # a diagnosis is an extra; the report is written without it
            problems.append(f"trial {t.number}: {type(e).__name__}: {e}")
    return out, ("diagnosis failed for " + "; ".join(problems) if problems else None)


def _render_diagnosis(value: Any) -> str:
    """A trial's diagnoses: each bottleneck with its evidence and advice, then what was missing."""
    e = html.escape
    found = getattr(value, "diagnoses", None)
    if found is None:
        return f"<pre>{e(_short(value, 2000))}</pre>"
    items = []
    for d in found:
        evidence = "".join(f"<li>{e(str(getattr(x, 'text', x)))}</li>" for x in getattr(d, "evidence", []))
        advice = "".join(f"<li>{e(str(getattr(x, 'text', x)))}</li>" for x in getattr(d, "advice", []))
        confidence = getattr(d, "confidence", None)
        items.append(
            f"<li><b>{e(str(getattr(d, 'title', getattr(d, 'bottleneck', d))))}</b>"
            + (f" <span class='muted'>({e(str(getattr(d, 'bottleneck', '')))}, confidence {confidence:.0%})</span>"
               if isinstance(confidence, (int, float)) else "")
            + (f"<div>evidence:<ul>{evidence}</ul></div>" if evidence else "")
            + (f"<div>next:<ul>{advice}</ul></div>" if advice else "")
            + "</li>"
        )
    out = f"<ul class='diagnosis'>{''.join(items)}</ul>" if items else "<p class='muted'>no bottleneck found</p>"
    for m in getattr(value, "missing", []) or []:
        out += f"<p class='muted'>not judged: {e(str(m))}</p>"
    return out


# --------------------------------------------------------------------------- page


def render(
    study: optuna.Study, spec: StudySpec, study_dir: Path, objectives: list[Objective],
    points: list[dict[str, Any]], price: float | None,
) -> str:
    from plotly.offline import get_plotlyjs

    front = pareto_front(study)
    verifications = stored(study)
    all_trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in all_trials) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)}
    parts: list[str] = []
    e = html.escape
    parts.append(f"<h1>autotune study {e(str(spec.name))}</h1>")
    parts.append(
        "<p>"
        f"model <b>{e(spec.model)}</b>, engine <b>{e(spec.engine.name)}</b>, objectives <code>{e(spec.objectives)}</code>"
        + (f", SLO <code>{e(spec.slo)}</code>" if spec.slo else ", no SLO")
        + f". {counts[TrialState.COMPLETE]} measured, {counts[TrialState.FAIL]} failed, "
        f"{counts[TrialState.PRUNED]} infeasible; {len(front)} recommended.</p>"
    )
    parts.append(f"<p class='muted'>written {datetime.now(timezone.utc).isoformat(timespec='seconds')} "
                 f"from {e(str(study_dir.resolve()))}</p>")
    for note in unreported(study):
        parts.append(f"<p class='note'>{e(note)}</p>")

    parts.append("<h2>Pareto front</h2>")
    parts.append("<p class='muted'>Hover a point for its configuration. Recommended points are feasible and "
                 "not dominated on the study's objectives.</p>")
    parts.append(_plot_div(pareto_figure(points, objectives, spec.constraints), "pareto-plot"))

    parts.append("<h2>Recommendations</h2>")
    parts.append(_recommendations(study, spec, study_dir, front, verifications, price))

    parts.append("<h2>Verification</h2>")
    parts.append(_verification_section(front, verifications))

    parts.append("<h2>Diagnosis</h2>")
    diag, problem = diagnoses(study, front)
    if problem:
        parts.append(f"<p class='muted'>{e(problem)}</p>")
    for t in front:
        if t.number in diag:
            parts.append(f"<h3>trial {t.number}</h3>{_render_diagnosis(diag[t.number])}")

    parts.append("<h2>Parameter importances</h2>")
    fig, why = importance_figure(study, objectives)
    parts.append(_plot_div(fig, "importance-plot") if fig is not None else f"<p class='muted'>{e(why or '')}</p>")

    parts.append("<h2>Environment</h2>")
    parts.append(_environments(front, verifications))

    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>autotune: {e(str(spec.name))}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>\n<body>\n{body}\n</body></html>\n"
    )


def _plot_div(fig: Any, div_id: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True}))


def _recommendations(
    study: optuna.Study, spec: StudySpec, study_dir: Path, front: list[FrozenTrial],
    verifications: dict[int, Verification], price: float | None,
) -> str:
    if not front:
        return "<p>No recommendation: " + ("no trial met every SLO." if spec.slo else "no trial completed.") + "</p>"
    e = html.escape
    rows = []
    for t in front:
        f = t.user_attrs.get("figures", {})
        config = t.user_attrs.get("config", dict(t.params))
        v = verifications.get(t.number)
        verdict = "-" if v is None else ("<span class='ok'>verified</span>" if v.verified
                                         else "<span class='bad'>not verified</span>")
        path = study_dir / "configs" / f"trial-{t.number}.yaml"
        cmd = serve_command(spec, t, path)
        rows.append(
            f"<tr><td>{t.number}</td><td class='l'>{'<br>'.join(e(f'{k}={_short(x)}') for k, x in sorted(config.items()))}</td>"
            f"<td>{_num(f.get('output_throughput'), '{:,.0f}')}</td><td>{_num(f.get('p99_ttft_ms'), '{:,.0f}')}</td>"
            f"<td>{_num(f.get('mean_tpot_ms'), '{:.1f}')}</td><td>{e(format_cost(trial_cost(t, spec, price)))}</td>"
            f"<td>{verdict}</td></tr>"
            f"<tr><td></td><td class='l' colspan='6'><pre>{e(cmd)}</pre></td></tr>"
        )
    return (
        "<table><tr><th>trial</th><th class='l'>configuration</th><th>out tok/s</th><th>p99 TTFT ms</th>"
        "<th>TPOT ms</th><th>$/1K tokens</th><th>verified</th></tr>" + "".join(rows) + "</table>"
        "<p class='muted'>Each command serves the configuration with the engine's own CLI; the config file is "
        "written by <code>autotune review</code>.</p>"
    )


def _verification_section(front: list[FrozenTrial], verifications: dict[int, Verification]) -> str:
    e = html.escape
    if not verifications:
        return "<p class='muted'>Not verified yet: run <code>autotune verify STUDY_DIR</code>.</p>"
    out = []
    shown = [v for v in verifications.values() if not missing(v.environment)]
    for v in verifications.values():
        if missing(v.environment):
            out.append(f"<p class='note'>verification of trial {v.trial} is not reported: no environment record</p>")
    for v in shown:
        ok = len(v.ok_starts)
        verdict = "<span class='ok'>verified</span>" if v.verified else "<span class='bad'>not verified</span>"
        out.append(f"<h3 id='verify-{v.trial}'>trial {v.trial}: {verdict} "
                   f"<span class='muted'>({ok} of {len(v.starts)} fresh starts measured, {v.repeats_wanted} wanted)</span></h3>")
        rows = "".join(f"<tr><td class='l'>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td><td>{e(d)}</td></tr>"
                       for a, b, c, d in figure_rows(v))
        out.append("<table class='verify'><tr><th class='l'>figure</th><th>mean ± std</th><th>95% CI</th><th>n</th></tr>"
                   + rows + "</table>")
        if v.checks:
            checks = "".join(
                f"<tr><td class='l'>{e(c.slo)}</td><td class='l'>{e(c.basis)}</td><td>{e(_bound(c.value, c.unit))}</td>"
                f"<td>{e(_bound(c.limit, c.unit))}</td><td>{'<span class=ok>holds</span>' if c.holds else '<span class=bad>fails</span>'}</td></tr>"
                for c in v.checks
            )
            out.append("<table><tr><th class='l'>SLO</th><th class='l'>judged on</th><th>value</th><th>limit</th>"
                       "<th></th></tr>" + checks + "</table>")
        for r in v.reasons:
            out.append(f"<p class='bad'>{e(r)}</p>")
        for n in v.notes:
            out.append(f"<p class='note'>{e(n)}</p>")
        failed = [s for s in v.starts if s.status != "ok"]
        for s in failed:
            out.append(f"<p class='muted'>failed start ({e(str(s.folder))}): {e(str(s.reason))}</p>")
    return "\n".join(out)


def _environments(front: list[FrozenTrial], verifications: dict[int, Verification]) -> str:
    e = html.escape
    envs: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for t in front:
        env = t.user_attrs.get("environment") or {}
        key = json.dumps({k: v for k, v in env.items() if k != "recorded_at"}, sort_keys=True, default=str)
        envs.setdefault(key, ([], env))[0].append(f"trial {t.number}")
    for v in verifications.values():
        key = json.dumps({k: x for k, x in v.environment.items() if k != "recorded_at"}, sort_keys=True, default=str)
        envs.setdefault(key, ([], v.environment))[0].append(f"verification of trial {v.trial}")
    if not envs:
        return "<p class='muted'>no result to describe</p>"
    out = []
    for users, env in envs.values():
        rows = "".join(f"<tr><th class='l'>{e(str(k))}</th><td class='l'>{e(_short(val, 300))}</td></tr>"
                       for k, val in env.items())
        out.append(f"<p><b>{e(describe(env))}</b><br><span class='muted'>for {e(', '.join(users))}</span></p>"
                   f"<table class='env'>{rows}</table>")
    return "\n".join(out)


def _bound(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if not unit:
        return f"{value * 100:.1f}%"
    return f"{value:,.1f} {unit}"


def _num(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["write_report", "write_pareto_png", "pareto_figure", "HTML_NAME", "PNG_NAME", "COST_KEY"]
