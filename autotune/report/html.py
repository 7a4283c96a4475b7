"""``report.html`` and ``pareto.png``: the study as something to read and share.

The HTML is one file that opens from disk with no network: plotly.js is
inlined once in the page, and nothing else is fetched. It holds the Pareto
front (hover a point for its configuration), parameter importances, the
diagnosis of each recommendation, the verification table, the environment,
and each recommendation's command line.

Only results that carry their environment record are shown; the others are
named in a note at the top.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autotune.cost import format_cost
from autotune.environment import describe, missing
from autotune.locate import locate_trial
from autotune.report.configs import serve_command
from autotune.report.console import trial_cost
from autotune.report.front import axes, hover, points, short, slo_lines, xy
from autotune.report.png import write_pareto_png
from autotune.report.verification import figure_rows
from autotune.spec import Constraint, Objective, StudySpec
from autotune.tuning import FEW_TRIALS, StudyResults, TrialRecord
from autotune.verify import Verification, stored

__all__ = ["HTML_NAME", "PNG_NAME", "pareto_figure", "write_report"]

HTML_NAME = "report.html"
PNG_NAME = "pareto.png"

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.l,th.l{text-align:left}pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.note{color:#8a5300}.muted{color:#666}
"""


def write_report(results: StudyResults, study_dir: Path, *, price_per_gpu_hour: float | None = None) -> tuple[Path, Path]:
    """Writes ``report.html`` and ``pareto.png`` into the study folder; returns their paths."""
    study_dir.mkdir(parents=True, exist_ok=True)
    objectives = results.spec.objective_list
    drawn = points(results, price_per_gpu_hour)
    png = study_dir / PNG_NAME
    write_pareto_png(drawn, objectives, png, title=f"Pareto front of {results.name}",
                     constraints=results.spec.constraints)
    page = render(results, study_dir, objectives, drawn, price_per_gpu_hour)
    out = study_dir / HTML_NAME
    out.write_text(page, encoding="utf-8")
    return out, png


