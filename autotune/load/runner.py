"""Drive a list of requests at a server under one arrival policy.

Policies, as in ``vllm bench serve``: a closed loop (a fixed number of
requests always in flight, which measures capacity) and open loops with
Poisson or gamma-distributed gaps (a fixed offered rate, which measures
latency under a load the server does not control; gamma's ``burstiness``
makes arrivals clump, below 1, or even out, above 1).  Warm-up requests go
first and are discarded so that one-off costs (CUDA graph capture,
first-request compilation, connection set-up) do not land in the figures.
A warm-up *at load* (``load_warmup``) runs under the measured policy itself
and hands over to the measured requests without a pause, so the measured
phase starts with the batch already full, not from an idle server.

The load generator watches itself: its CPU use, how late each open-loop send
left against its schedule (``loadgen_saturated`` when it fell behind: the
offered load was not the requested one) and how many sends waited for the
in-flight cap (``inflight_capped``: such a request starts its latency clock
late).  A caller judging the run as it goes can end it early: ``stop`` sees
each measured request as it finishes; True ends sending and abandons the
requests still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.load.client import CompletionsClient, RequestRecord
from autotune.load.schedule import (
    arrival_offsets,
    poisson_offsets,
    run_offsets,
    warmup_offsets,
)
from autotune.load.workload import RequestSpec, Workload

__all__ = [
    "SATURATED_LOOP_CPU",
    "SEND_LAG_TOLERANCE_S",
    "LoadResult",
    "StopFn",
    "arrival_offsets",
    "poisson_offsets",
    "run_load",
    "run_load_async",
]

log = logging.getLogger("autotune.load")

ProgressFn = Callable[[int, int], None]
# Sees (index among the measured requests, its record) as each one finishes; True ends the run.
StopFn = Callable[[int, RequestRecord], bool]

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

    ``records`` are the measured requests that finished, in the order given
    (a ``duration_s`` bound or a ``stop`` leaves the tail ``unsent``; a
    ``stop`` abandons those in flight, counted in ``cancelled``).
    ``duration_s`` runs from the first measured send to the last measured
    completion.  ``client_cpu_s`` is this process's CPU time over the measured
    phase, ``loop_cpu_s`` that of the event loop's thread alone and
    ``loop_cpu_wait_s`` how long that thread waited for a core (Linux only;
    NaN elsewhere), the mark of an engine that starves its own load generator.
    ``send_lag_s``: in an open loop, how late each send left against its
    schedule (waits for the in-flight cap excluded); ``capped_wait_s``: how
    long each send that found the cap full waited (``capped_sends`` of them).
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
    capped_wait_s: list[float] = field(default_factory=list)
    stopped_early: bool = False
    cancelled: int = 0
    unsent: int = 0
    indices: list[int] = field(default_factory=list)  # of each record among the measured requests
    load_warmup_sent: int = 0

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
            waits = self.capped_wait_s or [0.0]
            out.update(
                loadgen_send_lag_mean_ms=float(np.mean(lag)),
                loadgen_send_lag_p90_ms=typical,
                loadgen_send_lag_max_ms=float(np.max(lag)),
                loadgen_send_lag_tolerance_ms=tolerance_ms,
                loadgen_capped_sends=float(self.capped_sends),
                inflight_capped=1.0 if self.capped_sends else 0.0,
                inflight_capped_requests=float(self.capped_sends),
                inflight_capped_wait_max_ms=1000.0 * max(waits),
                inflight_capped_wait_total_s=float(sum(waits)),
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


async def run_load_async(
    base_url: str,
    model: str,
    requests: list[RequestSpec],
    workload: Workload,
    *,
    ignore_eos: bool = True,
    api_key: str | None = None,
    progress: ProgressFn | None = None,
    seed_offset: int = 0,
    load_warmup: int = 0,
    load_warmup_s: float | None = None,
    stop: StopFn | None = None,
    planned: int | None = None,
) -> LoadResult:
    """Send warm-up then measured requests; see the module docstring for policies.

    ``requests`` holds, in order, ``workload.warmup_requests`` warm-up
    requests (sent in a closed loop at ``workload.concurrency``, then drained),
    ``load_warmup`` requests of warm-up at load (sent under the measured
    policy, straight into the measured phase) and the measured requests.
    ``seed_offset`` picks the arrival schedule (``arrival_offsets``'s
    ``stream``).  ``progress(done, total)`` is called as each measured request
    finishes, then ``stop(index, record)``.  ``planned``: how many measured
    requests an open-loop run is planned at (a level that may be extended
    past its plan); their arrivals span exactly ``planned / rate``
    (``arrival_offsets``).  Default: all of them.
    """
    n_warmup = workload.warmup_requests
    if load_warmup < 0:
        raise ValueError("load_warmup must be >= 0")
    if len(requests) <= n_warmup + load_warmup:
        raise ValueError(f"{len(requests)} requests leave none to measure after {n_warmup + load_warmup} warm-up")
    warmup, at_load = requests[:n_warmup], requests[n_warmup : n_warmup + load_warmup]
    measured = requests[n_warmup + load_warmup :]

    client = CompletionsClient(
        base_url, model, ignore_eos=ignore_eos, api_key=api_key, timeout_s=workload.request_timeout_s
    )
    offsets: list[float] = []
    async with client:
        if warmup:
            await _closed_loop(client, warmup, workload.concurrency, _Tally(len(warmup), None, None), None)
        tally = _Tally(len(measured), progress, stop, discard=len(at_load))
        if workload.open_loop:
            assert workload.rate is not None  # enforced by Workload's validator
            offsets = run_offsets(workload, len(measured), seed_offset, planned)
            if workload.duration_s is not None:
                offsets = [o for o in offsets if o <= workload.duration_s]
            warm = warmup_offsets(len(at_load), workload, seed_offset)
            start = warm[-1] if warm else 0.0
            schedule = [*warm[:-1], *(start + o for o in offsets)]
            await _open_loop(client, [*at_load, *measured[: len(offsets)]], schedule, workload.concurrency, tally)
        else:
            await _closed_loop(client, [*at_load, *measured], workload.concurrency, tally, workload.duration_s,
                               load_warmup_s)
        cpu, loop_cpu, loop_wait = tally.cpu_since_measured()

    done = tally.collected()
    records = [record for _, (record, _) in done]
    duration = max(end for _, (_, end) in done) - min(r.start for r in records)
    scheduled_span = offsets[done[-1][0]] - offsets[done[0][0]] if workload.open_loop else None
    if tally.capped:
        log.warning(
            "open loop at %g req/s hit its in-flight cap of %d: %d requests were held client-side for up to "
            "%.0f ms, and their latencies start late by that much",
            workload.rate, workload.concurrency, len(tally.capped), 1000 * max(tally.capped),
        )
    return LoadResult(
        records=records,
        duration_s=duration,
        client_cpu_s=cpu,
        offered_rate=workload.rate if workload.open_loop else None,
        achieved_rate=len(records) / duration if duration > 0 else 0.0,
        loop_cpu_s=loop_cpu,
        loop_cpu_wait_s=loop_wait,
        send_lag_s=tally.lag,
        capped_sends=len(tally.capped),
        burstiness=workload.burstiness if workload.arrival == "gamma" else None,
        scheduled_span_s=scheduled_span,
        capped_wait_s=tally.capped,
        stopped_early=tally.stopped.is_set(),
        cancelled=tally.sent - tally.done,
        unsent=len(measured) - tally.sent,
        indices=[i for i, _ in done],
        load_warmup_sent=tally.warmed,
    )


def run_load(
    base_url: str, model: str, requests: list[RequestSpec], workload: Workload, **options: Any
) -> LoadResult:
    """Blocking form of ``run_load_async``, with the same keyword options, for callers without an event loop."""
    return asyncio.run(run_load_async(base_url, model, requests, workload, **options))


def _run_delay_s() -> float:
    """Seconds this thread has spent runnable but off-CPU (Linux schedstat), NaN if unknown."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return math.nan


