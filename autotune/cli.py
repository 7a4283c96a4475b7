"""The ``autotune`` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from autotune.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Tune LLM inference engines with Optuna, measured on the real engine.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.command()
def optimize(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="'tiny', 'shape:<name>', a local folder or a hub id"),
    slo: Optional[str] = typer.Option(None, "--slo", help="e.g. 'p99(ttft)<300ms' or 'ttft<300ms@99%'"),
    objectives: Optional[str] = typer.Option(None, "--objectives", "-o", help="e.g. 'max:output_tps,min:p99(ttft)'"),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", help="trials to launch (resumed ones count)"),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="study spec YAML; flags override it"),
    engine: Optional[str] = typer.Option(None, "--engine", help="engine adapter (default vllm)"),
    name: Optional[str] = typer.Option(None, "--name", help="study name (default: <model>-<engine>)"),
    study_dir: Optional[Path] = typer.Option(None, "--study-dir", help="where the study lives"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL (default: SQLite in the study folder)"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="requests in flight"),
    rate: Optional[float] = typer.Option(None, "--rate", help="Poisson arrivals at this many requests/s"),
    prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens"),
    output_tokens: Optional[int] = typer.Option(None, "--output-tokens"),
    num_requests: Optional[int] = typer.Option(None, "--num-requests"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe, nsga2 or random"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs the engine may use"),
    price: Optional[float] = typer.Option(None, "--price-per-gpu-hour"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda"),
    wall_time: Optional[float] = typer.Option(None, "--wall-time", help="stop launching trials after this many seconds"),
) -> None:
    """Run (or resume) a tuning study and print the Pareto front."""
    from autotune.progress import RichReporter
    from autotune.report import failures_table, pareto_table, write_configs
    from autotune.spec import load_spec
    from autotune.study import run_study

    overrides: dict[str, Any] = {
        "model": model, "slo": slo, "objectives": objectives, "budget.trials": trials,
        "engine.name": engine, "name": name, "study_dir": str(study_dir) if study_dir else None,
        "storage": storage, "workload.concurrency": concurrency, "workload.rate": rate,
        "workload.arrival": "poisson" if rate else None, "workload.prompt_tokens": prompt_tokens,
        "workload.output_tokens": output_tokens, "workload.num_requests": num_requests,
        "max_model_len": max_model_len, "sampler": sampler, "seed": seed, "hardware.gpu_count": gpus,
        "hardware.price_per_gpu_hour": price, "hardware.device": device, "budget.wall_time_s": wall_time,
    }
    t0 = time.monotonic()
    spec = load_spec(spec_file, overrides)
    assert spec.study_dir is not None
    console.print(
        f"study [bold]{spec.name}[/] in {spec.study_dir}: model {spec.model}, engine {spec.engine.name}, "
        f"objectives {spec.objectives}" + (f", SLO {spec.slo}" if spec.slo else "")
    )
    with RichReporter(console) as reporter:
        try:
            run = run_study(spec, reporter)
        except KeyboardInterrupt:
            reporter.progress.stop()
            err_console.print("interrupted: finished trials are kept; run the same command to resume")
            raise typer.Exit(130)
    _print_results(run.study, spec, spec.study_dir, pareto_table, failures_table, write_configs)
    console.print(f"wall time: {time.monotonic() - t0:,.0f} s")


@app.command()
def review(study_dir: Path = typer.Argument(..., help="the study folder")) -> None:
    """Print a study's Pareto front and write its recommended configs."""
    from autotune.report import failures_table, pareto_table, write_configs
    from autotune.study import load_study

    study, spec = load_study(study_dir)
    _print_results(study, spec, study_dir, pareto_table, failures_table, write_configs)


