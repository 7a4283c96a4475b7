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
    """Feasible, non-dominated trials, best first by the first objective."""
    front = [t for t in study.best_trials if t.user_attrs.get("feasible", True)]
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
    """The engine's own CLI with the config file; environment knobs go in front."""
    env: dict[str, str] = trial.user_attrs.get("env", {})
    prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(env.items()))
    model = trial.user_attrs.get("model_source", spec.model)
    cmd = f"{spec.engine.name} serve {shlex.quote(model)} --config {shlex.quote(str(config_path))}"
    return f"{prefix} {cmd}".strip()


def pareto_table(study: optuna.Study, spec: StudySpec) -> Table:
    objectives = parse_objectives(spec.objectives)
    front = pareto_front(study)
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)}
    title = (
        f"Pareto front of {spec.name}: {len(front)} point(s) from {counts[TrialState.COMPLETE]} measured, "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.PRUNED]} infeasible"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    knobs = sorted({k for t in front for k in t.params})
    for k in knobs:
        table.add_column(k, justify="right")
    shown_keys = {key for key, _, _ in SHOWN}
    for o in objectives:
        if o.metric not in shown_keys:
            table.add_column(o.metric, justify="right")
    for _, label, _ in SHOWN:
        table.add_column(label, justify="right")
    table.add_column("SLO", justify="center")
    for t in front:
        figures = t.user_attrs.get("figures", {})
        row = [str(t.number)] + [_fmt_param(t.params.get(k)) for k in knobs]
        for o, v in zip(objectives, t.values):
            if o.metric not in shown_keys:
                row.append(f"{v:,.3g}")
        for key, _, fmt in SHOWN:
            value = figures.get(key)
            row.append(fmt.format(value) if isinstance(value, (int, float)) else "-")
        slo = t.user_attrs.get("slo", {})
        row.append("met" if all(s["holds"] for s in slo.values()) else "missed") if slo else row.append("-")
        table.add_row(*row)
    if not front:
        table.caption = "no trial met every SLO" if spec.slo else "no trial completed"
    return table


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
