"""One trial, start to finish: check, launch, measure, tear down.

Knows nothing of Optuna, so that ``measure``, ``verify`` and ``worker`` reuse
it unchanged. Whatever happens, the engine's process group is gone when
``run_trial`` returns, and the outcome says why a trial did not produce
figures, in the engine's own words where it has any.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from autotune.engines.base import EngineAdapter, LaunchPlan, ModelRef
from autotune.spec import GoodputOptions
from autotune.engines.launcher import EngineServer, free_port, reason_from_log
from autotune.errors import EngineStartError, UserError
from autotune.load.goodput import endpoint_measure, search_goodput
from autotune.load.runner import run_load
from autotune.load.stats import per_request_view, summarize
from autotune.load.workload import Workload, build_requests, load_tokenizer
from autotune.search_space import SearchSpace
from autotune.slo import Constraint

Status = Literal["ok", "failed", "infeasible"]


@dataclass
class TrialSetup:
    """Everything fixed across the trials of one study."""

    engine: EngineAdapter
    space: SearchSpace
    model: ModelRef
    workload: Workload
    device: str
    hardware: dict[str, float]
    host: str = "127.0.0.1"
    startup_timeout_s: float = 600.0
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    launch_template: list[str] | None = None
    constraints: list[Constraint] = field(default_factory=list)
    goodput: GoodputOptions | None = None
    api_key: str | None = None


@dataclass
class TrialOutcome:
    status: Status
    reason: str | None = None
    figures: dict[str, float] = field(default_factory=dict)
    per_request: list[dict[str, Any]] = field(default_factory=list)
    command: str | None = None
    config_file: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    log_path: str | None = None
    startup_s: float | None = None
    measure_s: float | None = None
    goodput: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_request")
        return out


def check(setup: TrialSetup, config: Mapping[str, Any]) -> list[str]:
    """Reasons this configuration cannot run, found without starting anything."""
    return setup.space.check(config, setup.hardware)


def plan(setup: TrialSetup, config: Mapping[str, Any], port: int) -> LaunchPlan:
    env = dict(setup.extra_env)
    if Path(setup.model.source).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")
    launch = setup.engine.plan(
        setup.model,
        setup.space.knob_specs(),
        config,
        host=setup.host,
        port=port,
        device=setup.device,
        extra_args=setup.extra_args,
        extra_env=env,
    )
    if setup.launch_template:
        launch.argv = apply_template(setup.launch_template, launch.argv, setup.host, port)
    return launch


def apply_template(template: list[str], argv: list[str], host: str, port: int) -> list[str]:
    """Wraps argv (``docker run ... {argv}``); placeholders fill list items, never a shell string."""
    out: list[str] = []
    for item in template:
        if item == "{argv}":
            out += argv
        else:
            out.append(item.replace("{port}", str(port)).replace("{host}", host))
    if "{argv}" not in template:
        raise UserError("launch_template must contain the item '{argv}'")
    return out


def run_trial(
    setup: TrialSetup,
    config: Mapping[str, Any],
    trial_dir: Path,
    *,
    status: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrialOutcome:
    say = status or (lambda _msg: None)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    reasons = check(setup, config)
    if reasons:
        return _finish(trial_dir, TrialOutcome("infeasible", "; ".join(reasons)))

    port = free_port(setup.host)
    launch = plan(setup, config, port)
    log_path = trial_dir / "engine.log"
    outcome = TrialOutcome(
        "failed",
        command=launch.command_line(),
        config_file=launch.config_file,
        env={k: v for k, v in launch.env.items() if k != "HF_HUB_OFFLINE"},
        log_path=str(log_path),
    )
    server = EngineServer(launch, log_path, startup_timeout_s=setup.startup_timeout_s)
    try:
        say("starting engine")
        server.start()
        outcome.startup_s = server.wait_healthy(on_wait=lambda s: say(f"starting engine ({s:.0f}s)"))
        t0 = time.monotonic()
        measured = measure(setup, launch.base_url, trial_dir, status=say, progress=progress)
        outcome.measure_s = time.monotonic() - t0
        if launch.metrics_path:
            _save_metrics(launch.base_url + launch.metrics_path, trial_dir / "metrics.txt")
        if not server.alive():
            outcome.reason = f"engine died during measurement: {reason_from_log(log_path)}"
            return _finish(trial_dir, outcome)
        outcome.figures, outcome.per_request, outcome.goodput = measured
        if not outcome.figures.get("completed"):
            outcome.reason = f"all requests failed: {outcome.figures.get('first_error', 'no error given')}"
            return _finish(trial_dir, outcome)
        outcome.status = "ok"
        return _finish(trial_dir, outcome)
    except EngineStartError as e:
        outcome.reason = e.reason
        return _finish(trial_dir, outcome)
    finally:
        say("stopping engine")
        server.stop()


Measured = tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]


def measure(
    setup: TrialSetup,
    base_url: str,
    out_dir: Path | None,
    *,
    status: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    seed_offset: int = 0,
) -> Measured:
    """Drives the workload at a running server: one fixed load, or a goodput search.

    Returns the figures, the per-request view and, for a goodput search, the
    levels tried. For goodput the figures are those of the best level that held.
    """
    say = status or (lambda _msg: None)
    tokenizer, vocab = _tokenizer(setup.model.tokenizer_dir or setup.model.source)
    workload = setup.workload
    if setup.goodput is None:
        say("measuring")
        requests = build_requests(
            workload, tokenizer, vocab, count=workload.warmup_requests + workload.num_requests,
            seed_offset=seed_offset,
        )
        result = run_load(
            base_url, setup.model.served_name, requests, workload,
            ignore_eos=setup.engine.capabilities.ignore_eos, api_key=setup.api_key, progress=progress,
        )
        figures = dict(summarize(result))
        if out_dir is not None:
            _write_requests(out_dir / "requests.jsonl", [r.as_dict() for r in result.records])
        _first_error(figures, [r.error for r in result.records])
        return figures, per_request_view(result.records), None

    g = setup.goodput
    probe = endpoint_measure(
        base_url, setup.model.served_name, tokenizer, vocab, workload, unit=g.unit,
        ignore_eos=setup.engine.capabilities.ignore_eos, api_key=setup.api_key, progress=progress,
        min_duration_s=g.min_duration_s,
    )
    tried = 0

    def level(load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        nonlocal tried
        tried += 1
        say(f"goodput level {tried}/{g.max_levels}: {load:g} {g.unit}")
        return probe(load)

    result_g = search_goodput(
        level, setup.constraints, unit=g.unit, start=g.start, max_levels=g.max_levels, upper=g.upper,
        min_load=g.min_load, resolution=g.resolution, conservative=g.conservative,
    )
    chosen = result_g.best or result_g.levels[0]
    figures = dict(chosen.figures)
    figures["goodput"] = result_g.goodput
    summary = result_g.to_json()
    if out_dir is not None:
        (out_dir / "goodput.json").write_text(json.dumps(summary, indent=2))
    _first_error(figures, [r.get("error") for r in chosen.per_request])
    return figures, chosen.per_request, summary


def _first_error(figures: dict[str, Any], errors: list[str | None]) -> None:
    first = next((e for e in errors if e), None)
    if first:
        figures["first_error"] = first


@lru_cache(maxsize=4)
def _tokenizer(source: str):  # type: ignore[no-untyped-def]
    return load_tokenizer(Path(source))


def _save_metrics(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            path.write_bytes(resp.read())
    except OSError:
        pass


def _write_requests(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _finish(trial_dir: Path, outcome: TrialOutcome) -> TrialOutcome:
    (trial_dir / "outcome.json").write_text(json.dumps(outcome.to_json(), indent=2, default=str))
    return outcome
