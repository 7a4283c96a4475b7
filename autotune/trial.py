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
from autotune.engines.launcher import EngineServer, free_port, reason_from_log
from autotune.errors import EngineStartError, UserError
from autotune.load.runner import run_load
from autotune.load.stats import per_request_view, summarize
from autotune.load.workload import Workload, build_requests, load_tokenizer
from autotune.search_space import SearchSpace

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
        "failed", command=launch.command_line(),
        config_file=launch.config_file,
        env={k: v for k, v in launch.env.items() if k != "HF_HUB_OFFLINE"},
        log_path=str(log_path),
    )
    server = EngineServer(launch, log_path, startup_timeout_s=setup.startup_timeout_s)
    try:
        say("starting engine")
        server.start()
        outcome.startup_s = server.wait_healthy(on_wait=lambda s: say(f"starting engine ({s:.0f}s)"))
        say("measuring")
        t0 = time.monotonic()
        result = _measure(setup, launch, progress)
        outcome.measure_s = time.monotonic() - t0
        if launch.metrics_path:
            _save_metrics(launch.base_url + launch.metrics_path, trial_dir / "metrics.txt")
        if not server.alive():
            outcome.reason = f"engine died during measurement: {reason_from_log(log_path)}"
            return _finish(trial_dir, outcome)
        figures = summarize(result)
        outcome.per_request = per_request_view(result.records)
        _write_requests(trial_dir / "requests.jsonl", [r.as_dict() for r in result.records])
        if not figures.get("completed"):
            first = next((r.error for r in result.records if r.error), "no error given")
            outcome.reason = f"all {len(result.records)} requests failed: {first}"
            outcome.figures = figures
            return _finish(trial_dir, outcome)
        outcome.status, outcome.figures = "ok", figures
        return _finish(trial_dir, outcome)
    except EngineStartError as e:
        outcome.reason = e.reason
        return _finish(trial_dir, outcome)
    finally:
        say("stopping engine")
        server.stop()


def _measure(setup: TrialSetup, launch: LaunchPlan, progress: Callable[[int, int], None] | None):  # type: ignore[no-untyped-def]
    workload = setup.workload
    tokenizer, vocab = _tokenizer(setup.model.tokenizer_dir or setup.model.source)
    requests = build_requests(workload, tokenizer, vocab, count=workload.warmup_requests + workload.num_requests)
    return run_load(
        launch.base_url,
        setup.model.served_name,
        requests,
        workload,
        ignore_eos=setup.engine.capabilities.ignore_eos,
        progress=progress,
    )


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
