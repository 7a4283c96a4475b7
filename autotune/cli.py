"""The ``autotune`` command line."""

from __future__ import annotations

import signal
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
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe, gp, nsga2 or random"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs the engine may use"),
    price: Optional[float] = typer.Option(None, "--price-per-gpu-hour"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda"),
    wall_time: Optional[float] = typer.Option(None, "--wall-time", help="stop launching trials after this many seconds"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="environment variable holding the engine's API key"),
    scenario: Optional[str] = typer.Option(None, "--scenario", help="preset: chat, long-context, batch or a YAML file"),
    repeats: Optional[int] = typer.Option(None, "--repeats", "-r", min=1, help="measurements of each trial (mean, std, CI)"),
) -> None:
    """Run (or resume) a tuning study and print the Pareto front."""
    from autotune.progress import RichReporter
    from autotune.report import failures_table, pareto_table, write_configs
    from autotune.spec import load_spec
    from autotune.study import run_study

    overrides: dict[str, Any] = {
        "model": model, "slo": slo, "objectives": objectives, "budget.trials": trials,
        "engine.name": engine, "name": name, "study_dir": str(study_dir) if study_dir else None,
        "storage": storage, "engine.api_key_env": api_key_env, "workload.concurrency": concurrency, "workload.rate": rate,
        "workload.arrival": "poisson" if rate else None, "workload.prompt_tokens": prompt_tokens,
        "workload.output_tokens": output_tokens, "workload.num_requests": num_requests,
        "max_model_len": max_model_len, "sampler": sampler, "seed": seed, "hardware.gpu_count": gpus,
        "hardware.price_per_gpu_hour": price, "hardware.device": device, "budget.wall_time_s": wall_time,
        "scenario": scenario, "repeats": repeats,
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
    _write_html_report(run.study, spec, spec.study_dir, None)
    _warn_saturated([(f"trial {t.number}", t.user_attrs.get("figures") or {}) for t in run.study.trials])
    console.print(f"wall time: {time.monotonic() - t0:,.0f} s")


@app.command()
def review(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    price: Optional[float] = typer.Option(None, "--price-per-gpu-hour", min=0, help="price for the cost column"),
) -> None:
    """Print a study's Pareto front (with verification and cost) and write its recommended configs."""
    from functools import partial

    from autotune.report import failures_table, pareto_table, write_configs
    from autotune.study import load_study

    study, spec = load_study(study_dir)
    _print_results(study, spec, study_dir, partial(pareto_table, price_per_gpu_hour=price), failures_table, write_configs)
    # --- rounds: decisions and importances (begin) ---
    from autotune.report import importance_table, rounds_table

    for table in (rounds_table(study), importance_table(study)):
        if table is not None:
            console.print(table)
    # --- rounds (end) ---


# --- verify, report, dashboard (begin) ---
@app.command()
def verify(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="verify the best K trials instead of the Pareto front"),
    trials: list[int] = typer.Option([], "--trial", help="verify this trial (repeatable)"),
    repeats: int = typer.Option(10, "--repeats", "-r", min=1, help="fresh server starts per configuration"),
    price: Optional[float] = typer.Option(None, "--price-per-gpu-hour", min=0, help="price for the cost figure"),
    fresh: bool = typer.Option(False, "--fresh", help="discard the starts stored by an earlier verify"),
) -> None:
    """Re-run the recommended configs with fresh server starts; verified only if the SLO holds at 95%."""
    from autotune.study import load_study, make_setup
    from autotune.verify import RichVerifyReporter, candidates, verdict_lines, verify_study, verify_table

    study, spec = load_study(study_dir)
    chosen, notes = candidates(study, top=top, trials=list(trials) or None)
    for note in notes:
        err_console.print(f"note: {note}", highlight=False)
    if not chosen:
        raise UserError(f"nothing to verify in {study_dir}: no measured trial that met the SLO and carries its environment")
    setup = make_setup(spec)
    console.print(
        f"verifying {', '.join(f'trial {t.number}' for t in chosen)} of {spec.name}: {repeats} fresh start(s) each"
        + (f", SLO {spec.slo}" if spec.slo else ", no SLO")
    )
    with RichVerifyReporter(console) as reporter:
        try:
            results = verify_study(
                study, spec, setup, study_dir, chosen, repeats=repeats, price_per_gpu_hour=price, fresh=fresh,
                reporter=reporter,
            )
        except KeyboardInterrupt:
            reporter.progress.stop()
            err_console.print("interrupted: the starts measured so far are kept in the study; run the same command to go on")
            raise typer.Exit(130)
    console.print(verify_table(results))
    for r in results:
        for line in verdict_lines(r):
            console.print(line, highlight=False, soft_wrap=True)
    _write_html_report(study, spec, study_dir, price)


