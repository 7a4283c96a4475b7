"""``report.html`` and ``pareto.png``: the study as something to read and share.

The page opens from disk with no network. plotly.js sits once beside it
(``plotly.min.js``, written into the folder on the first report and shared by
every report there), so report.html itself stays small; where the script is
missing the page shows pareto.png instead of the interactive charts.

It says first what was measured (model, engine, workload, SLO, environment)
and what came of every trial, in the words every report uses (met every SLO,
missed an SLO, refused before launch, failed to start); then the Pareto front
(recommended point and engine defaults marked, hover a point for its
configuration), every SLO against each trial, the recommendations with their
commands, the verification, the diagnosis, the parameter importances and the
environment.

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
from autotune.report.charts import importance_figure, pareto_figure, pareto_scales, slo_figure
from autotune.report.configs import serve_command, write_configs
from autotune.report.console import trial_cost
from autotune.report.context import baseline_line, environment_text, workload_text
from autotune.report.front import baseline_point, points, short, slo_series
from autotune.report.png import write_pareto_png
from autotune.report.verification import figure_rows, verified_lines
from autotune.spec import StudySpec
from autotune.tuning import StudyResults, TrialRecord
from autotune.verify import Verification, stored

__all__ = ["HTML_NAME", "PLOTLY_NAME", "PNG_NAME", "pareto_figure", "write_report"]

HTML_NAME = "report.html"
PNG_NAME = "pareto.png"
PLOTLY_NAME = "plotly.min.js"

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.l,th.l{text-align:left}pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.note{color:#8a5300}.muted{color:#666}
.facts th{text-align:left;width:9rem}.facts td{text-align:left}.headline{font-size:1.1rem;background:#e8f0fe;padding:.6rem .8rem}
.fallback{display:none;max-width:100%}
"""


def write_report(results: StudyResults, study_dir: Path, *, price_per_gpu_hour: float | None = None) -> tuple[Path, Path]:
    """Writes ``report.html`` and ``pareto.png`` into the study folder (and plotly.js
    beside them when it is not there yet); returns the page's and the PNG's paths."""
    study_dir.mkdir(parents=True, exist_ok=True)
    objectives = results.spec.objective_list
    drawn = points(results, price_per_gpu_hour)
    baseline = baseline_point(results, price_per_gpu_hour)
    png = study_dir / PNG_NAME
    write_pareto_png(drawn, objectives, png, title=f"Pareto front of {results.name}",
                     constraints=results.spec.constraints, baseline=baseline)
    _write_plotly(study_dir)
    write_configs(results, study_dir)  # the commands on the page name these files
    page = render(results, study_dir, drawn, baseline, price_per_gpu_hour)
    out = study_dir / HTML_NAME
    out.write_text(page, encoding="utf-8")
    return out, png