def pareto_figure(
    points: list[dict[str, Any]], objectives: list[Objective], constraints: list[Constraint] | None = None
) -> Any:
    import plotly.graph_objects as go

    x_name, y_name = axes(objectives)
    fig = go.Figure()
    groups = (
        ("Pareto front (recommended)", lambda p: p["front"], dict(size=13, color="#1a73e8", symbol="circle")),
        ("met the SLO", lambda p: p["feasible"] and not p["front"], dict(size=9, color="#7baaf7", symbol="circle")),
        ("missed the SLO", lambda p: not p["feasible"], dict(size=9, color="#d93025", symbol="x")),
    )
    for label, keep, marker in groups:
        chosen = sorted((p for p in points if keep(p)), key=lambda p: xy(p, objectives))
        xs, ys = zip(*(xy(p, objectives) for p in chosen)) if chosen else ((), ())
        fig.add_trace(go.Scatter(
            x=list(xs), y=list(ys), mode="markers+lines" if label.startswith("Pareto") and len(objectives) > 1 else "markers",
            name=label, marker=marker, line=dict(dash="dot", width=1), text=[hover(p) for p in chosen],
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


def importance_figure(results: StudyResults, objectives: list[Objective]) -> tuple[Any | None, str | None]:
    """The knobs' importances for the first objective (the same figures ``review`` prints), or why there are none."""
    n = len(results.measured())
    if n < 2:
        return None, f"needs at least 2 measured trials (this study has {n})"
    ranked = sorted(results.importances.items(), key=lambda kv: kv[1])
    if not ranked or not any(v > 0 for _, v in ranked):
        return None, "no parameter varied enough across the measured trials to rank"
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=[v for _, v in ranked], y=[k for k, _ in ranked], orientation="h",
                           marker_color="#1a73e8", hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    title = f"Parameter importances for {objectives[0].text} (fANOVA, {n} measured trials)"
    if n < FEW_TRIALS:
        title += f": fewer than {FEW_TRIALS} trials, read as a hint"
    fig.update_layout(height=120 + 40 * len(ranked), template="plotly_white", title=title,
                      xaxis_title="importance (share of the objective's variance)", margin=dict(l=200, r=20, t=50, b=50))
    return fig, None


def diagnoses(trials: list[TrialRecord]) -> tuple[dict[int, Any], str | None]:
    """Each trial's diagnosis; a rule that breaks leaves the report without that trial's diagnosis, not without a report."""
    out: dict[int, Any] = {}
    problems = []
    for t in trials:
        try:
            out[t.number] = locate_trial(t.attrs, t.number)
        except Exception as e:
            problems.append(f"trial {t.number}: {type(e).__name__}: {e}")
    return out, ("diagnosis failed for " + "; ".join(problems) if problems else None)


def _render_diagnosis(value: Any) -> str:
    """A trial's diagnoses: each bottleneck with its evidence and advice, then what was missing."""
    e = html.escape
    found = getattr(value, "diagnoses", None)
    if found is None:
        return f"<pre>{e(short(value, 2000))}</pre>"
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


def render(
    results: StudyResults, study_dir: Path, objectives: list[Objective], drawn: list[dict[str, Any]],
    price: float | None,
) -> str:
    from plotly.offline import get_plotlyjs

    spec = results.spec
    front = results.front()
    verifications = stored(results)
    counts = results.counts()
    parts: list[str] = []
    e = html.escape
    parts.append(f"<h1>autotune study {e(str(spec.name))}</h1>")
    parts.append(
        "<p>"
        f"model <b>{e(spec.model)}</b>, engine <b>{e(spec.engine.name)}</b>, objectives <code>{e(spec.objectives)}</code>"
        + (f", SLO <code>{e(spec.slo)}</code>" if spec.slo else ", no SLO")
        + f". {counts['measured']} measured, {counts['failed']} failed, "
        f"{counts['refused']} infeasible; {len(front)} recommended.</p>"
    )
    parts.append(f"<p class='muted'>written {datetime.now(timezone.utc).isoformat(timespec='seconds')} "
                 f"from {e(str(study_dir.resolve()))}</p>")
    for note in results.unreported():
        parts.append(f"<p class='note'>{e(note)}</p>")

    parts.append("<h2>Pareto front</h2>")
    parts.append("<p class='muted'>Hover a point for its configuration. Recommended points are feasible and "
                 "not dominated on the study's objectives.</p>")
    parts.append(_plot_div(pareto_figure(drawn, objectives, spec.constraints), "pareto-plot"))

    parts.append("<h2>Recommendations</h2>")
    parts.append(_recommendations(spec, study_dir, front, verifications, price))

    parts.append("<h2>Verification</h2>")
    parts.append(_verification_section(front, verifications))

    parts.append("<h2>Diagnosis</h2>")
    diag, problem = diagnoses(front)
    if problem:
        parts.append(f"<p class='muted'>{e(problem)}</p>")
    for t in front:
        if t.number in diag:
            parts.append(f"<h3>trial {t.number}</h3>{_render_diagnosis(diag[t.number])}")

    parts.append("<h2>Parameter importances</h2>")
    fig, why = importance_figure(results, objectives)
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
    spec: StudySpec, study_dir: Path, front: list[TrialRecord],
    verifications: dict[int, Verification], price: float | None,
) -> str:
    if not front:
        return "<p>No recommendation: " + ("no trial met every SLO." if spec.slo else "no trial completed.") + "</p>"
    e = html.escape
    rows = []
    for t in front:
        f = t.figures
        config = t.config
        v = verifications.get(t.number)
        verdict = "-" if v is None else ("<span class='ok'>verified</span>" if v.verified
                                         else "<span class='bad'>not verified</span>")
        path = study_dir / "configs" / f"trial-{t.number}.yaml"
        cmd = serve_command(spec, t, path)
        rows.append(
            f"<tr><td>{t.number}</td><td class='l'>{'<br>'.join(e(f'{k}={short(x)}') for k, x in sorted(config.items()))}</td>"
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


def _verification_section(front: list[TrialRecord], verifications: dict[int, Verification]) -> str:
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


def _environments(front: list[TrialRecord], verifications: dict[int, Verification]) -> str:
    e = html.escape
    envs: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for t in front:
        env = t.environment
        key = json.dumps({k: v for k, v in env.items() if k != "recorded_at"}, sort_keys=True, default=str)
        envs.setdefault(key, ([], env))[0].append(f"trial {t.number}")
    for v in verifications.values():
        key = json.dumps({k: x for k, x in v.environment.items() if k != "recorded_at"}, sort_keys=True, default=str)
        envs.setdefault(key, ([], v.environment))[0].append(f"verification of trial {v.trial}")
    if not envs:
        return "<p class='muted'>no result to describe</p>"
    out = []
    for users, env in envs.values():
        rows = "".join(f"<tr><th class='l'>{e(str(k))}</th><td class='l'>{e(short(val, 300))}</td></tr>"
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
