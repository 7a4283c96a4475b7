"""Drive a list of requests at a server under one arrival policy.

Policies, as in ``vllm bench serve``: a closed loop (a fixed number of
requests always in flight, which measures capacity) and open loops with
Poisson or gamma-distributed gaps (a fixed offered rate, which measures
latency under a load the server does not control; gamma's ``burstiness``
makes arrivals clump, below 1, or even out, above 1).  Warm-up requests go
first and are discarded so that one-off costs (CUDA graph capture,
first-request compilation, connection set-up) do not land in the figures.

The load generator watches itself: a run records its own CPU use and, in an
open loop, how late each send left against its schedule.  When the event loop
was nearly always busy, or sends fell behind the schedule, the offered load
was not the requested one and the run says so (``loadgen_saturated``) instead
of reporting a server's figures that the client distorted.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from autotune.load.client import CompletionsClient, RequestRecord
from autotune.load.workload import RequestSpec, Workload

__all__ = [
    "SATURATED_LOOP_CPU",
    "SEND_LAG_TOLERANCE_S",
    "LoadResult",
    "arrival_offsets",
    "poisson_offsets",
    "run_load",
    "run_load_async",
]

ProgressFn = Callable[[int, int], None]

# Mixed into the workload seed so arrival times and prompts use unrelated streams.
_ARRIVAL_STREAM = 0x41525256
# The event loop is one thread: above this share of one core it is the bottleneck,
# and its timestamps lag the network by however long each callback waited.
SATURATED_LOOP_CPU = 0.90
# Sends may run late by one mean inter-arrival gap, and never less than this, at the
# 90th percentile. Jitter within a gap leaves the arrival process intact; beyond it
# arrivals bunch up and the offered process is no longer the requested one. The
# floor absorbs the few milliseconds an OS takes to wake a sleeping process.
SEND_LAG_TOLERANCE_S = 0.010
_LAG_QUANTILE = 90


@dataclass
class LoadResult:
    """Figures of the measured phase only; warm-up leaves no trace here.

    ``records`` are the measured requests actually sent, in the order given
    (a ``duration_s`` bound can leave the tail unsent).  ``duration_s`` runs
    from the first measured send to the last measured completion.
    ``client_cpu_s`` is this process's CPU time over the measured phase and
    ``loop_cpu_s`` that of the event loop's thread alone; ``loop_cpu_wait_s``
    is how long that thread was ready to run but waited for a core (Linux
    only; NaN elsewhere), the mark of an engine that starves its own load
    generator on a shared machine.  ``send_lag_s`` holds, for an open loop,
    how late each send left against its schedule (waits for the in-flight cap
    excluded; ``capped_sends`` counts those).
    """

    records: list[RequestRecord]
    duration_s: float
    client_cpu_s: float
    offered_rate: float | None
    achieved_rate: float
    loop_cpu_s: float = math.nan
    loop_cpu_wait_s: float = math.nan
    send_lag_s: list[float] = field(default_factory=list)
    capped_sends: int = 0
    burstiness: float | None = None
    scheduled_span_s: float | None = None

    def health(self) -> dict[str, float]:
        """The load generator's own figures, and whether it kept up (1) or not (0)."""
        duration = self.duration_s
        cpu = self.client_cpu_s / duration if duration > 0 else math.nan
        loop = self.loop_cpu_s / duration if duration > 0 else math.nan
        out: dict[str, float] = {
            "loadgen_cpu_percent": 100.0 * cpu,
            "loadgen_loop_cpu_percent": 100.0 * loop,
        }
        if math.isfinite(self.loop_cpu_wait_s) and duration > 0:
            out["loadgen_cpu_wait_percent"] = 100.0 * self.loop_cpu_wait_s / duration
        saturated = math.isfinite(loop) and loop >= SATURATED_LOOP_CPU
        if self.offered_rate is not None:
            lag = np.asarray(self.send_lag_s or [0.0]) * 1000.0
            typical = float(np.percentile(lag, _LAG_QUANTILE))
            tolerance_ms = 1000.0 * max(SEND_LAG_TOLERANCE_S, 1.0 / self.offered_rate)
            out.update(
                loadgen_send_lag_mean_ms=float(np.mean(lag)),
                loadgen_send_lag_p90_ms=typical,
                loadgen_send_lag_max_ms=float(np.max(lag)),
                loadgen_send_lag_tolerance_ms=tolerance_ms,
                loadgen_capped_sends=float(self.capped_sends),
            )
            saturated = saturated or typical > tolerance_ms
        out["loadgen_saturated"] = 1.0 if saturated else 0.0
        return out


