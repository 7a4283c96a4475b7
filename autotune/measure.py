"""Measure one configuration without a study: repeats on one engine start (or on
an endpoint autotune did not start), reported as mean +- std and a 95% interval.

This is how a default configuration is compared with a tuned one under the
same workload and the same goodput search.
"""

from __future__ import annotations

import json
import math
import statistics
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from autotune.engines.launcher import EngineServer, free_port
from autotune.errors import EngineStartError, UserError
from autotune.trial import TrialSetup, check, measure, plan

# Figures summarised across repeats (vllm bench serve names, plus goodput).
KEY_FIGURES = [
    "goodput", "request_throughput", "output_throughput", "total_token_throughput",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms",
    "mean_itl_ms", "p99_itl_ms", "p99_e2el_ms", "completed", "failed",
]

# Two-sided 95% Student t quantiles for small samples (df = n - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}


def t95(df: int) -> float:
    if df <= 0:
        return math.nan
    if df in _T95:
        return _T95[df]
    known = [k for k in _T95 if k <= df]
    return _T95[max(known)] if df < 30 else 1.96


@dataclass
class Summary:
    mean: float
    std: float
    ci95: tuple[float, float]
    n: int

    def text(self, fmt: str = "{:,.1f}") -> str:
        return f"{fmt.format(self.mean)} ± {fmt.format(self.std)}"


def summarise(values: list[float]) -> Summary:
    """Mean, sample standard deviation and a Student-t 95% interval of the mean."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return Summary(math.nan, math.nan, (math.nan, math.nan), 0)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = t95(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return Summary(mean, std, (mean - half, mean + half), n)


@dataclass
class MeasureReport:
    config: dict[str, Any]
    repeats: list[dict[str, Any]] = field(default_factory=list)
    goodput: list[dict[str, Any] | None] = field(default_factory=list)
    startup_s: float | None = None
    command: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Summary]:
        keys = [k for k in KEY_FIGURES if any(k in r for r in self.repeats)]
        return {k: summarise([r[k] for r in self.repeats if r.get(k) is not None]) for k in keys}

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "command": self.command,
            "startup_s": self.startup_s,
            "environment": self.environment,
            "summary": {
                k: {"mean": s.mean, "std": s.std, "ci95": list(s.ci95), "n": s.n} for k, s in self.summary().items()
            },
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
    out_dir.mkdir(parents=True, exist_ok=True)
    report = MeasureReport(config=dict(config))
    with ExitStack() as stack:
        if endpoint is None:
            reasons = check(setup, config)
            if reasons:
                raise UserError(f"configuration cannot run: {'; '.join(reasons)}")
            launch = plan(setup, config, free_port(setup.host))
            report.command = launch.command_line()
            server = EngineServer(launch, out_dir / "engine.log", startup_timeout_s=setup.startup_timeout_s)
            stack.callback(server.stop)
            say("starting engine")
            server.start()
            try:
                report.startup_s = server.wait_healthy(on_wait=lambda s: say(f"starting engine ({s:.0f}s)"))
            except EngineStartError as e:
                raise UserError(f"engine did not start: {e.reason}") from None
            base_url = launch.base_url
        else:
            base_url = endpoint.rstrip("/")
        for i in range(repeats):
            say(f"repeat {i + 1}/{repeats}")
            figures, _per_request, goodput = measure(
                setup, base_url, None, status=say, progress=progress, seed_offset=1000 * (i + 1)
            )
            report.repeats.append(figures)
            report.goodput.append(goodput)
            # Written after every repeat: an interrupted run keeps what it measured.
            (out_dir / "measure.json").write_text(json.dumps(report.to_json(), indent=2, default=str))
    return report


def parse_assignments(items: list[str], what: str = "--set") -> dict[str, Any]:
    """``name=value`` pairs from the command line, values read as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"bad {what} {item!r}: expected name=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
