"""What the user reads in the terminal at the end: the front, the failures, quality, rounds, importances."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from autotune.cost import COST_KEY, cost_figures, format_cost
from autotune.figures import format_figure, label
from autotune.spec import StudySpec
from autotune.tuning import StudyResults, TrialRecord

__all__ = [
    "SHOWN", "failures_table", "importance_table", "pareto_table", "quality_table", "rounds_table", "startup_table",
    "transposed",
    "trial_cost",
]

# Figures shown for every point, beside the objectives.
SHOWN = ["output_throughput", "request_throughput", "p50_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_e2el_ms"]


def trial_cost(trial: TrialRecord, spec: StudySpec, price_per_gpu_hour: float | None = None) -> float | None:
    """Cost per 1K tokens: as stored, or from the stored throughput and a price given now."""
    figures = trial.figures
    price = price_per_gpu_hour if price_per_gpu_hour is not None else spec.hardware.price_per_gpu_hour
    if price_per_gpu_hour is None and figures.get(COST_KEY) is not None:
        return float(figures[COST_KEY])
    device = trial.environment.get("device", "cpu")
    return cost_figures(
        figures, trial.config, gpu_count=spec.hardware.gpu_count, device=device, price_per_gpu_hour=price,
    ).get(COST_KEY)


def _verify_cells(entry: dict[str, Any] | None) -> list[str]:
    """verified, fresh starts, and the 95% interval of throughput, from the stored verification."""
    if not entry:
        return ["-", "-", "-"]
    starts = entry.get("starts", [])
    ok = sum(1 for s in starts if s.get("status") == "ok")
    verdict = "yes" if entry.get("verified") else "no"
    tps = (entry.get("summary") or {}).get("output_throughput")
    ci = "-"
    if tps and tps.get("ci95") and None not in tps["ci95"]:
        ci = f"{tps['ci95'][0]:,.0f}..{tps['ci95'][1]:,.0f}"
    return [verdict, f"{ok}/{len(starts)}", ci]


def pareto_table(results: StudyResults, price_per_gpu_hour: float | None = None) -> Table:
    spec = results.spec
    objectives = spec.objective_list
    front = results.front()
    verified = results.verifications()
    counts = results.counts()
    title = (
        f"Pareto front of {results.name}: {len(front)} point(s) from {counts['measured']} measured "
        f"({counts['missed_slo']} missed an SLO), {counts['failed']} failed "
        f"({counts['failed_to_start']} to start), {counts['refused']} refused before launch"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    knobs = results.searched_knobs()
    for k in knobs:
        table.add_column(k, justify="right")
    for o in objectives:
        if o.metric not in SHOWN:
            table.add_column(o.metric, justify="right")
    for key in SHOWN:
        table.add_column(label(key), justify="right")
    table.add_column("$/1K tok", justify="right")
    table.add_column("SLO", justify="center")
    table.add_column("verified", justify="center")
    table.add_column("starts", justify="right")
    table.add_column("out tok/s 95% CI", justify="right")
    base = results.baseline()
    ratio_of = _ratio_key(objectives[0].metric)
    base_value = (base.figures.get(ratio_of) if base is not None and base.measured else None)
    if base is not None:
        table.add_column(f"{label(ratio_of)} x defaults", justify="right")
    rows = ([base] if base is not None else []) + front
    for t in rows:
        figures = t.figures
        config = t.config
        name = "defaults" if t is base else str(t.number)
        row = [name] + [fmt_value(config.get(k)) if t is not base else "-" for k in knobs]
        values = list(t.values or ()) + [None] * len(objectives)
        row += [f"{v:,.3g}" if v is not None else "-" for o, v in zip(objectives, values) if o.metric not in SHOWN]
        row += [format_figure(key, figures.get(key)) for key in SHOWN]
        row.append(format_cost(trial_cost(t, spec, price_per_gpu_hour)))
        slo = t.slo
        row.append(("met" if all(s["holds"] for s in slo.values()) else "missed") if slo else "-")
        row += _verify_cells(verified.get(t.number))  # the defaults' too (trial -1), when verified
        if base is not None:
            row.append(_ratio(figures.get(ratio_of), base_value))
        table.add_row(*row, end_section=t is base)
    if not front:
        table.caption = "no trial met every SLO" if spec.slo else "no trial completed"
    return table


def _ratio_key(metric: str) -> str:
    """The figure a trial is set against the defaults on: goodput or throughput, whatever the first objective."""
    return metric if metric in ("goodput", "output_throughput", "request_throughput", "total_token_throughput") \
        else "output_throughput"


def _ratio(value: object, base: object) -> str:
    if isinstance(value, (int, float)) and isinstance(base, (int, float)) and base > 0:
        return f"{value / base:.2f}x"
    return "-"


def transposed(table: Table) -> Table:
    """The same cells with one column per row: a front of a few points stays readable
    on a terminal too narrow for a column per knob and figure."""
    out = Table(title=table.title, title_justify="left", caption=table.caption)
    columns = table.columns
    first = [str(c) for c in columns[0].cells]
    out.add_column(str(columns[0].header))
    for heading in first:
        out.add_column(heading, justify="right")
    for column in columns[1:]:
        out.add_row(str(column.header), *(str(c) for c in column.cells))
    return out


def failures_table(results: StudyResults) -> Table | None:
    """Trials refused before launch, failed to start or failed while measuring, each with its reason."""
    bad = [t for t in results.trials if t.state in ("fail", "pruned")]
    if not bad:
        return None
    table = Table(title="Trials without figures", title_justify="left")
    table.add_column("trial", justify="right")
    table.add_column("verdict")
    table.add_column("reason", overflow="fold")
    machine = results.machine_failures()
    for t in bad:
        verdict = f"{t.verdict_text} (the machine: not charged)" if t.number in machine else t.verdict_text
        table.add_row(str(t.number), verdict, str(t.reason or ""))
    return table


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def rounds_table(results: StudyResults) -> Table | None:
    """What changed in the search space between rounds, and why (see autotune.tuning.rounds)."""
    log = results.round_decisions()
    if not log:
        return None
    table = Table(title="Round decisions", title_justify="left")
    table.add_column("round", justify="right")
    table.add_column("decision")
    table.add_column("knob")
    table.add_column("reason", overflow="fold")
    for d in log:
        table.add_row(str(d["round"]), d["decision"], d.get("knob") or "-", d["reason"])
    return table


def importance_table(results: StudyResults) -> Table | None:
    """Each knob's importance over every measured trial, beside the figures each round used."""
    now = results.importances
    rounds = results.round_importances()
    if not now and not rounds:
        return None
    n = len(results.measured())
    hint = ": a hint, see below" if results.importance_note() else ""
    table = Table(title=f"Parameter importances (fANOVA, first objective{hint})", title_justify="left")
    table.add_column("knob")
    table.add_column(f"all {n} trials", justify="right")
    for r in rounds:
        table.add_column(f"round {r['round']} ({r['trials']} trials)", justify="right")
    knobs = sorted(set(now) | {k for r in rounds for k in r["importances"]}, key=lambda k: -now.get(k, 0.0))
    for knob in knobs:
        cells = [f"{now[knob]:.3f}" if knob in now else "-"]
        cells += [f"{r['importances'][knob]:.3f}" if knob in r["importances"] else "frozen" for r in rounds]
        table.add_row(knob, *cells)
    return table


