"""Framework comparison: one workload, each engine at its given (or a study's best)
configuration, one table.

The methodology compares frameworks by changing one factor, the engine, against
fixed conditions. So every engine gets the same requests: the same prompts, the
same arrival policy and the same stopping rule. Where one engine cannot fix
output lengths (no ``ignore_eos``), none does, and each counts the tokens it
actually sent; the table says which rule was used. Every engine is started
fresh, measured ``repeats`` times on that server, and reported as mean ± std
beside the environment it ran in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from rich.table import Table

from autotune.environment import describe, record
from autotune.errors import UserError
from autotune.figures import format_figure, label
from autotune.load.stats import Summary
from autotune.measure import MeasureReport, measure_config
from autotune.spec import StudySpec, load_spec
from autotune.trial import TrialSetup, plan, setup_from_spec
from autotune.trial.setup import check_values
from autotune.tuning import StudyResults

# Figures in table order.
ROWS = [
    "output_throughput", "total_token_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms",
    "mean_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "mean_output_tokens", "completed", "failed",
]


@dataclass
class EngineResult:
    engine: str
    config: dict[str, Any]
    source: str  # where the configuration came from
    report: MeasureReport
    environment: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Summary]:
        return self.report.summary(ROWS, every=True)

    def to_json(self) -> dict[str, Any]:
        summary = {k: s.to_json() for k, s in self.summary().items()}
        return {"engine": self.engine, "config": self.config, "config_source": self.source,
                "environment": self.environment, "summary": summary, "measure": self.report.to_json()}


@dataclass
class Comparison:
    results: list[EngineResult]
    fixed_lengths: bool
    workload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "fixed_output_lengths": self.fixed_lengths,
            "workload": self.workload,
            "engines": [r.to_json() for r in self.results],
        }


def best_config(study_dir: Path, engine: str) -> dict[str, Any]:
    """The knobs of the study's best point: first on its Pareto front."""
    results = StudyResults.load(study_dir)
    if results.spec.engine.name != engine:
        raise UserError(f"study {study_dir} tuned {results.spec.engine.name!r}, not {engine!r}")
    best = results.best()
    if best is None:
        raise UserError(f"study {study_dir} has no feasible measured trial to take a configuration from")
    return best.config


def _setup_for(base: StudySpec, engine: str, options: Mapping[str, Any]) -> TrialSetup:
    data = base.model_dump(mode="json", exclude={"name", "study_dir"})
    data["engine"] = {**data["engine"], "name": engine, "options": dict(options)}
    data["space"] = {}  # each engine has its own knobs; the comparison sets them explicitly
    return setup_from_spec(StudySpec.model_validate(data))


def compare(
    spec: StudySpec,
    engines: list[str],
    out_dir: Path,
    *,
    configs: Mapping[str, dict[str, Any]] | None = None,
    sources: Mapping[str, str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    repeats: int = 1,
    status: Callable[[str], None] | None = None,
) -> Comparison:
    """Measures the same workload on each engine in turn (one server at a time)."""
    say = status or (lambda _m: None)
    if len(set(engines)) != len(engines) or not engines:
        raise UserError("--engines needs distinct engine names, e.g. vllm,transformers")
    setups = {e: _setup_for(spec, e, (options or {}).get(e, {})) for e in engines}
    for e, setup in setups.items():  # every engine's knobs judged before the first engine starts
        check_values(setup.space, (configs or {}).get(e, {}))
    # One stopping rule for all: fixed lengths only if every engine can fix them.
    fixed = all(s.engine.capabilities.ignore_eos for s in setups.values())
    results = []
    for e in engines:
        setup = setups[e]
        if not fixed and setup.engine.capabilities.ignore_eos:
            setup.engine.capabilities = replace(setup.engine.capabilities, ignore_eos=False)
        config = dict((configs or {}).get(e, {}))
        say(f"{e}: {config or 'engine defaults'}")
        endpoint = None if setup.engine.capabilities.launches else plan(setup, config, 0).base_url
        report = measure_config(setup, config, out_dir / e, repeats=repeats, endpoint=endpoint,
                                status=lambda m, e=e: say(f"{e}: {m}"))
        env = record(setup.engine.name, setup.engine.version(), setup.device)
        results.append(EngineResult(e, config, (sources or {}).get(e, "given" if config else "defaults"),
                                    report, env))
    comparison = Comparison(results, fixed, spec.workload.model_dump(mode="json"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(comparison.to_json(), indent=2, default=str))
    return comparison


def table(comparison: Comparison) -> Table:
    """Figures down, engines across: mean ± std over the repeats."""
    n = max((len(r.report.repeats) for r in comparison.results), default=0)
    w = comparison.workload
    load = f"rate {w['rate']}/s" if w.get("arrival") == "poisson" else f"concurrency {w['concurrency']}"
    t = Table(
        title=(f"{w['num_requests']} requests, {w['prompt_tokens']} prompt / {w['output_tokens']} max output tokens, "
               f"{load}; mean ± std of {n} run(s)"),
        title_justify="left",
    )
    t.add_column("figure")
    for r in comparison.results:
        t.add_column(f"{r.engine} {r.environment.get('engine_version') or ''}".strip(), justify="right")
    summaries = [r.summary() for r in comparison.results]
    for key in ROWS:
        cells = []
        for s in summaries:
            cell = s[key]
            mean = format_figure(key, cell.mean)
            cells.append("-" if cell.n == 0 else (f"{mean} ± {format_figure(key, cell.std)}" if cell.n > 1 else mean))
        t.add_row(label(key), *cells)
    t.add_row("engine start s", *[f"{r.report.startup_s:.1f}" if r.report.startup_s is not None else "-"
                                  for r in comparison.results])
    t.add_row("configuration", *[_config_text(r) for r in comparison.results])
    return t


def _config_text(result: EngineResult) -> str:
    if not result.config:
        return "engine defaults"
    knobs = " ".join(f"{k}={v}" for k, v in sorted(result.config.items()))
    return knobs if result.source == "given" else f"{knobs} ({result.source})"


def environment_lines(comparison: Comparison) -> list[str]:
    """The stopping rule every engine ran under, then each engine's environment."""
    rule = ("stopping rule: fixed output lengths (ignore_eos) on every engine" if comparison.fixed_lengths else
            "stopping rule: output lengths as generated (no ignore_eos) on every engine, tokens counted as received")
    return [rule] + [describe(r.environment) + f", measured {r.environment.get('recorded_at')}" for r in comparison.results]


def load_base_spec(spec_file: Path | None, overrides: Mapping[str, Any]) -> StudySpec:
    spec = load_spec(spec_file, overrides)
    if spec.goodput is not None:
        raise UserError("compare measures one fixed workload; leave goodput objectives out of its spec")
    return spec

