"""When each request of an open loop is sent: seeded gamma renewal schedules.

Kept apart from the runner that keeps to them, so that a recorded run's
schedule can be rebuilt (``endpoint``'s trimmed levels, benchmarks replaying
a schedule with another tool) without the machinery that sends.
"""

from __future__ import annotations

import numpy as np

from autotune.load.workload import Workload

__all__ = ["arrival_offsets", "poisson_offsets", "run_offsets", "warmup_offsets"]

# Mixed into the workload seed so arrival times and prompts use unrelated streams.
_ARRIVAL_STREAM = 0x41525256
# The warm-up at load draws its own gaps, so the measured schedule is the same with or without it.
_WARMUP_STREAM = 0x57524D55


def arrival_offsets(
    count: int, rate: float, seed: int, burstiness: float = 1.0, stream: int = 0, planned: int | None = None
) -> list[float]:
    """Scheduled send times (s from the start) of a seeded gamma renewal process.

    The first request goes at 0; gaps are gamma with shape ``burstiness`` and
    scale ``1 / (rate * burstiness)`` (``vllm bench serve``'s convention), so
    their mean is ``1/rate`` whatever the burstiness and their coefficient of
    variation ``1/sqrt(burstiness)``.  ``burstiness=1`` is a Poisson process.

    ``planned``: the first ``planned`` gaps are scaled to add up to exactly
    ``planned / rate`` (as ``vllm bench serve`` scales its schedule), so that a
    run planned at ``planned`` requests offers the requested rate itself, not a
    draw of it: unscaled, 300 Poisson arrivals offer a rate within ±5.8% (one
    std) of the one asked for, and so does a level's verdict. Later gaps take
    the same factor, so the arrivals' order and burstiness are the process's.

    ``stream`` picks one of many independent schedules of one seed: repeats
    pass their own (their seed offset) so that they sample the arrival process
    instead of replaying one draw, while runs with the same stream (trials of
    one study, levels of one goodput search) share it on purpose: common random
    numbers, so two configurations differ by their own doing, not by a luckier
    draw.  Gaps scale with ``1/rate``, and a longer schedule starts with the
    shorter one (the same ``planned``), so a run extended past its plan keeps
    the arrivals it had.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if burstiness <= 0:
        raise ValueError("burstiness must be > 0")
    if stream < 0:
        raise ValueError("stream must be >= 0")
    if planned is not None and planned < 1:
        raise ValueError("planned must be >= 1")
    if count <= 0:
        return []
    # Stream 0 keeps the key the schedules had before streams existed.
    rng = np.random.default_rng([seed, _ARRIVAL_STREAM] if stream == 0 else [seed, _ARRIVAL_STREAM, stream])
    return _schedule(rng, count, rate, burstiness, planned)


def poisson_offsets(count: int, rate: float, seed: int, stream: int = 0, planned: int | None = None) -> list[float]:
    """Scheduled send times of a seeded Poisson process: exponential gaps of mean ``1/rate``."""
    return arrival_offsets(count, rate, seed, 1.0, stream, planned)


def _schedule(
    rng: np.random.Generator, count: int, rate: float, burstiness: float, planned: int | None = None
) -> list[float]:
    # Gaps are drawn in order, so a longer draw starts with the shorter one.
    n = max(count - 1, planned or 0)
    if burstiness == 1.0:
        gaps = rng.exponential(1.0 / rate, size=n)  # exponential draws keep seeded Poisson schedules stable
    else:
        gaps = rng.gamma(burstiness, 1.0 / (rate * burstiness), size=n)
    if planned:
        gaps *= (planned / rate) / gaps[:planned].sum()
    return [0.0, *np.cumsum(gaps[: count - 1]).tolist()]


def run_offsets(workload: Workload, count: int, stream: int, planned: int | None = None) -> list[float]:
    """The send times an open-loop run of ``count`` measured requests keeps to, planned at ``planned``
    (default: all of them): the one place a run's schedule is derived, so that whoever rebuilds it
    (a trimmed level, a benchmark replaying it with another tool) gets the arrivals that were sent."""
    return arrival_offsets(count, float(workload.rate or 0), workload.seed, workload.burstiness, stream,
                           planned or count)


def warmup_offsets(count: int, workload: Workload, stream: int) -> list[float]:
    """``count`` warm-up send times and, last, when the measured schedule starts (one more gap)."""
    if count == 0:
        return []
    rng = np.random.default_rng([workload.seed, _WARMUP_STREAM, stream])
    return _schedule(rng, count + 1, float(workload.rate or 0), workload.burstiness)
