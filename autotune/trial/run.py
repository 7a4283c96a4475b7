"""One trial, start to finish: check, launch, measure, tear down.

Knows nothing of Optuna, so that ``measure``, ``verify`` and the tuning loop
share it unchanged. Whatever happens, the engine's process group is gone when
``run_trial`` returns, and the outcome says why a trial did not produce
figures, in the engine's own words where it has any.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from autotune.engines.launcher import free_port, reason_from_log
from autotune.engines.serving import serving
from autotune.errors import EngineStartError
from autotune.load.stats import generator_verdict
from autotune.space import gpus_per_engine
from autotune.trial.measurement import measure_repeated
from autotune.trial.setup import TrialSetup, feasibility, plan, with_workload

__all__ = ["QualityHook", "TrialOutcome", "run_quality_only", "run_trial"]

Status = Literal["ok", "failed", "infeasible"]

#: Called with the running server's base URL; returns {"figures": {...}, ...}.
QualityHook = Callable[[str], Mapping[str, Any]]

#: How long an engine whose requests were cut off is given to exit before it is judged alive.
_DEATH_SETTLE_S = 15.0


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
    # GPU (NVML) and engine-metrics figures of the measured window, plus "notes" (autotune.telemetry)
    telemetry: dict[str, Any] | None = None
    # the feasibility verdict and its figures (tp, pp, weights and KV per GPU), launched or not
    feasibility: dict[str, Any] | None = None
    # with repeats > 1: mean, std and 95% interval of every figure, and each run's figures
    repeats: dict[str, Any] | None = None
    # perplexity and pass-key accuracy of this configuration's quality setting, and how they were got
    quality: dict[str, Any] | None = None
    # the engine start read from its own log: phases in seconds, compile cache hit or miss
    startup: dict[str, Any] | None = None
    compile_key: str | None = None
    # the engine never became healthy: the same start failure across configurations points at the machine
    failed_to_start: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_request")
        return out


def run_trial(
    setup: TrialSetup,
    config: Mapping[str, Any],
    trial_dir: Path,
    *,
    status: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    quality: QualityHook | None = None,
    incumbent: float | None = None,
    recheck_below: float | None = None,
    seed_offset: int = 0,
) -> TrialOutcome:
    """``quality``, when given, is called with the server's URL once the load is measured
    and returns ``{"figures": ..., ...}``: its figures join the trial's. ``incumbent`` and
    ``recheck_below`` shape a goodput search (``autotune.trial.measurement.measure``).
    ``seed_offset`` picks the prompts and the arrival schedule: a study's trials share 0 (common
    random numbers), a verification's fresh starts each draw their own."""
    say = status or (lambda _msg: None)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    verdict = feasibility(setup, config)
    reasons = setup.space.check(config, setup.hardware) + verdict.reasons
    if reasons:
        return _finish(trial_dir, TrialOutcome("infeasible", "; ".join(reasons), feasibility=verdict.to_json()))

    launch = plan(setup, config, free_port(setup.host))
    log_path = trial_dir / "engine.log"
    outcome = TrialOutcome(
        "failed",
        command=launch.command_line(),
        config_file=launch.config_file,
        env={k: v for k, v in launch.recommended_env().items() if k != "HF_HUB_OFFLINE"},
        log_path=str(log_path),
        feasibility=verdict.to_json(),
        compile_key=setup.engine.compile_key(config) or None,
    )
    setup = with_workload(setup, config)
    say("starting engine")
    try:
        with serving(
            launch, log_path, launches=setup.engine.capabilities.launches, api_key=setup.api_key,
            startup_timeout_s=setup.startup_timeout_s, on_wait=lambda s: say(f"starting engine ({s:.0f}s)"), say=say,
        ) as server:
            outcome.startup_s = server.startup_s
            outcome.startup = _startup_bill(setup, log_path, server.startup_s)
            t0 = time.monotonic()
            measured = measure_repeated(
                setup, launch.base_url, trial_dir, status=say, progress=progress, gpu_limit=gpus_per_engine(config),
                incumbent=incumbent, recheck_below=recheck_below, seed_offset=seed_offset,
            )
            outcome.measure_s = time.monotonic() - t0
            if launch.metrics_path:
                _save_metrics(launch.base_url + launch.metrics_path, trial_dir / "metrics.txt")
            # Requests cut off mid-run are the mark of an engine that may be dying: give it time to show.
            if not server.alive(settle_s=_DEATH_SETTLE_S if measured.figures.get("failed") else 0.0):
                outcome.reason = f"engine died during measurement: {reason_from_log(log_path)}"
                return _finish(trial_dir, outcome)
            outcome.figures, outcome.per_request, outcome.goodput = measured.figures, measured.per_request, measured.goodput
            outcome.telemetry, outcome.repeats = measured.telemetry, measured.repeats
            if not outcome.figures.get("completed"):
                outcome.reason = f"all requests failed: {outcome.figures.get('first_error', 'no error given')}"
                return _finish(trial_dir, outcome)
            limited = generator_verdict(outcome.figures)
            if limited is not None and limited[0] == "fail":
                outcome.reason = limited[1]
                return _finish(trial_dir, outcome)
            if quality is not None:
                say("measuring quality")
                try:
                    outcome.quality = dict(quality(launch.base_url))
                except Exception as e:  # an HTTP error, no logprobs: the trial has no quality figure
                    outcome.reason = f"quality measurement failed: {type(e).__name__}: {e}"
                    return _finish(trial_dir, outcome)
                outcome.figures.update(outcome.quality.get("figures", {}))
            outcome.status = "ok"
            say("stopping engine")
        return _finish(trial_dir, outcome)
    except EngineStartError as e:
        outcome.reason, outcome.failed_to_start = e.reason, True
        outcome.startup = _startup_bill(setup, log_path, None)
        return _finish(trial_dir, outcome)


def _startup_bill(setup: TrialSetup, log_path: Path, total_s: float | None) -> dict[str, Any] | None:
    """Where the start's time went, in the engine's own words; None when its log says nothing."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    bill = setup.engine.startup_phases(lines, total_s=total_s)
    return bill.to_dict() if bill.phases or bill.notes or bill.compile_cache_hit is not None else None


def run_quality_only(
    setup: TrialSetup, config: Mapping[str, Any], out_dir: Path, measure_quality: QualityHook,
    *, status: Callable[[str], None] | None = None,
) -> Mapping[str, Any]:
    """Starts the engine with ``config``, measures quality on it, tears it down.

    For the study's quality baseline when no trial runs the baseline setting:
    no load is driven. Raises ``EngineStartError`` when the engine does not come up.
    """
    say = status or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str))
    launch = plan(setup, config, free_port(setup.host))
    say("starting engine for the quality baseline")
    with serving(
        launch, out_dir / "engine.log", startup_timeout_s=setup.startup_timeout_s,
        on_wait=lambda s: say(f"starting engine for the quality baseline ({s:.0f}s)"), say=say,
    ):
        say("measuring the quality baseline")
        return measure_quality(launch.base_url)


def _save_metrics(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            path.write_bytes(resp.read())
    except OSError:
        pass


def _finish(trial_dir: Path, outcome: TrialOutcome) -> TrialOutcome:
    (trial_dir / "outcome.json").write_text(json.dumps(outcome.to_json(), indent=2, default=str))
    return outcome
