"""``measure`` and ``compare``: one configuration, or one workload on several engines, without a study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from autotune.cli import _options as opt
from autotune.cli._app import app, console, err_console, status_lines
from autotune.cli._options import with_flags
from autotune.cli.study import warn_generator
from autotune.errors import UserError
from autotune.spec import flag_overrides, load_spec, parse_assignments, parse_engine_assignments


@app.command("measure")
@with_flags
def measure_cmd(
    spec_file: Optional[Path] = opt.SPEC,
    assignments: list[str] = typer.Option([], "--set", help="knob=value (repeatable); unset knobs keep the engine's defaults"),
    from_study: Optional[Path] = typer.Option(None, "--from-study", help="take the knobs of a trial of this study"),
    trial: Optional[int] = typer.Option(None, "--trial", help="the trial number, with --from-study"),
    best: bool = typer.Option(False, "--best", help="with --from-study: take the best feasible trial"),
    storage: Optional[str] = opt.STORAGE,
    study: Optional[str] = opt.STUDY,
    endpoint: Optional[str] = typer.Option(
        None, "--endpoint", "--base-url", help="measure a server autotune did not start: its URL"),
    served_model: Optional[str] = typer.Option(
        None, "--served-model-name", "--served-model", help="model name the endpoint serves"),
    engine: Optional[str] = typer.Option(None, "--engine", help="engine adapter (default vllm)"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs the engine may use"),
    repeats: int = typer.Option(1, "--repeats", "-r", min=1, help="measurements on one engine start (the methodology asks for 10)"),
    out: Path = typer.Option(Path("autotune-runs/measure"), "--out", "--result-dir",
                             help="folder for measure.json and the engine log"),
    spec_set: list[str] = typer.Option([], "--spec-set", help="spec field=value, dotted (e.g. goodput.start=24); repeatable"),
    *,
    flags: dict[str, Any],
) -> None:
    """Measure one configuration (or a running endpoint) with repeats: mean ± std and a 95% interval."""
    from rich.table import Table

    from autotune.environment import record
    from autotune.measure import endpoint_url, measure_config
    from autotune.trial import setup_from_spec
    from autotune.trial.setup import check_values

    reads_study = from_study is not None or storage is not None
    if not reads_study and (best or trial is not None):
        raise UserError(f"{'--best' if best else '--trial'} takes a trial of a study: add --from-study DIR")
    if best and trial is not None:
        raise UserError("--best and --trial both choose the trial: give one")
    if endpoint is not None:
        endpoint_url(endpoint)
    overrides = flag_overrides(**flags, engine=engine, gpus=gpus)
    overrides.update(parse_assignments(spec_set, what="--spec-set"))
    spec = load_spec(spec_file, overrides)
    if endpoint is not None and spec.engine.name == "external":
        # the endpoint is the external adapter's own address: no need to give it twice
        spec.engine.options = {"base_url": endpoint, "served_model": served_model, **spec.engine.options}
    config: dict[str, Any] = {}
    if reads_study:
        results = opt.open_results(from_study, storage, study)[0]
        if best:
            chosen = results.best()
            if chosen is None:
                raise UserError(f"study {results.name} has no feasible measured trial to take with --best")
        else:
            chosen = results.trial(trial) if trial is not None else None
            if chosen is None:
                raise UserError("--from-study needs --trial N with N a trial of that study")
        config.update(chosen.config)
    config.update(parse_assignments(assignments))
    setup = setup_from_spec(spec)
    check_values(setup.space, config, "--set")
    if endpoint is not None and served_model:
        setup.model = type(setup.model)(setup.model.source, served_model, setup.model.tokenizer_dir)
    console.print(f"measuring {spec.model} with {config or 'the engine defaults'}, {repeats} repeat(s)")
    report = measure_config(setup, config, out, repeats=repeats, endpoint=endpoint, status=status_lines())
    report.environment = record(setup.engine.name, setup.engine.version(), setup.device)
    (out / "measure.json").write_text(json.dumps(report.to_json(), indent=2, default=str))
    table = Table(title=f"{spec.model}: {repeats} repeat(s), mean ± std (95% CI)", title_justify="left")
    for col in ("figure", "mean ± std", "95% CI", "n"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    for key, s in report.summary().items():
        table.add_row(key, s.text("{:,.2f}"), f"{s.ci95[0]:,.2f} .. {s.ci95[1]:,.2f}", str(s.n))
    console.print(table)
    warn_generator([(f"repeat {i + 1}", figures) for i, figures in enumerate(report.repeats)])
    console.print(f"written: {out / 'measure.json'}")


@app.command()
@with_flags
def compare(
    engines: str = typer.Option(..., "--engines", help="engines to compare, e.g. vllm,transformers"),
    spec_file: Optional[Path] = opt.SPEC,
    assignments: list[str] = typer.Option([], "--set", help="engine:knob=value (repeatable), e.g. vllm:max_num_seqs=8"),
    from_study: list[str] = typer.Option([], "--from-study", help="engine=DIR: take the best point of that study"),
    engine_options: list[str] = typer.Option([], "--engine-option", help="engine:name=value adapter settings (external: base_url ...)"),
    repeats: int = typer.Option(3, "--repeats", "-r", min=1, help="measurements per engine on one server start"),
    out: Path = typer.Option(Path("autotune-runs/compare"), "--out", "--result-dir",
                             help="folder for compare.json and engine logs"),
    as_json: bool = opt.JSON,
    *,
    flags: dict[str, Any],
) -> None:
    """Measure one workload on each engine (given knobs, a study's best, or defaults) and print one table."""
    from autotune.compare import best_config, compare as run_compare, environment_lines, load_base_spec, table

    names = [e.strip() for e in engines.split(",") if e.strip()]
    spec = load_base_spec(spec_file, flag_overrides(**flags))
    configs = parse_engine_assignments(assignments, "--set")
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
    say = err_console if as_json else console
    say.print(f"comparing {', '.join(names)} on {spec.model}, {repeats} run(s) each")
    result = run_compare(
        spec, names, out, configs=configs, sources=sources,
        options=parse_engine_assignments(engine_options, "--engine-option"), repeats=repeats,
        status=lambda m: say.print(f"  {m}", highlight=False),
    )
    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return
    console.print(table(result))
    for line in environment_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"written: {out / 'compare.json'}")
