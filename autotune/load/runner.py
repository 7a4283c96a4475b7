"""Drive a list of requests at a server under one arrival policy.

Two policies, as in ``vllm bench serve``: a closed loop (a fixed number of
requests always in flight, which measures capacity) and an open loop with
Poisson arrivals (a fixed offered rate, which measures latency under a load
the server does not control).  Warm-up requests go first and are discarded so
that one-off costs (CUDA graph capture, first-request compilation, connection
set-up) do not land in the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from autotune.load.client import CompletionsClient, RequestRecord
from autotune.load.workload import RequestSpec, Workload

__all__ = ["LoadResult", "poisson_offsets", "run_load", "run_load_async"]

ProgressFn = Callable[[int, int], None]

# Mixed into the workload seed so arrival times and prompts use unrelated streams.
_ARRIVAL_STREAM = 0x41525256


@dataclass
class LoadResult:
    """Figures of the measured phase only; warm-up leaves no trace here.

    ``records`` are in the order of the measured requests given.
    ``duration_s`` runs from the first measured send to the last measured
    completion.  ``client_cpu_s`` is this process's CPU time over the measured
    phase: when it nears ``duration_s`` the load generator itself was the
    bottleneck and the latencies are suspect.
    """

    records: list[RequestRecord]
    duration_s: float
    client_cpu_s: float
    offered_rate: float | None
    achieved_rate: float


def poisson_offsets(count: int, rate: float, seed: int) -> list[float]:
    """Scheduled send times (s from the start) of a seeded Poisson process.

    The first request goes at 0; gaps are exponential with mean ``1/rate``.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if count <= 0:
        return []
    rng = np.random.default_rng([seed, _ARRIVAL_STREAM])
    gaps = rng.exponential(1.0 / rate, size=count - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


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
    async with client:
        if warmup:
            await _closed_loop(client, warmup, workload.concurrency, None)
        cpu_before = time.process_time()
        if workload.arrival == "poisson":
            assert workload.rate is not None  # enforced by Workload's validator
            offsets = poisson_offsets(len(measured), workload.rate, workload.seed)
            outcomes = await _open_loop(client, measured, offsets, workload.concurrency, progress)
        else:
            outcomes = await _closed_loop(client, measured, workload.concurrency, progress)
        client_cpu_s = time.process_time() - cpu_before

    records = [record for record, _ in outcomes]
    duration = max(done for _, done in outcomes) - min(r.start for r in records)
    return LoadResult(
        records=records,
        duration_s=duration,
        client_cpu_s=client_cpu_s,
        offered_rate=workload.rate if workload.arrival == "poisson" else None,
        achieved_rate=len(records) / duration if duration > 0 else 0.0,
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
        assert all(o is not None for o in self.outcomes)
        return [o for o in self.outcomes if o is not None]


async def _closed_loop(
    client: CompletionsClient,
    specs: Sequence[RequestSpec],
    concurrency: int,
    progress: ProgressFn | None,
) -> list[_Outcome]:
    """``concurrency`` workers, each sending its next request as soon as one ends."""
    tally = _Tally(len(specs), progress)
    queue: asyncio.Queue[tuple[int, RequestSpec]] = asyncio.Queue()
    for item in enumerate(specs):
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
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
) -> list[_Outcome]:
    """Launch each request at its scheduled time, whatever the server's state.

    Lateness does not accumulate: each launch aims at ``t0 + offset``, so a
    slow wake-up is caught up on the next request.  The semaphore only bounds
    in-flight requests; a request waiting on it is queued client-side and its
    latency clock starts when it is actually sent.
    """
    tally = _Tally(len(specs), progress)
    slots = asyncio.Semaphore(concurrency)

    async def launch(index: int, spec: RequestSpec) -> None:
        async with slots:
            await tally.send(client, index, spec)

    tasks: list[asyncio.Task[None]] = []
    try:
        t0 = time.perf_counter()
        for index, (spec, offset) in enumerate(zip(specs, offsets, strict=True)):
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(launch(index, spec)))
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