def _write_plotly(folder: Path) -> None:
    """plotly.js once per folder: rewritten only when the installed plotly's differs."""
    from plotly.offline import get_plotlyjs

    script = get_plotlyjs()
    path = folder / PLOTLY_NAME
    if not path.exists() or path.stat().st_size != len(script.encode("utf-8")):
        path.write_text(script, encoding="utf-8")


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
    results: StudyResults, study_dir: Path, drawn: list[dict[str, Any]], baseline: dict[str, Any] | None,
    price: float | None,
) -> str:
    spec = results.spec
    objectives = spec.objective_list
    front = results.front()
    verifications = stored(results)
    e = html.escape
    parts: list[str] = [f"<h1>autotune study {e(str(spec.name))}</h1>", _facts(results, study_dir)]
    for note in results.unreported():
        parts.append(f"<p class='note'>{e(note)}</p>")
    headline = _headline(results)
    if headline:
        parts.append(f"<p class='headline'>{e(headline)}</p>")

    parts.append("<h2>Pareto front</h2>")
    parts.append("<p class='muted'>Hover a point for its configuration. The star is the recommended point "
                 "(the front's best on the first objective); the front's other points are the trade-offs "
                 "that met every SLO and that no other trial beat on both objectives.</p>")
    parts.append(_plot_div(pareto_figure(drawn, objectives, spec.constraints, baseline), "pareto-plot"))
    parts.append(f"<img class='fallback' src='{PNG_NAME}' alt='Pareto front'>")
    for axis in pareto_scales(drawn + ([baseline] if baseline else []), objectives):
        if axis.note:
            parts.append(f"<p class='note'>{e(axis.note)}.</p>")

    slo_fig = slo_figure(slo_series(results)) if spec.constraints else None
    if slo_fig is not None:
        parts.append("<h2>SLOs</h2>")
        parts.append("<p class='muted'>Each SLO against every measured trial: the dashed line is its bound, "
                     "a cross a trial that missed it.</p>")
        parts.append(_plot_div(slo_fig, "slo-plot"))

    parts.append("<h2>Recommendations</h2>")
    parts.append(_recommendations(spec, study_dir, front, verifications, price))

    parts.append("<h2>Verification</h2>")
    parts.extend(f"<p><b>{html.escape(line)}</b></p>" for line in verified_lines(verifications, spec.objective_list))
    parts.append(_verification_section(front, verifications))

    parts.append("<h2>Trials without figures</h2>")
    parts.append(_unmeasured(results))

    parts.append("<h2>Diagnosis</h2>")
    diag, problem = diagnoses(front)
    if problem:
        parts.append(f"<p class='muted'>{e(problem)}</p>")
    for t in front:
        if t.number in diag:
            parts.append(f"<h3>trial {t.number}</h3>{_render_diagnosis(diag[t.number])}")

    parts.append("<h2>Parameter importances</h2>")
    note = results.importance_note()
    if note:
        parts.append(f"<p class='note'>{e(note)}.</p>")
    fig, why = importance_figure(results, objectives)
    parts.append(_plot_div(fig, "importance-plot") if fig is not None else f"<p class='muted'>{e(why or '')}</p>")

    parts.append("<h2>Environment</h2>")
    parts.append(_environments(front, verifications))

    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>autotune: {e(str(spec.name))}</title><style>{_CSS}</style>"
        f"<script type='text/javascript' src='{PLOTLY_NAME}'></script></head>\n<body>\n{body}\n"
        "<script>if(!window.Plotly){document.querySelectorAll('.fallback').forEach("
        "function(i){i.style.display='block'})}</script>\n</body></html>\n"
    )


def _facts(results: StudyResults, study_dir: Path) -> str:
    """What was measured, first: the model, the load, the goals and where."""
    spec = results.spec
    counts = results.counts()
    e = html.escape
    outcome = (f"{len(results.trials)} trials: {counts['measured']} measured "
               f"({counts['measured'] - counts['missed_slo']} met every SLO, {counts['missed_slo']} missed an SLO), "
               f"{counts['refused']} refused before launch, {counts['failed_to_start']} failed to start, "
               f"{counts['failed'] - counts['failed_to_start']} failed otherwise; {len(results.front())} recommended")
    rows = [
        ("model", spec.model), ("engine", spec.engine.name), ("workload", workload_text(spec)),
        ("SLO", spec.slo or "none"), ("objectives", spec.objectives), ("measured on", environment_text(results)),
        ("trials", outcome),
        ("written", f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} from {study_dir.resolve()}"),
    ]
    return "<table class='facts'>" + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _headline(results: StudyResults) -> str | None:
    best = results.best()
    line = baseline_line(results)
    if best is None:
        return None
    head = f"Recommended: trial {best.number}"
    return f"{head}. {line[0].upper() + line[1:]}." if line else head + "."


def _unmeasured(results: StudyResults) -> str:
    bad = [t for t in results.trials if t.state in ("fail", "pruned")]
    if not bad:
        return "<p class='muted'>every trial was measured</p>"
    e = html.escape
    rows = "".join(f"<tr><td>{t.number}</td><td class='l'>{e(t.verdict_text)}</td><td class='l'>{e(str(t.reason or ''))}</td></tr>"
                   for t in bad)
    return "<table><tr><th>trial</th><th class='l'>verdict</th><th class='l'>reason</th></tr>" + rows + "</table>"


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
        cmd = serve_command(spec, t, (study_dir / "configs" / f"trial-{t.number}.yaml").resolve())
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
        "<p class='muted'>Each command serves the configuration as it was measured, with the engine's own CLI: "
        "the config file holds every launch option of the trial.</p>"
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