_Outcome = tuple[RequestRecord, float]  # the record and when its send() returned


class _Tally:
    """Collects measured outcomes by index as they land; items below ``discard`` are warm-up, never kept."""

    def __init__(self, total: int, progress: ProgressFn | None, stop: StopFn | None, discard: int = 0) -> None:
        self.outcomes: list[_Outcome | None] = [None] * total
        self.discard = discard
        self.warmed = 0
        self.done = 0
        self.sent = 0
        self.progress = progress
        self.stop = stop
        self.stopped = asyncio.Event()
        self.lag: list[float] = []
        self.capped: list[float] = []
        self._clocks: tuple[float, float, float] | None = None

    def measured(self, item: int) -> bool:
        return item >= self.discard

    async def send(self, client: CompletionsClient, item: int, spec: RequestSpec) -> None:
        if not self.measured(item):
            self.warmed += 1
            await client.send(spec)
            return
        if self._clocks is None:
            self._clocks = (time.process_time(), time.thread_time(), _run_delay_s())
        index = item - self.discard
        self.sent += 1
        record = await client.send(spec)
        self.outcomes[index] = (record, time.perf_counter())
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.outcomes))
        if self.stop is not None and not self.stopped.is_set() and self.stop(index, record):
            self.stopped.set()

    def cpu_since_measured(self) -> tuple[float, float, float]:
        cpu, loop, wait = self._clocks or (time.process_time(), time.thread_time(), _run_delay_s())
        return time.process_time() - cpu, time.thread_time() - loop, _run_delay_s() - wait

    def collected(self) -> list[tuple[int, _Outcome]]:
        """Finished measured requests with their indices, in the order given."""
        return [(i, o) for i, o in enumerate(self.outcomes) if o is not None]