@app.command("measure")
def measure_cmd(
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="study spec YAML (model, workload, SLO, goodput)"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    slo: Optional[str] = typer.Option(None, "--slo"),
    objectives: Optional[str] = typer.Option(None, "--objectives", "-o"),
    assignments: list[str] = typer.Option([], "--set", help="knob=value (repeatable); unset knobs keep the engine's defaults"),
    from_study: Optional[Path] = typer.Option(None, "--from-study", help="take the knobs of a trial of this study"),
    trial: Optional[int] = typer.Option(None, "--trial", help="the trial number, with --from-study"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="measure a server autotune did not start"),
    served_model: Optional[str] = typer.Option(None, "--served-model", help="model name the endpoint serves"),
    repeats: int = typer.Option(1, "--repeats", "-r", min=1, help="measurements (the methodology asks for 10)"),
    out: Path = typer.Option(Path("autotune-runs/measure"), "--out", help="folder for measure.json and the engine log"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency"),
    rate: Optional[float] = typer.Option(None, "--rate"),
    num_requests: Optional[int] = typer.Option(None, "--num-requests"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Measure one configuration (or a running endpoint) with repeats: mean ± std and a 95% interval."""
    from rich.table import Table

    from autotune.environment import record
    from autotune.measure import measure_config, parse_assignments
    from autotune.spec import load_spec
    from autotune.study import load_study, make_setup

    overrides: dict[str, Any] = {
        "model": model, "slo": slo, "objectives": objectives, "workload.concurrency": concurrency,
        "workload.rate": rate, "workload.arrival": "poisson" if rate else None,
        "workload.num_requests": num_requests, "hardware.device": device,
    }
    spec = load_spec(spec_file, overrides)
    config: dict[str, Any] = {}
    if from_study is not None:
        study, _ = load_study(from_study)
        if trial is None or trial >= len(study.trials):
            raise UserError("--from-study needs --trial N with N a trial of that study")
        config.update(study.trials[trial].user_attrs.get("config", {}))
    config.update(parse_assignments(assignments))
    setup = make_setup(spec)
    unknown = sorted(set(config) - set(setup.space.knobs))
    if unknown:
        raise UserError(f"unknown knob(s) {', '.join(unknown)} (known: {', '.join(sorted(setup.space.knobs))})")
    if endpoint is not None and served_model:
        setup.model = type(setup.model)(setup.model.source, served_model, setup.model.tokenizer_dir)
    console.print(f"measuring {spec.model} with {config or 'the engine defaults'}, {repeats} repeat(s)")
    report = measure_config(
        setup, config, out, repeats=repeats, endpoint=endpoint, status=lambda m: console.print(f"  {m}")
    )
    report.environment = record(setup.engine.name, setup.engine.version(), setup.device)
    (out / "measure.json").write_text(__import__("json").dumps(report.to_json(), indent=2, default=str))
    table = Table(title=f"{spec.model}: {repeats} repeat(s), mean ± std (95% CI)", title_justify="left")
    for col in ("figure", "mean ± std", "95% CI", "n"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    for key, s in report.summary().items():
        table.add_row(key, s.text("{:,.2f}"), f"{s.ci95[0]:,.2f} .. {s.ci95[1]:,.2f}", str(s.n))
    console.print(table)
    console.print(f"written: {out / 'measure.json'}")


def _print_results(study: Any, spec: Any, study_dir: Path, pareto_table: Any, failures_table: Any, write_configs: Any) -> None:
    bad = failures_table(study)
    if bad is not None:
        console.print(bad)
    console.print(pareto_table(study, spec))
    for rec in write_configs(study, spec, study_dir):
        console.print(f"trial {rec.trial.number}: {rec.config_path}")
        console.print(f"  {rec.command}", highlight=False, soft_wrap=True)


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM (a scheduler, `timeout`, `kill`) unwinds like Ctrl-C, so the engine's
    # process group is torn down and the running trial is recorded as interrupted.
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    import signal

    import optuna

    signal.signal(signal.SIGTERM, _terminate)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        app(standalone_mode=True)
    except UserError as e:
        err_console.print(f"error: {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
