"""``review``, ``verify``, ``report``, ``dashboard`` and ``locate``: what a study found, what it is worth, and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from autotune.cli import _options as opt
from autotune.cli._app import app, console, err_console
from autotune.cli._results import print_results, write_html_report
from autotune.errors import UserError
from autotune.figures import startup_text
from autotune.tuning import StudyResults


@app.command()
def review(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    price: Optional[float] = opt.PRICE,
) -> None:
    """Print a study's Pareto front (with verification and cost) and write its recommended configs."""
    from autotune.report import importance_table, rounds_table

    results = StudyResults.load(study_dir)
    print_results(results, study_dir, price)
    for table in (rounds_table(results), importance_table(results)):
        if table is not None:
            console.print(table)


@app.command()
def verify(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="verify the best K trials instead of the Pareto front"),
    trials: list[int] = typer.Option([], "--trial", help="verify this trial (repeatable)"),
    repeats: int = typer.Option(10, "--repeats", "-r", min=1, help="fresh server starts per configuration"),
    price: Optional[float] = opt.PRICE,
    fresh: bool = typer.Option(False, "--fresh", help="discard the starts stored by an earlier verify"),
) -> None:
    """Re-run the recommended configs with fresh server starts; verified only if the SLO holds at 95%."""
    from autotune.cli.progress import RichVerifyReporter
    from autotune.report import verdict_lines, verify_table
    from autotune.trial import setup_from_spec
    from autotune.verify import candidates, verify_study

    results = StudyResults.load(study_dir)
    spec = results.spec
    chosen, notes = candidates(results, top=top, trials=list(trials) or None)
    for note in notes:
        err_console.print(f"note: {note}", highlight=False)
    if not chosen:
        raise UserError(f"nothing to verify in {study_dir}: no measured trial that met the SLO and carries its environment")
    setup = setup_from_spec(spec)
    console.print(
        f"verifying {', '.join(f'trial {t.number}' for t in chosen)} of {spec.name}: {repeats} fresh start(s) each"
        + (f", SLO {spec.slo}" if spec.slo else ", no SLO")
    )
    with RichVerifyReporter(console) as reporter:
        try:
            verified = verify_study(
                results, setup, study_dir, chosen, repeats=repeats, price_per_gpu_hour=price, fresh=fresh,
                reporter=reporter,
            )
        except KeyboardInterrupt:
            reporter.progress.stop()
            err_console.print("interrupted: the starts measured so far are kept in the study; run the same command to go on")
            raise typer.Exit(130)
    console.print(verify_table(verified))
    for r in verified:
        for line in verdict_lines(r):
            console.print(line, highlight=False, soft_wrap=True)
    write_html_report(StudyResults.load(study_dir), study_dir, price)


@app.command("report")
def report_cmd(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    price: Optional[float] = opt.PRICE,
) -> None:
    """Write report.html (self-contained) and pareto.png into the study folder."""
    write_html_report(StudyResults.load(study_dir), study_dir, price)


@app.command()
def dashboard(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    port: int = typer.Option(8080, "--port", min=1, max=65535),
) -> None:
    """Serve optuna-dashboard on the study's storage, on 127.0.0.1 only; Ctrl-C stops it."""
    from autotune.tuning.dashboard import serve_dashboard

    spec = StudyResults.load(study_dir).spec
    url = spec.storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    serve_dashboard(url, port, on_ready=lambda: console.print(
        f"optuna-dashboard for {spec.name} on http://127.0.0.1:{port}/ (Ctrl-C stops it)", highlight=False))
    console.print("dashboard stopped")


@app.command()
def locate(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    trial: Optional[int] = typer.Argument(None, help="one trial (default: every measured trial)"),
    as_json: bool = typer.Option(False, "--json", help="print the diagnosis as JSON"),
) -> None:
    """Name each trial's bottleneck with its evidence and what to change; the study's parameter importances."""
    from autotune.locate import locate_study

    result = locate_study(study_dir, trial)
    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return
    _print_locate(result)


def _print_locate(result: Any) -> None:
    from rich.table import Table

    if not result.trials:
        console.print(f"study {result.study}: no measured trial to diagnose yet")
    for td in result.trials:
        knobs = " ".join(f"{k}={v}" for k, v in sorted(td.config.items()))
        console.print(f"[bold]trial {td.trial}[/] {knobs}", highlight=False)
        if startup_text(td.startup):
            console.print(f"  {startup_text(td.startup)}", highlight=False)
        if not td.diagnoses:
            console.print("  no diagnosis: the signals it needs were not recorded")
        for d in td.diagnoses:
            console.print(f"  [bold]{d.title}[/] ({d.bottleneck}, confidence {d.confidence:.1f})", highlight=False)
            for e in d.evidence:
                console.print(f"    - {e.text}", highlight=False)
            for a in d.advice:
                what = f"{a.knob}: {a.direction}" if a.knob else "next"
                console.print(f"    -> {what}: {a.text}", highlight=False)
        for m in td.missing:
            console.print(f"  (missing: {m})", highlight=False)
    for imp in result.importances:
        table = Table(title=f"parameter importance for {imp.objective} ({imp.evaluator})", title_justify="left")
        table.add_column("knob")
        table.add_column("importance", justify="right")
        for knob, value in imp.importances.items():
            table.add_row(knob, f"{value:.3f}")
        console.print(table)
    for note in result.notes:
        console.print(f"importance: {note}", highlight=False)