def quality_table(results: StudyResults) -> Table | None:
    """Each measured trial's quality setting, perplexity, change against the baseline and
    pass-key accuracy per length, with whether the quality bounds held. Trials that
    broke a bound are listed too: they are off the front, and this says why."""
    rows = [t for t in results.measured() if t.quality]
    if not rows:
        return None
    lengths = sorted({
        int(k.removeprefix("passkey_acc_")) for t in rows for k in t.figures if k.startswith("passkey_acc_")
    })
    table = Table(title="Quality (perplexity on the held-out corpus, pass-key retrieval)", title_justify="left")
    for name in ("trial", "setting", "ppl", "vs baseline"):
        table.add_column(name, justify="right" if name != "setting" else "left")
    for length in lengths:
        table.add_column(f"passkey@{length}", justify="right")
    for name in ("source", "measured", "quality SLO"):
        table.add_column(name, justify="center")
    for t in rows:
        q = t.quality or {}
        figures = t.figures
        setting = ", ".join(f"{k}={fmt_value(v)}" for k, v in (q.get("setting") or {}).items()) or "-"
        ppl, rel = figures.get("ppl"), figures.get("ppl_rel_change")
        cells = [
            str(t.number), setting,
            f"{ppl:.3f}" if isinstance(ppl, (int, float)) else "-",
            f"{rel:+.2%}" if isinstance(rel, (int, float)) else "-",
        ]
        for length in lengths:
            acc = figures.get(f"passkey_acc_{length}")
            cells.append(f"{acc:.2f}" if isinstance(acc, (int, float)) else "-")
        source = (q.get("perplexity") or {}).get("source", "-")
        measured = "here" if q.get("measured_here") else f"trial {q.get('measured_in_trial')}"
        slo = {k: v for k, v in t.slo.items() if k.startswith(("ppl", "passkey"))}
        verdict = "-" if not slo else ("met" if all(v["holds"] for v in slo.values()) else "missed")
        table.add_row(*cells, source, measured, verdict)
    return table


def startup_table(results: StudyResults) -> Table | None:
    """Each engine start, phase by phase as its own log tells, with the compile cache's hit or miss."""
    rows = [(name, t) for name, t in ([("defaults", results.baseline())] + [(str(t.number), t) for t in results.trials])
            if t is not None and t.get("startup")]
    if not rows:
        return None
    phases = list(dict.fromkeys(p for _, t in rows for p, v in (t.get("startup").get("phases_s") or {}).items() if v))
    table = Table(title="Engine starts (seconds, from the engine's own log)", title_justify="left")
    for name in ("trial", "start s", *[p.replace("_", " ") for p in phases], "compile cache"):
        table.add_column(name, justify="right" if name not in ("trial", "compile cache") else "left")
    for name, t in rows:
        bill = t.get("startup")
        total = bill.get("total_s") if bill.get("total_s") is not None else t.get("startup_s")
        cells = [fmt_value(round(total, 1)) if isinstance(total, (int, float)) else "-"]
        cells += [f"{(bill.get('phases_s') or {}).get(p, 0):,.1f}" for p in phases]
        hit = bill.get("compile_cache_hit")
        cells.append({True: "hit", False: "miss"}.get(hit, "-") if hit is not None else "-")
        table.add_row(name, *cells)
    return table
