"""Measure one configuration without a study: repeats on one engine start (or on
an endpoint autotune did not start), reported as mean +- std and a 95% interval.

This is how a default configuration is compared with a tuned one under the
same workload and the same goodput search.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from autotune.engines.base import LaunchPlan
from autotune.engines.launcher import free_port
from autotune.engines.serving import serving
from autotune.errors import EngineStartError, RunFailed, UserError
from autotune.figures import figure
from autotune.folders import check_folder, make_folder
from autotune.load.stats import Summary
from autotune.trial import Measurement, TrialSetup, check, measure_repeated, plan
from autotune.trial.setup import check_values, require_launchable

__all__ = ["KEY_FIGURES", "MeasureReport", "endpoint_url", "measure_config"]

# Figures summarised across repeats (vllm bench serve names, plus goodput).
KEY_FIGURES = [
    "goodput", "request_throughput", "output_throughput", "total_token_throughput",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms",
    "mean_itl_ms", "p99_itl_ms", "p99_e2el_ms", "completed", "failed",
]


@dataclass
class MeasureReport:
    config: dict[str, Any]
    repeats: list[dict[str, Any]] = field(default_factory=list)
    goodput: list[dict[str, Any] | None] = field(default_factory=list)
    startup_s: float | None = None
    command: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)

    def summary(self, keys: list[str] | None = None, *, every: bool = False) -> dict[str, Summary]:
        """Each figure over the repeats; ``every``: a figure no repeat measured too (n = 0)."""
        wanted = [k for k in (keys or KEY_FIGURES) if every or any(figure(r, k) is not None for r in self.repeats)]
        return {k: Summary.of(figure(r, k) for r in self.repeats) for k in wanted}

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "command": self.command,
            "startup_s": self.startup_s,
            "environment": self.environment,
            "summary": {k: s.to_json() for k, s in self.summary().items()},
            "repeats": self.repeats,
            "goodput_levels": self.goodput,
        }


def measure_config(
    setup: TrialSetup,
    config: Mapping[str, Any],
    out_dir: Path,
    *,
    repeats: int = 1,
    endpoint: str | None = None,
    status: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MeasureReport:
    """Starts the engine once (unless ``endpoint`` is given) and measures ``repeats`` times."""
    say = status or (lambda _m: None)
    report = MeasureReport(config=dict(config))
    if endpoint is None:
        require_launchable(setup)
        check_values(setup.space, config, "--set")
        reasons = check(setup, config)
        if reasons:
            raise UserError(f"configuration cannot run: {'; '.join(reasons)}")
        launch = plan(setup, config, free_port(setup.host))
        report.command = launch.command_line()
    else:
        endpoint = endpoint_url(endpoint)
        launch = LaunchPlan([], {}, setup.host, 0, "/v1/models", None, endpoint=endpoint)
    check_folder(out_dir, "output folder")
    if endpoint is None:
        make_folder(out_dir, "output folder")  # the engine's log goes there

    def keep(index: int, run: Measurement) -> None:
        # Nothing measured is nothing to report: no completed request is an error, with the first request's.
        if not run.figures.get("completed"):
            raise RunFailed(
                f"{'repeat ' + str(index + 1) + ': ' if repeats > 1 else ''}no request completed "
                f"({run.figures.get('failed', 0):.0f} failed): {run.figures.get('first_error', 'no error given')}"
            )
        # Written after every repeat: an interrupted run keeps what it measured.
        make_folder(out_dir, "output folder")
        report.repeats.append(run.figures)
        report.goodput.append(run.goodput)
        (out_dir / "measure.json").write_text(json.dumps(report.to_json(), indent=2, default=str))

    if endpoint is None:
        say("starting engine")
    try:
        with serving(
            launch, out_dir / "engine.log", launches=endpoint is None, api_key=setup.api_key,
            startup_timeout_s=setup.startup_timeout_s, on_wait=lambda s: say(f"starting engine ({s:.0f}s)"), say=say,
        ) as server:
            if endpoint is None:
                report.startup_s = server.startup_s
            measure_repeated(setup, launch.base_url, None, repeats=repeats, status=say, progress=progress,
                             on_repeat=keep)
    except EngineStartError as e:
        if endpoint is not None:  # nothing was started: the address given is wrong or down
            raise UserError(e.reason) from None
        raise RunFailed(f"engine did not start: {e.reason}") from None
    return report


def endpoint_url(text: str) -> str:
    """An endpoint's root URL (``http://host:port``), from what a user gives: with or without ``/v1``."""
    if text.strip().startswith("/"):
        raise UserError(f"--endpoint {text!r}: give the server's URL here (vllm bench's --base-url, "
                        "e.g. http://127.0.0.1:8000); requests always go to its /v1/completions")
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--endpoint {text!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as e:
        raise UserError(f"--endpoint {text!r}: {e}") from None
    return text.strip().rstrip("/").removesuffix("/v1")