def send_rate_ratio(result: LoadResult) -> float | None:
    """How fast the client sent against its own schedule (1.0: on time), open loop only.

    ``achieved_rate`` counts completions over a window that includes the drain
    of the last requests, so it sits below the offered rate whenever requests
    take seconds, however well the client keeps up.  The span between the
    first and the last send, against the span the schedule asked for, is what
    tells whether the load generator kept the rate; comparing spans of the
    same Poisson draw also removes the draw's own deviation from ``rate``.
    """
    if not result.scheduled_span_s or len(result.records) < 2:
        return None
    starts = [r.start for r in result.records]
    sent = max(starts) - min(starts)
    return result.scheduled_span_s / sent if sent > 0 else None


def arrival_offsets(count: int, rate: float, seed: int, burstiness: float = 1.0) -> list[float]:
    """Scheduled send times (s from the start) of a seeded gamma renewal process.

    The first request goes at 0; gaps are gamma with shape ``burstiness`` and
    scale ``1 / (rate * burstiness)`` (``vllm bench serve``'s convention), so
    their mean is ``1/rate`` whatever the burstiness and their coefficient of
    variation ``1/sqrt(burstiness)``.  ``burstiness=1`` is a Poisson process.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if burstiness <= 0:
        raise ValueError("burstiness must be > 0")
    if count <= 0:
        return []
    rng = np.random.default_rng([seed, _ARRIVAL_STREAM])
    if burstiness == 1.0:
        gaps = rng.exponential(1.0 / rate, size=count - 1)  # exponential draws keep seeded Poisson schedules stable
    else:
        gaps = rng.gamma(burstiness, 1.0 / (rate * burstiness), size=count - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


def poisson_offsets(count: int, rate: float, seed: int) -> list[float]:
    """Scheduled send times of a seeded Poisson process: exponential gaps of mean ``1/rate``."""
    return arrival_offsets(count, rate, seed, 1.0)


async def run_load_async(
    base_url: str,
    model: str,
    requests: list[RequestSpec],
    workload: Workload,
    *,
    ignore_eos: bool = True,
    api_key: str | None = None,
    progress: ProgressFn | None = None,
) -> LoadResult:
    """Send warm-up then measured requests; see the module docstring for policies.

    The first ``workload.warmup_requests`` items of ``requests`` are warm-up,
    sent in a closed loop at ``workload.concurrency``; the rest are measured.
    ``progress(done, total)`` is called as each measured request finishes.
    """
    n_warmup = workload.warmup_requests
    if len(requests) <= n_warmup:
        raise ValueError(f"{len(requests)} requests leave none to measure after {n_warmup} warm-up")
    warmup, measured = requests[:n_warmup], requests[n_warmup:]

    client = CompletionsClient(
        base_url, model, ignore_eos=ignore_eos, api_key=api_key, timeout_s=workload.request_timeout_s
    )
    lag: list[float] = []
    capped = [0]
    async with client:
        if warmup:
            await _closed_loop(client, warmup, workload.concurrency, None, None)
        cpu_before, loop_before, wait_before = time.process_time(), time.thread_time(), _run_delay_s()
        if workload.open_loop:
            assert workload.rate is not None  # enforced by Workload's validator
            offsets = arrival_offsets(len(measured), workload.rate, workload.seed, workload.burstiness)
            if workload.duration_s is not None:
                offsets = [o for o in offsets if o <= workload.duration_s]
            outcomes = await _open_loop(
                client, measured[: len(offsets)], offsets, workload.concurrency, progress, lag, capped
            )
        else:
            outcomes = await _closed_loop(client, measured, workload.concurrency, progress, workload.duration_s)
        client_cpu_s = time.process_time() - cpu_before
        loop_cpu_s = time.thread_time() - loop_before
        loop_cpu_wait_s = _run_delay_s() - wait_before

    records = [record for record, _ in outcomes]
    duration = max(done for _, done in outcomes) - min(r.start for r in records)
    scheduled_span = offsets[len(records) - 1] - offsets[0] if workload.open_loop and records else None
    return LoadResult(
        records=records,
        duration_s=duration,
        client_cpu_s=client_cpu_s,
        offered_rate=workload.rate if workload.open_loop else None,
        achieved_rate=len(records) / duration if duration > 0 else 0.0,
        loop_cpu_s=loop_cpu_s,
        loop_cpu_wait_s=loop_cpu_wait_s,
        send_lag_s=lag,
        capped_sends=capped[0],
        burstiness=workload.burstiness if workload.arrival == "gamma" else None,
        scheduled_span_s=scheduled_span,
    )


def run_load(
    base_url: str,
    model: str,
    requests: list[RequestSpec],
    workload: Workload,
    *,
    ignore_eos: bool = True,
    api_key: str | None = None,
    progress: ProgressFn | None = None,
) -> LoadResult:
    """Blocking form of ``run_load_async`` for callers without an event loop."""
    return asyncio.run(
        run_load_async(base_url, model, requests, workload, ignore_eos=ignore_eos, api_key=api_key, progress=progress)
    )


def _run_delay_s() -> float:
    """Seconds this thread has spent runnable but off-CPU (Linux schedstat), NaN if unknown."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return math.nan


