"""``review``, ``verify``, ``report``, ``dashboard`` and ``locate``: what a study found, what it is worth, and why.

Each opens a study the same way (a folder, or ``--storage URL --study NAME``)
and each that prints a table can print JSON instead (``--json``), whose
layout does not depend on the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from autotune.cli import _options as opt
from autotune.cli._app import app, console, err_console, interrupted
from autotune.cli._results import print_fitted, print_results, write_html_report
from autotune.errors import UserError
from autotune.figures import startup_text, trial_name


@app.command()
def review(
    study_dir: Optional[Path] = opt.STUDY_DIR,
    storage: Optional[str] = opt.STORAGE,
    study: Optional[str] = opt.STUDY,
    price: Optional[float] = opt.PRICE,
    as_json: bool = opt.JSON,
) -> None:
    """Print a study's Pareto front, its baseline and verification, and write each recommended config."""
    from autotune.report import importance_table, rounds_table, startup_table, write_configs

    results, folder = opt.open_results(study_dir, storage, study)
    if as_json:
        data = results.to_json(price)
        commands = {rec.trial.number: (str(rec.config_path), rec.command) for rec in write_configs(results, folder)}
        for point in data["front"]:
            point["config_path"], point["serve_command"] = commands.get(point["number"], (None, None))
        print(json.dumps(data, indent=2, default=str))
        return
    print_results(results, folder, price)
    starts = startup_table(results)
    if starts is not None:
        print_fitted(starts)
    for table in (rounds_table(results), importance_table(results)):
        if table is not None:
            console.print(table)

    note = results.importance_note()
    if note and results.importances:
        console.print(f"importance: {note}", highlight=False, soft_wrap=True)


@app.command()
def verify(
    study_dir: Optional[Path] = opt.STUDY_DIR,
    storage: Optional[str] = opt.STORAGE,
    study: Optional[str] = opt.STUDY,
    top: Optional[int] = typer.Option(None, "--top", min=1, help="verify the best K trials instead of the Pareto front"),
    trials: list[int] = typer.Option([], "--trial", help="verify this trial (repeatable)"),
    starts: int = typer.Option(10, "--starts", "-s", min=1, help="fresh server starts per configuration"),
    repeats: Optional[int] = typer.Option(None, "--repeats", "-r", hidden=True),
    price: Optional[float] = opt.PRICE,
    fresh: bool = typer.Option(False, "--fresh", help="discard the starts stored by an earlier verify"),
    defaults: bool = typer.Option(False, "--defaults", help="verify the engine's defaults too, the reference of the ratio"),
    wall_time: Optional[float] = typer.Option(
        None, "--wall-time", min=0,
        help="begin no fresh start that the slowest so far says would end after this many seconds; "
             "the same command goes on from the starts measured"),
    as_json: bool = opt.JSON,
) -> None:
    """Re-run the recommended configs on fresh server starts; verified only if the SLO holds at 95%."""
    from autotune.cli.progress import RichVerifyReporter
    from autotune.report import verdict_lines, verify_table, versus_line
    from autotune.trial import setup_from_spec
    from autotune.verify import candidates, verify_study
    from autotune.versus import versus_defaults

    if repeats is not None:
        # --repeats is a measurement on one server start everywhere else; a fresh start is --starts.
        raise UserError(f"verify counts fresh server starts: use --starts {repeats} (--repeats measures one start)")
    results, folder = opt.open_results(study_dir, storage, study)
    spec = results.spec
    chosen, notes = candidates(results, top=top, trials=list(trials) or None, defaults=defaults)
    for note in notes:
        err_console.print(f"note: {note}", highlight=False)
    if not chosen:
        raise UserError(f"nothing to verify in {results.name}: no measured trial that met the SLO and carries its environment")
    setup = setup_from_spec(spec)
    out = err_console if as_json else console
    out.print(
        f"verifying {', '.join(trial_name(t.number) for t in chosen)} of "
        f"{spec.name}: {starts} fresh start(s) each"
        + (f", SLO {spec.slo}" if spec.slo else ", no SLO"), highlight=False,
    )
    with RichVerifyReporter(out) as reporter:
        try:
            verified = verify_study(
                results, setup, folder, chosen, repeats=starts, price_per_gpu_hour=price, fresh=fresh,
                reporter=reporter, wall_time_s=wall_time,
            )
        except KeyboardInterrupt:
            reporter.progress.stop()
            raise interrupted("interrupted: the starts measured so far are kept in the study; run the same command to go on")
    missing = sum(max(0, v.repeats_wanted - len(v.starts)) for v in verified)
    if missing:
        err_console.print(f"note: wall time reached with {missing} start(s) still to measure; "
                          "run the same command to go on", highlight=False)
    versus = versus_defaults(verified, spec.objective_list[0]) if spec.objective_list else []
    if as_json:
        print(json.dumps({"study": results.name, "slo": results.slo_texts(),
                          "verifications": [{"verified": v.verified, **v.to_json()} for v in verified],
                          "versus_defaults": [v.to_json() for v in versus]},
                         indent=2, default=str))
        write_html_report(results.reload(), folder, price, quiet=True)
        return
    console.print(verify_table(verified))
    for r in verified:
        for line in verdict_lines(r):
            console.print(line, highlight=False, soft_wrap=True)
    for v in versus:
        console.print(versus_line(v), highlight=False, soft_wrap=True)
    write_html_report(results.reload(), folder, price)