async def _closed_loop(
    client: CompletionsClient,
    specs: Sequence[RequestSpec],
    concurrency: int,
    tally: _Tally,
    duration_s: float | None,
    warmup_s: float | None = None,
) -> None:
    """``concurrency`` workers, each sending its next request as soon as one ends.

    With ``duration_s`` no worker starts a measured request after that many
    seconds from the first one; those in flight finish.  With ``warmup_s`` no
    worker starts a warm-up request after that many seconds; the rest of the
    warm-up is skipped, and those in flight run on into the measured phase.
    """
    queue: asyncio.Queue[tuple[int, RequestSpec]] = asyncio.Queue()
    for item in enumerate(specs):
        queue.put_nowait(item)
    deadline = [math.inf]
    warm_until = math.inf if warmup_s is None else time.perf_counter() + warmup_s

    async def worker() -> None:
        while not queue.empty() and time.perf_counter() < deadline[0] and not tally.stopped.is_set():
            item, spec = queue.get_nowait()
            if item < tally.discard and time.perf_counter() >= warm_until:
                continue
            if item == tally.discard and duration_s is not None:
                deadline[0] = time.perf_counter() + duration_s
            await tally.send(client, item, spec)

    await _until_done_or_stopped([asyncio.ensure_future(worker()) for _ in range(concurrency)], tally.stopped)


async def _open_loop(
    client: CompletionsClient,
    specs: Sequence[RequestSpec],
    offsets: Sequence[float],
    concurrency: int,
    tally: _Tally,
) -> None:
    """Launch each request at its scheduled time, whatever the server's state.

    Lateness does not accumulate: each launch aims at ``t0 + offset``, so a
    slow wake-up is caught up on the next request.  The semaphore only bounds
    in-flight requests; a request waiting on it is queued client-side and its
    latency clock starts when it is actually sent.  Measured launches log their
    lateness (before any wait for a slot) in ``tally.lag``, slot waits in ``tally.capped``.
    """
    slots = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()

    async def launch(item: int, spec: RequestSpec, due: float) -> None:
        measured = tally.measured(item)
        if measured:
            tally.lag.append(max(0.0, time.perf_counter() - due))
        held = time.perf_counter() if slots.locked() else None
        async with slots:
            if measured and held is not None:
                tally.capped.append(time.perf_counter() - held)
            await tally.send(client, item, spec)

    tasks: list[asyncio.Task[None]] = []
    try:
        for item, (spec, offset) in enumerate(zip(specs, offsets, strict=True)):
            due = t0 + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await _sleep(delay, tally.stopped if tally.stop is not None else None)
            if tally.stopped.is_set():
                break
            tasks.append(asyncio.create_task(launch(item, spec, due)))
    except BaseException:
        await _cancel(tasks)
        raise
    await _until_done_or_stopped(tasks, tally.stopped)


async def _sleep(delay: float, wake: asyncio.Event | None) -> None:
    """Sleep, or less if ``wake`` is set first (only runs that can stop pay for the extra timer)."""
    if wake is None:
        return await asyncio.sleep(delay)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(wake.wait(), delay)


async def _until_done_or_stopped(tasks: Sequence[asyncio.Future[None]], stopped: asyncio.Event) -> None:
    """Await every task, but abandon those still running once ``stopped`` is set.

    If one raises (e.g. a progress callback) or we are cancelled, the rest are stopped too.
    """
    gathered = asyncio.gather(*tasks)
    waiter = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({gathered, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if gathered.done():
            gathered.result()  # re-raises a task's exception
    except BaseException:
        await _cancel([*tasks, waiter])
        raise
    await _cancel([*tasks, waiter])
    if not gathered.cancelled():
        gathered.exception()  # retrieved, so asyncio does not log it as lost


async def _cancel(tasks: Sequence[asyncio.Future[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
