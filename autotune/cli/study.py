"""``optimize`` and ``worker``: running a study, alone or as one node of many."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from autotune.cli import _options as opt
from autotune.cli._app import app, console, err_console, interrupted
from autotune.cli._options import with_flags
from autotune.cli._results import print_results, write_html_report
from autotune.cli.progress import RichReporter
from autotune.folders import check_folder
from autotune.load.stats import generator_verdict
from autotune.telemetry import slowdown_note
from autotune.spec import flag_overrides, load_spec, redact_url
from autotune.tuning import StudyResults, budget_state, run_study, worker_spec


@app.command()
@with_flags
def optimize(
    trials: Optional[int] = typer.Option(None, "--trials", "-n", help="trials to launch, resumed ones counted (default 8)"),
    spec_file: Optional[Path] = opt.SPEC,
    engine: Optional[str] = typer.Option(None, "--engine", help="engine adapter (default vllm)"),
    name: Optional[str] = typer.Option(None, "--name", help="study name (default: <model>-<engine>)"),
    study_dir: Optional[Path] = typer.Option(None, "--study-dir", help="where the study lives"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL (default: SQLite in the study folder)"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe, gp, nsga2 or random"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs the engine may use"),
    price: Optional[float] = opt.PRICE,
    wall_time: Optional[float] = typer.Option(
        None, "--wall-time", help="start no trial that the slowest so far says would end after this many seconds"),
    gpu_minutes: Optional[float] = typer.Option(
        None, "--gpu-minutes", help="the study's GPU time over all its runs, starts included: no trial starts that "
        "could take it past this"),
    repeats: Optional[int] = typer.Option(None, "--repeats", "-r", min=1, help="measurements of each trial (mean, std, CI)"),
    baseline: Optional[bool] = typer.Option(
        None, "--baseline/--no-baseline", help="measure the engine's own defaults first, the reference of every ratio [default: on]"),
    dry: bool = typer.Option(False, "--dry-run", help="show the search space, sampled configurations with their verdicts "
                             "and the exact launch commands; start nothing"),
    *,
    flags: dict[str, Any],
) -> None:
    """Run (or resume) a tuning study and print the Pareto front."""
    t0 = time.monotonic()
    spec = load_spec(spec_file, flag_overrides(
        **flags, trials=trials, engine=engine, name=name, study_dir=study_dir, storage=storage, sampler=sampler,
        seed=seed, gpus=gpus, price=price, wall_time=wall_time, gpu_minutes=gpu_minutes, repeats=repeats,
        baseline=baseline,
    ))
    assert spec.study_dir is not None
    if dry:
        from autotune.cli._dry_run import dry_run

        dry_run(spec)
        return
    check_folder(spec.study_dir, "study folder")
    console.print(
        f"study [bold]{spec.name}[/] in {spec.study_dir}: model {spec.model}, engine {spec.engine.name}, "
        f"objectives {spec.objectives}" + (f", SLO {spec.slo}" if spec.slo else "")
    )
    with RichReporter(console) as reporter:
        try:
            run = run_study(spec, reporter)
        except KeyboardInterrupt:
            reporter.progress.stop()
            raise interrupted("interrupted: finished trials are kept; run the same command to resume")
    results = StudyResults(run.study, spec)
    print_results(results, spec.study_dir)
    write_html_report(results, spec.study_dir, None)
    warn_generator([(f"trial {t.number}", t.figures) for t in results.trials])
    warn_slowdown([(f"trial {t.number}", t.telemetry) for t in results.trials])
    console.print(f"wall time: {time.monotonic() - t0:,.0f} s")


@app.command()
def worker(
    storage: str = typer.Option(..., "--storage", envvar="AUTOTUNE_STORAGE", help="e.g. postgresql://user@db-host/autotune"),
    study: str = typer.Option(..., "--study", help="the study's name"),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU indices this worker's engine uses, e.g. 0,1"),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="create the study from this spec if it does not exist"),
    study_dir: Optional[Path] = typer.Option(None, "--study-dir", help="this node's folder for logs (default autotune-runs/<study>)"),
    api_key_env: Optional[str] = opt.API_KEY_ENV,
) -> None:
    """Pull trials of a shared study until its budget is spent (run one per node)."""
    spec = worker_spec(storage, study, spec_file=spec_file, study_dir=study_dir, gpus=gpus, api_key_env=api_key_env)
    console.print(
        f"worker on study [bold]{spec.name}[/] in {redact_url(storage)}, logs in {spec.study_dir}"
        + (f", GPUs {gpus}" if gpus else "")
    )
    with RichReporter(console) as reporter:
        try:
            run = run_study(spec, reporter, distributed=True)
        except KeyboardInterrupt:
            reporter.progress.stop()
            raise interrupted("interrupted: this worker's trial is marked interrupted; the others go on")
    state = budget_state(run.study)
    console.print(f"study {spec.name}: {state.done} of {spec.budget.trials} trials done, {state.running} running")


def warn_slowdown(runs: list[tuple[str, dict]]) -> None:
    """Names the runs measured while the GPU throttled itself."""
    for label, telemetry in runs:
        note = slowdown_note(telemetry)
        if note is not None:
            err_console.print(f"warning: {label}: {note}", highlight=False, soft_wrap=True)


def warn_generator(runs: list[tuple[str, dict]]) -> None:
    """Names the runs whose load generator could not offer the requested load, and why."""
    for label, figures in runs:
        verdict = generator_verdict(figures)
        if verdict is not None and verdict[0] == "warn":
            err_console.print(f"warning: {label}: {verdict[1]}", highlight=False, soft_wrap=True)
