"""What the user reads at the end: the Pareto front as a table, and a ready-to-run
config for each point on it.

Only feasible trials (every SLO held) are recommended. Each gets
``configs/trial-<n>.yaml``, which the engine reads directly
(``vllm serve MODEL --config configs/trial-<n>.yaml``), and the full command.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from autotune.cost import COST_KEY, cost_figures, format_cost
from autotune.environment import missing
from autotune.slo import parse_objectives
from autotune.spec import StudySpec

# Figures shown for every point, beside the objectives (vllm bench serve names).
SHOWN = [
    ("output_throughput", "out tok/s", "{:,.0f}"),
    ("request_throughput", "req/s", "{:.2f}"),
    ("p50_ttft_ms", "p50 TTFT ms", "{:,.0f}"),
    ("p99_ttft_ms", "p99 TTFT ms", "{:,.0f}"),
    ("mean_tpot_ms", "TPOT ms", "{:.1f}"),
    ("p99_e2el_ms", "p99 E2E ms", "{:,.0f}"),
]


@dataclass
class Recommendation:
    trial: FrozenTrial
    config_path: Path
    command: str


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible, non-dominated trials, best first by the first objective.

    A trial whose result has no environment record is left out: a figure
    that cannot say where it was measured is not a recommendation.
    """
    front = [
        t for t in study.best_trials
        if t.user_attrs.get("feasible", True) and not missing(t.user_attrs.get("environment"))
    ]
    first = study.directions[0]
    return sorted(front, key=lambda t: t.values[0], reverse=first == optuna.study.StudyDirection.MAXIMIZE)


def write_configs(study: optuna.Study, spec: StudySpec, study_dir: Path) -> list[Recommendation]:
    out_dir = study_dir / "configs"
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = []
    for trial in pareto_front(study):
        path = out_dir / f"trial-{trial.number}.yaml"
        config_file: dict[str, Any] = trial.user_attrs.get("config_file", {})
        path.write_text(
            f"# autotune study {spec.name}, trial {trial.number}\n"
            + yaml.safe_dump(config_file, sort_keys=True)
        )
        recs.append(Recommendation(trial, path, serve_command(spec, trial, path)))
    return recs


def serve_command(spec: StudySpec, trial: FrozenTrial, config_path: Path) -> str:
    """The engine's own CLI with the config file; environment knobs go in front.

    Only ``vllm serve`` reads a ``--config`` file; for any other engine the
    exact command line the trial launched is the ready-to-run answer.
    """
    if spec.engine.name != "vllm":
        return str(trial.user_attrs.get("command") or "(no command: this engine is not started by autotune)")
    env: dict[str, str] = trial.user_attrs.get("env", {})
    prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(env.items()))
    model = trial.user_attrs.get("model_source", spec.model)
    cmd = f"{spec.engine.name} serve {shlex.quote(model)} --config {shlex.quote(str(config_path))}"
    return f"{prefix} {cmd}".strip()


# --- results without an environment, cost and verification columns (begin) ---
def unreported(study: optuna.Study) -> list[str]:
    """Notes on measured trials left out of every report for want of an environment record."""
    notes = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        lacking = missing(t.user_attrs.get("environment"))
        if lacking:
            notes.append(f"trial {t.number} is not reported: its result has no environment record ({', '.join(lacking)})")
    return notes