@app.command("report")
def report_cmd(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    price: Optional[float] = typer.Option(None, "--price-per-gpu-hour", min=0, help="price for the cost figures"),
) -> None:
    """Write report.html (self-contained) and pareto.png into the study folder."""
    from autotune.study import load_study

    study, spec = load_study(study_dir)
    _write_html_report(study, spec, study_dir, price)


@app.command()
def dashboard(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    port: int = typer.Option(8080, "--port", min=1, max=65535),
) -> None:
    """Serve optuna-dashboard on the study's storage, on 127.0.0.1 only; Ctrl-C stops it."""
    from autotune.study import load_study

    _study, spec = load_study(study_dir)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UserError("optuna-dashboard is not installed (pip install 'autotune[report]')") from None
    console.print(f"optuna-dashboard for {spec.name} on http://127.0.0.1:{port}/ (Ctrl-C stops it)", highlight=False)
    url = spec.storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    # The server runs in a daemon thread: a signal delivered while it handles a
    # request would otherwise be swallowed by wsgiref's catch-all error handler.
    import threading

    stopped = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            run_server(url, host="127.0.0.1", port=port)
        except BaseException as e:  # noqa: BLE001 - reported below, in the main thread
            failure.append(e)
        finally:
            stopped.set()

    threading.Thread(target=serve, name="optuna-dashboard", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda _s, _f: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    if failure and isinstance(failure[0], OSError):
        err = failure[0]
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {getattr(err, 'strerror', None) or err}")
    console.print("dashboard stopped")


# --- locate: bottleneck diagnosis and parameter importances (begin) ---
@app.command()
def locate(
    study_dir: Path = typer.Argument(..., help="the study folder"),
    trial: Optional[int] = typer.Argument(None, help="one trial (default: every measured trial)"),
    as_json: bool = typer.Option(False, "--json", help="print the diagnosis as JSON"),
) -> None:
    """Name each trial's bottleneck with its evidence and what to change; the study's parameter importances."""
    import json

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
# --- locate (end) ---


def _write_html_report(study: Any, spec: Any, study_dir: Path, price: Optional[float]) -> None:
    try:
        from autotune.report_html import write_report

        html_path, png_path = write_report(study, spec, study_dir, price_per_gpu_hour=price)
    except ImportError as exc:  # the report extra is optional; the study itself is complete
        console.print(f"report: skipped ({exc.name or exc} is not installed: pip install 'autotune[report]')", highlight=False, markup=False)
        return
    console.print(f"report: {html_path}  front: {png_path}", highlight=False, soft_wrap=True)
# --- verify, report, dashboard (end) ---


def _status_lines(every_s: float = 15.0) -> Any:
    """A status printer for plain output: a message that only updates a counter
    ("starting engine (12s)") is printed again at most every ``every_s`` seconds,
    so a log of a long engine start is a few lines, not one per tick."""
    last: dict[str, Any] = {"head": None, "at": 0.0}

    def say(message: str) -> None:
        head = message.split(" (")[0]
        now = time.monotonic()
        if head == last["head"] and now - last["at"] < every_s:
            return
        last["head"], last["at"] = head, now
        console.print(f"  {message}", highlight=False)

    return say


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
    scenario: Optional[str] = typer.Option(None, "--scenario", help="preset: chat, long-context, batch or a YAML file"),
    best: bool = typer.Option(False, "--best", help="with --from-study: take the best feasible trial"),
    spec_set: list[str] = typer.Option([], "--spec-set", help="spec field=value, dotted (e.g. goodput.start=24); repeatable"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="environment variable holding the engine's API key"),
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
        "workload.num_requests": num_requests, "hardware.device": device, "scenario": scenario,
        "engine.api_key_env": api_key_env,
    }
    overrides.update(parse_assignments(spec_set, what="--spec-set"))
    spec = load_spec(spec_file, overrides)
    if endpoint is not None and spec.engine.name == "external":
        # the endpoint is the external adapter's own address: no need to give it twice
        spec.engine.options = {"base_url": endpoint, "served_model": served_model, **spec.engine.options}
    config: dict[str, Any] = {}
    if from_study is not None:
        study, _ = load_study(from_study)
        if best:
            trial = _best_trial_number(study, from_study)
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
    report = measure_config(setup, config, out, repeats=repeats, endpoint=endpoint, status=_status_lines())
    report.environment = record(setup.engine.name, setup.engine.version(), setup.device)
    (out / "measure.json").write_text(__import__("json").dumps(report.to_json(), indent=2, default=str))
    table = Table(title=f"{spec.model}: {repeats} repeat(s), mean ± std (95% CI)", title_justify="left")
    for col in ("figure", "mean ± std", "95% CI", "n"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    for key, s in report.summary().items():
        table.add_row(key, s.text("{:,.2f}"), f"{s.ci95[0]:,.2f} .. {s.ci95[1]:,.2f}", str(s.n))
    console.print(table)
    _warn_saturated([(f"repeat {i + 1}", figures) for i, figures in enumerate(report.repeats)])
    console.print(f"written: {out / 'measure.json'}")


# --- load generator health (begin) ---
def _warn_saturated(runs: list[tuple[str, dict[str, Any]]]) -> None:
    """Names the runs whose load generator could not offer the requested load, and why."""
    for label, figures in runs:
        if not figures.get("loadgen_saturated"):
            continue
        why = [f"its event loop used {figures.get('loadgen_loop_cpu_percent') or 0:.0f}% of a core"]
        if figures.get("loadgen_send_lag_p90_ms") is not None:
            why.insert(0, f"sends ran {figures['loadgen_send_lag_p90_ms']:.0f} ms behind schedule at p90")
        if figures.get("loadgen_cpu_wait_percent") is not None:
            why.append(f"waited for a CPU core {figures['loadgen_cpu_wait_percent']:.0f}% of the time")
        err_console.print(
            f"warning: {label}: the load generator could not keep the requested load ({', '.join(why)}); "
            "its figures are not the server's alone",
            highlight=False, soft_wrap=True,
        )


# --- load generator health (end) ---


def _print_results(study: Any, spec: Any, study_dir: Path, pareto_table: Any, failures_table: Any, write_configs: Any) -> None:
    from autotune.report import unreported

    for note in unreported(study):
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    bad = failures_table(study)
    if bad is not None:
        console.print(bad)
    # --- quality: perplexity and pass-key accuracy per trial (begin) ---
    from autotune.report import quality_table

    quality = quality_table(study)
    if quality is not None:
        console.print(quality)
    # --- quality (end) ---
    from autotune.report import transposed

    table = pareto_table(study, spec)
    if table.row_count and console.measure(table, options=console.options.update_width(10_000)).maximum > console.width:
        table = transposed(table)  # a column per knob and figure would be cut to ellipses
    console.print(table)
    for rec in write_configs(study, spec, study_dir):
        console.print(f"trial {rec.trial.number}: {rec.config_path}")
        console.print(f"  {rec.command}", highlight=False, soft_wrap=True)


def _best_trial_number(study: Any, study_dir: Path) -> int:
    """The feasible trial with the best first objective: what a user would deploy."""
    from autotune.report import pareto_front

    front = pareto_front(study)
    if not front:
        raise UserError(f"{study_dir} has no feasible measured trial to take with --best")
    maximize = study.directions[0].name == "MAXIMIZE"
    return max(front, key=lambda t: t.values[0] if maximize else -t.values[0]).number


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (a scheduler, `timeout`, `kill`) unwinds like Ctrl-C, so the engine's
    # process group is torn down and the running trial is recorded as interrupted.
    # An exception raised while a __del__ runs (garbage collection of an HTTP
    # connection, say) is printed and swallowed by Python, and the signal would
    # be lost: deliver it again a moment later instead.
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            import os
            import threading

            timer = threading.Timer(0.05, os.kill, args=(os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt(f"signal {signum}")


# --- worker: one node of a study shared through a database (begin) ---
@app.command()
def worker(
    storage: str = typer.Option(..., "--storage", envvar="AUTOTUNE_STORAGE", help="e.g. postgresql://user@db-host/autotune"),
    study: str = typer.Option(..., "--study", help="the study's name"),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU indices this worker's engine uses, e.g. 0,1"),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="create the study from this spec if it does not exist"),
    study_dir: Optional[Path] = typer.Option(None, "--study-dir", help="this node's folder for logs (default autotune-runs/<study>)"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="environment variable holding the engine's API key"),
) -> None:
    """Pull trials of a shared study until its budget is spent (run one per node)."""
    from autotune.progress import RichReporter
    from autotune.spec import redact_url
    from autotune.study import budget_state, run_study
    from autotune.worker import worker_spec

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
            err_console.print("interrupted: this worker's trial is marked interrupted; the others go on")
            raise typer.Exit(130)
    state = budget_state(run.study)
    console.print(f"study {spec.name}: {state.done} of {spec.budget.trials} trials done, {state.running} running")
# --- worker (end) ---


# --- compare: one workload on several engines (begin) ---
@app.command()
def compare(
    engines: str = typer.Option(..., "--engines", help="engines to compare, e.g. vllm,transformers"),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="spec YAML for model and workload"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    assignments: list[str] = typer.Option([], "--set", help="engine:knob=value (repeatable), e.g. vllm:max_num_seqs=8"),
    from_study: list[str] = typer.Option([], "--from-study", help="engine=DIR: take the best point of that study"),
    engine_options: list[str] = typer.Option([], "--engine-option", help="engine:name=value adapter settings (external: base_url ...)"),
    repeats: int = typer.Option(3, "--repeats", "-r", min=1, help="measurements per engine on one server start"),
    out: Path = typer.Option(Path("autotune-runs/compare"), "--out", help="folder for compare.json and engine logs"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency"),
    rate: Optional[float] = typer.Option(None, "--rate"),
    prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens"),
    output_tokens: Optional[int] = typer.Option(None, "--output-tokens"),
    num_requests: Optional[int] = typer.Option(None, "--num-requests"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Measure one workload on each engine (given knobs, a study's best, or defaults) and print one table."""
    from autotune.compare import best_config, compare as run_compare, environment_lines, load_base_spec
    from autotune.compare import parse_engine_items, table

    names = [e.strip() for e in engines.split(",") if e.strip()]
    overrides: dict[str, Any] = {
        "model": model, "workload.concurrency": concurrency, "workload.rate": rate,
        "workload.arrival": "poisson" if rate else None, "workload.prompt_tokens": prompt_tokens,
        "workload.output_tokens": output_tokens, "workload.num_requests": num_requests,
        "max_model_len": max_model_len, "hardware.device": device,
    }
    spec = load_base_spec(spec_file, overrides)
    configs = parse_engine_items(assignments, "--set")
    sources: dict[str, str] = {}
    for item in from_study:
        engine, sep, folder = item.partition("=")
        if not sep:
            raise UserError(f"bad --from-study {item!r}: expected engine=DIR")
        configs[engine] = {**best_config(Path(folder), engine), **configs.get(engine, {})}
        sources[engine] = f"best of {folder}"
    strays = sorted(set(configs) - set(names))
    if strays:
        raise UserError(f"--set/--from-study name engine(s) not in --engines: {', '.join(strays)}")
    console.print(f"comparing {', '.join(names)} on {spec.model}, {repeats} run(s) each")
    result = run_compare(
        spec, names, out, configs=configs, sources=sources,
        options=parse_engine_items(engine_options, "--engine-option"), repeats=repeats,
        status=lambda m: console.print(f"  {m}"),
    )
    console.print(table(result))
    for line in environment_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"written: {out / 'compare.json'}")
# --- compare (end) ---


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main() -> None:
    import signal

    import warnings

    import optuna
    from typer._click import exceptions as click_errors  # typer vendors click

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # --- every bad input is one line and exit status 2 (begin) ---
    try:
        rc = app(standalone_mode=False)
    except UserError as e:
        err_console.print(f"error: {_one_line(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click_errors.NoArgsIsHelpError as e:
        print(e.format_message())
        sys.exit(2)
    except click_errors.ClickException as e:  # unknown option, bad value, missing argument
        err_console.print(f"error: {_one_line(e.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code if e.exit_code else 2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
    # --- one line (end) ---


if __name__ == "__main__":
    main()