@app.command("report")
def report_cmd(
    study_dir: Optional[Path] = opt.STUDY_DIR,
    storage: Optional[str] = opt.STORAGE,
    study: Optional[str] = opt.STUDY,
    price: Optional[float] = opt.PRICE,
) -> None:
    """Write report.html and pareto.png into the study folder (plotly.min.js beside them, shared by reports)."""
    results, folder = opt.open_results(study_dir, storage, study)
    write_html_report(results, folder, price)


@app.command()
def dashboard(
    study_dir: Optional[Path] = opt.STUDY_DIR,
    storage: Optional[str] = opt.STORAGE,
    study: Optional[str] = opt.STUDY,
    port: int = typer.Option(8080, "--port", min=1, max=65535),
) -> None:
    """Serve optuna-dashboard on the study's storage, on 127.0.0.1 only; Ctrl-C stops it."""
    from autotune.spec import redact_url
    from autotune.tuning.dashboard import serve_dashboard

    results, folder = opt.open_results(study_dir, storage, study)
    db = study_dir if study_dir is not None and study_dir.is_file() else folder / "study.db"
    url = storage or f"sqlite:///{db.resolve()}"
    serve_dashboard(url, port, on_ready=lambda: console.print(
        f"optuna-dashboard for {results.name} ({redact_url(url)}) on http://127.0.0.1:{port}/ (Ctrl-C stops it)",
        highlight=False, soft_wrap=True))
    console.print("dashboard stopped")


@app.command()
def locate(
    study_dir: Optional[Path] = opt.STUDY_DIR,
    trial: Optional[int] = typer.Argument(None, metavar="[TRIAL]", help="one trial (default: every measured trial)"),
    trial_flag: Optional[int] = typer.Option(None, "--trial", help="one trial, named as a flag"),
    storage: Optional[str] = opt.STORAGE,
    study: Optional[str] = opt.STUDY,
    as_json: bool = opt.JSON,
) -> None:
    """Name each trial's bottleneck with its evidence and what to change; the study's parameter importances."""
    from autotune.locate import locate_study

    trial = trial if trial is not None else trial_flag
    if storage is not None and study_dir is not None and trial is None and study_dir.name.isdigit():
        trial, study_dir = int(study_dir.name), None  # `locate --storage URL --study NAME 3`
    result = locate_study(study_dir if storage is None else None, trial, storage=storage, name=study)
    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return
    _print_locate(result)


def _print_locate(result: Any) -> None:
    from rich.table import Table

    from autotune.tuning import FEW_TRIALS
    from autotune.tuning.importance import DEFAULT_EVALUATOR

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
    measured = len(result.trials)
    # One ranking everywhere: the method review and report.html show (--json has every method).
    for imp in (i for i in result.importances if i.evaluator == DEFAULT_EVALUATOR):
        caption = (f"{measured} trials are few: read this as a hint (below {FEW_TRIALS} trials it is unstable)"
                   if measured < FEW_TRIALS else None)
        table = Table(title=f"parameter importance for {imp.objective} ({imp.evaluator})", title_justify="left",
                      caption=caption)
        table.add_column("knob")
        table.add_column("importance", justify="right")
        for knob, value in imp.importances.items():
            table.add_row(knob, f"{value:.3f}")
        console.print(table)
    for note in result.notes:
        console.print(f"importance: {note}", highlight=False)