def trial_cost(trial: FrozenTrial, spec: StudySpec, price_per_gpu_hour: float | None = None) -> float | None:
    """Cost per 1K tokens: as stored, or from the stored throughput and a price given now."""
    figures = trial.user_attrs.get("figures", {})
    price = price_per_gpu_hour if price_per_gpu_hour is not None else spec.hardware.price_per_gpu_hour
    if price_per_gpu_hour is None and figures.get(COST_KEY) is not None:
        return float(figures[COST_KEY])
    device = (trial.user_attrs.get("environment") or {}).get("device", "cpu")
    return cost_figures(
        figures, trial.user_attrs.get("config", {}), gpu_count=spec.hardware.gpu_count, device=device,
        price_per_gpu_hour=price,
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
# --- (end) ---


def pareto_table(study: optuna.Study, spec: StudySpec, price_per_gpu_hour: float | None = None) -> Table:
    objectives = parse_objectives(spec.objectives)
    front = pareto_front(study)
    verified = {k: v for k, v in study.user_attrs.items() if k.startswith("verify:")}
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)}
    # A measured trial that broke an SLO (a latency or a quality bound) is COMPLETE
    # in Optuna's terms but infeasible in ours; one refused before launch is PRUNED.
    missed = sum(t.state == TrialState.COMPLETE and not t.user_attrs.get("feasible", True) for t in trials)
    title = (
        f"Pareto front of {spec.name}: {len(front)} point(s) from {counts[TrialState.COMPLETE]} measured "
        f"({missed} broke an SLO), {counts[TrialState.FAIL]} failed, "
        f"{counts[TrialState.PRUNED]} refused before launch"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    # Every knob any trial searched: one the rounds froze later is no longer a
    # param of the later trials, but it ran at a value all the same (``config``).
    knobs = sorted({k for t in trials for k in t.params})
    for k in knobs:
        table.add_column(k, justify="right")
    shown_keys = {key for key, _, _ in SHOWN}
    for o in objectives:
        if o.metric not in shown_keys:
            table.add_column(o.metric, justify="right")
    for _, label, _ in SHOWN:
        table.add_column(label, justify="right")
    table.add_column("$/1K tok", justify="right")
    table.add_column("SLO", justify="center")
    table.add_column("verified", justify="center")
    table.add_column("starts", justify="right")
    table.add_column("out tok/s 95% CI", justify="right")
    for t in front:
        figures = t.user_attrs.get("figures", {})
        config = {**t.params, **t.user_attrs.get("config", {})}
        row = [str(t.number)] + [_fmt_param(config.get(k)) for k in knobs]
        for o, v in zip(objectives, t.values):
            if o.metric not in shown_keys:
                row.append(f"{v:,.3g}")
        for key, _, fmt in SHOWN:
            value = figures.get(key)
            row.append(fmt.format(value) if isinstance(value, (int, float)) else "-")
        row.append(format_cost(trial_cost(t, spec, price_per_gpu_hour)))
        slo = t.user_attrs.get("slo", {})
        row.append("met" if all(s["holds"] for s in slo.values()) else "missed") if slo else row.append("-")
        row += _verify_cells(verified.get(f"verify:{t.number}"))
        table.add_row(*row)
    if not front:
        table.caption = "no trial met every SLO" if spec.slo else "no trial completed"
    return table


def transposed(table: Table) -> Table:
    """The same cells with one column per row: a front of a few points stays readable
    on a terminal too narrow for a column per knob and figure."""
    out = Table(title=table.title, title_justify="left", caption=table.caption)
    columns = table.columns
    first = [str(c) for c in columns[0].cells]
    out.add_column(str(columns[0].header))
    for label in first:
        out.add_column(label, justify="right")
    for column in columns[1:]:
        out.add_row(str(column.header), *(str(c) for c in column.cells))
    return out


def failures_table(study: optuna.Study) -> Table | None:
    bad = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.FAIL, TrialState.PRUNED)]
    if not bad:
        return None
    table = Table(title="Failed and infeasible trials", title_justify="left")
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column("reason", overflow="fold")
    for t in bad:
        state = "infeasible" if t.state == TrialState.PRUNED else t.user_attrs.get("status", "failed")
        table.add_row(str(t.number), state, str(t.user_attrs.get("reason", "")))
    return table


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


# --- rounds: decisions and importances (begin) ---
def rounds_table(study: optuna.Study) -> Table | None:
    """What changed in the search space between rounds, and why (see autotune.rounds)."""
    from autotune.rounds import decisions_of

    log = decisions_of(study)
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


def importance_table(study: optuna.Study) -> Table | None:
    """fANOVA importance of each knob over every completed trial, beside the figures each round used."""
    from autotune.rounds import importances_of, param_importances

    now = param_importances(study)
    rounds = importances_of(study)
    if not now and not rounds:
        return None
    n = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    table = Table(title="Parameter importances (fANOVA, first objective)", title_justify="left")
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
# --- rounds (end) ---


# --- quality: perplexity and pass-key accuracy of every measured trial (begin) ---
def quality_table(study: optuna.Study) -> Table | None:
    """Each measured trial's quality setting, perplexity, change against the baseline and
    pass-key accuracy per length, with whether the quality bounds held. Trials that
    broke a bound are listed too: they are off the front, and this says why."""
    rows = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("quality")
    ]
    if not rows:
        return None
    lengths = sorted({
        int(k.removeprefix("passkey_acc_")) for t in rows for k in (t.user_attrs.get("figures") or {})
        if k.startswith("passkey_acc_")
    })
    table = Table(title="Quality (perplexity on the held-out corpus, pass-key retrieval)", title_justify="left")
    for name in ("trial", "setting", "ppl", "vs baseline"):
        table.add_column(name, justify="right" if name != "setting" else "left")
    for length in lengths:
        table.add_column(f"passkey@{length}", justify="right")
    for name in ("source", "measured", "quality SLO"):
        table.add_column(name, justify="center")
    for t in rows:
        q = t.user_attrs["quality"]
        figures = t.user_attrs.get("figures") or {}
        setting = ", ".join(f"{k}={_fmt_param(v)}" for k, v in (q.get("setting") or {}).items()) or "-"
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
        slo = {k: v for k, v in (t.user_attrs.get("slo") or {}).items() if k.startswith(("ppl", "passkey"))}
        verdict = "-" if not slo else ("met" if all(v["holds"] for v in slo.values()) else "missed")
        table.add_row(*cells, source, measured, verdict)
    return table
# --- quality (end) ---