_Outcome = tuple[RequestRecord, float]  # the record and when its send() returned


class _Tally:
    """Collects outcomes by index and reports progress as they land."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.outcomes: list[_Outcome | None] = [None] * total
        self.done = 0
        self.progress = progress

    async def send(self, client: CompletionsClient, index: int, spec: RequestSpec) -> None:
        record = await client.send(spec)
        self.outcomes[index] = (record, time.perf_counter())
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.outcomes))

    def collected(self) -> list[_Outcome]:
        """Outcomes of the requests sent, in the order given (a deadline can leave some unsent)."""
        return [o for o in self.outcomes if o is not None]


async def _closed_loop(
    client: CompletionsClient,
    specs: Sequence[RequestSpec],
    concurrency: int,
    progress: ProgressFn | None,
    duration_s: float | None,
) -> list[_Outcome]:
    """``concurrency`` workers, each sending its next request as soon as one ends.

    With ``duration_s`` no worker starts a request after that many seconds;
    those in flight finish.
    """
    tally = _Tally(len(specs), progress)
    queue: asyncio.Queue[tuple[int, RequestSpec]] = asyncio.Queue()
    for item in enumerate(specs):
        queue.put_nowait(item)
    deadline = math.inf if duration_s is None else time.perf_counter() + duration_s

    async def worker() -> None:
        while not queue.empty() and time.perf_counter() < deadline:
            index, spec = queue.get_nowait()
            await tally.send(client, index, spec)

    await _all_or_none([worker() for _ in range(concurrency)])
    return tally.collected()


async def _open_loop(
    client: CompletionsClient,
    specs: Sequence[RequestSpec],
    offsets: Sequence[float],
    concurrency: int,
    progress: ProgressFn | None,
    lag: list[float],
    capped: list[int],
) -> list[_Outcome]:
    """Launch each request at its scheduled time, whatever the server's state.

    Lateness does not accumulate: each launch aims at ``t0 + offset``, so a
    slow wake-up is caught up on the next request.  The semaphore only bounds
    in-flight requests; a request waiting on it is queued client-side and its
    latency clock starts when it is actually sent.  Each launch appends its
    lateness against the schedule to ``lag`` (the event loop's own delay,
    before any wait for a slot) and counts a wait for a slot in ``capped[0]``.
    """
    tally = _Tally(len(specs), progress)
    slots = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()

    async def launch(index: int, spec: RequestSpec, due: float) -> None:
        lag.append(max(0.0, time.perf_counter() - due))
        if slots.locked():
            capped[0] += 1
        async with slots:
            await tally.send(client, index, spec)

    tasks: list[asyncio.Task[None]] = []
    try:
        for index, (spec, offset) in enumerate(zip(specs, offsets, strict=True)):
            due = t0 + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(launch(index, spec, due)))
    except BaseException:
        await _cancel(tasks)
        raise
    await _all_or_none(tasks)
    return tally.collected()


async def _all_or_none(aws: Sequence[Awaitable[None]]) -> None:
    """Await all; if one raises (e.g. a progress callback) or we are cancelled, stop the rest."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        await _cancel(tasks)
        raise


async def _cancel(tasks: Sequence[asyncio.Future[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
