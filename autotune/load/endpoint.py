"""Goodput levels against a live OpenAI-compatible server: the ``measure`` that ``search_goodput`` calls.

One ``endpoint_measure`` serves one engine start: it warms the engine up at
the first level's own load, once, and then measures level after level, each
as the statistical test of ``autotune.load.levels`` (extended while
uncertain, cut short once condemned) when it is told the SLOs.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from autotune.load.levels import LevelStopper, confidence_of, statistical
from autotune.load.prompts import PromptTokenizer, build_requests
from autotune.load.runner import LoadResult, run_load
from autotune.load.schedule import run_offsets
from autotune.load.stats import per_request_view, summarize
from autotune.load.workload import Workload
from autotune.spec.slo import Constraint

__all__ = ["DEFAULT_INFLIGHT_HORIZON_S", "endpoint_measure", "workload_at_level"]

Measure = Callable[[float], tuple[dict[str, Any], list[dict[str, Any]]]]
_UNITS: tuple[str, ...] = ("req/s", "concurrency")
# In an open loop the in-flight cap should never bind at a load the server can
# sustain; see workload_at_level.
DEFAULT_INFLIGHT_HORIZON_S = 8.0
# A warm-up at load runs one closed-loop request set at most this many times over,
# and, unless asked for more, no longer than this (a probe slowed by a stall must not
# turn into minutes of warm-up).
_MAX_WARMUP_ROUNDS = 50
_MAX_WARMUP_S = 60.0


def workload_at_level(
    workload: Workload,
    unit: Literal["req/s", "concurrency"],
    load: float,
    *,
    inflight_horizon_s: float = DEFAULT_INFLIGHT_HORIZON_S,
    min_duration_s: float | None = None,
) -> Workload:
    """The workload to offer at one level, re-validated.

    ``"concurrency"``: a closed loop with ``int(load)`` requests in flight.

    ``"req/s"``: Poisson arrivals at ``rate=load`` (gamma arrivals with the
    workload's burstiness, if it has them).  ``concurrency`` stays the
    in-flight cap (so an overloaded server cannot make the client open
    unbounded connections) but is raised to at least
    ``ceil(rate * inflight_horizon_s)``.  The cap must not bind at a load the
    server can sustain: a request waiting for a slot is queued client-side and
    its latency clock starts only when sent, so a binding cap hides the
    server's queueing and flatters TTFT exactly where goodput is decided (a
    run where it bound says so: ``inflight_capped``).  By Little's law the
    mean number in flight is ``rate * mean lifetime``, so the cap binds only
    once requests live about ``inflight_horizon_s`` (8 s) on average, by which
    point interactive latency SLOs have long failed.  For workloads whose
    requests last longer by design (long outputs), pass a larger horizon or a
    larger ``workload.concurrency``.
    """
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {', '.join(_UNITS)}, got {unit!r}")
    if not load > 0:
        raise ValueError("load must be > 0")
    fields = workload.model_dump()
    if min_duration_s and unit == "req/s":
        # Long enough at this rate for a queue to build if the server cannot keep up.
        fields["num_requests"] = max(workload.num_requests, math.ceil(load * min_duration_s))
    if unit == "concurrency":
        if int(load) < 1:
            raise ValueError("a concurrency level must be >= 1")
        fields.update(arrival="concurrency", concurrency=int(load))
    else:
        cap = max(workload.concurrency, math.ceil(load * inflight_horizon_s))
        # A gamma workload keeps its burstiness at every rate; anything else is Poisson.
        arrival = "gamma" if workload.arrival == "gamma" else "poisson"
        fields.update(arrival=arrival, rate=float(load), concurrency=cap)
    return Workload.model_validate(fields)


def endpoint_measure(
    base_url: str,
    model: str,
    tokenizer: PromptTokenizer,
    vocab_size: int,
    workload: Workload,
    *,
    unit: Literal["req/s", "concurrency"],
    ignore_eos: bool = True,
    api_key: str | None = None,
    inflight_horizon_s: float = DEFAULT_INFLIGHT_HORIZON_S,
    progress: Callable[[int, int], None] | None = None,
    min_duration_s: float | None = None,
    seed_offset: int = 0,
    constraints: Sequence[Constraint] = (),
    confidence_z: float = 1.96,
    extend: float = 2.0,
    design_effect: float = 1.0,
    warmup_s: float = 5.0,
    warmup_latencies: float = 3.0,
    metrics_url: str | None = None,
    metric_names: Mapping[str, tuple[str, ...]] | None = None,
    metrics_headers: Mapping[str, str] | None = None,
    metrics_hz: float = 4.0,
) -> Measure:
    """A ``measure`` for ``search_goodput`` that loads a live server; create one per engine start.

    Each call offers ``workload_at_level(workload, unit, load)`` and returns
    ``(summarize(result), per_request_view(records))``, each request's row
    with its send time ``start_s`` (s from the level's first send).

    Prompts: every call draws its own (``seed_offset`` + 1, + 2, ... in call
    order; 0 is what a plain trial run uses, a repeat passes its own), so no
    level re-sends prompts an earlier level left in the prefix cache, which
    would flatter later levels.  Arrivals: every level of one search replays
    the schedule of ``seed_offset`` (``arrival_offsets``'s stream), scaled to
    its rate and to span exactly its planned requests, so differences between levels come from the load and not from a
    luckier draw; trials of one study with the same ``seed_offset`` share it
    too (common random numbers), while each repeat, with its own offset,
    samples the arrival process anew.

    Warm-up: before the first level, ``workload.warmup_requests`` requests
    (twice) gauge the end-to-end latency ``L`` of an idle server; then the
    first level runs a warm-up at its own load for ``max(warmup_s,
    warmup_latencies * L)`` seconds (at most a minute unless ``warmup_s``
    says more) straight into its measured requests, so that first-batch
    allocation and compilation never land in a measured level.
    ``warmup_s=0`` turns that off (later levels keep the plain warm-up).

    With ``constraints`` (the search's SLOs), each level is a statistical
    test (``LevelStopper``): it stops early once its percentile or attainment
    SLOs are settled, or condemned, and an uncertain level runs on to
    ``extend`` times its planned requests; ``design_effect`` widens the test
    for misses that cluster in time.  Figures then carry
    ``planned_requests``, ``max_requests``, ``extended``, ``stopped_early``
    and ``stop_reason``.  With ``metrics_url`` (the engine's Prometheus
    endpoint, polled ``metrics_hz`` times a second: each poll costs a CPU
    engine some serving time) the figures also carry ``engine_queue``: the
    engine's waiting and running request counts over the level, on the clock
    of ``start_s``, from which ``search_goodput`` judges a backlog.  Each call blocks on its
    own event loop (``run_load``), so do not call it from inside a running one.
    """
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {', '.join(_UNITS)}, got {unit!r}")
    if extend < 1:
        raise ValueError("extend must be >= 1")
    calls = itertools.count(seed_offset + 1)
    slos = [c for c in constraints if statistical(c)]
    confidence = confidence_of(confidence_z)
    warm = [warmup_s > 0]

    def measure(load: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        level = workload_at_level(
            workload, unit, load, inflight_horizon_s=inflight_horizon_s, min_duration_s=min_duration_s
        )
        planned = level.num_requests
        cap = max(planned, math.ceil(planned * extend)) if slos else planned
        stopper = (LevelStopper(slos, planned, cap, confidence=confidence, design_effect=design_effect)
                   if slos else None)
        offset = next(calls)
        plain_warmup, at_load, warm_for = level.warmup_requests, 0, 0.0
        if warm[0]:
            warm[0] = False
            latency = _idle_latency(base_url, model, tokenizer, vocab_size, level, offset, ignore_eos, api_key)
            warm_for = min(max(warmup_s, warmup_latencies * latency), max(warmup_s, _MAX_WARMUP_S))
            if level.open_loop:
                at_load = math.ceil(float(level.rate or 0) * warm_for)
            else:
                rounds = warm_for / latency if latency > 0 else _MAX_WARMUP_ROUNDS
                at_load = math.ceil(level.concurrency * min(rounds, _MAX_WARMUP_ROUNDS))
            plain_warmup = 0
        specs = build_requests(level, tokenizer, vocab_size, count=plain_warmup + at_load + cap, seed_offset=offset)
        run = level.model_copy(update={"warmup_requests": plain_warmup, "num_requests": cap})
        with _QueueWatch(metrics_url, metric_names, metrics_headers, metrics_hz) as queue:
            result = run_load(
                base_url, model, specs, run, ignore_eos=ignore_eos, api_key=api_key, progress=progress,
                seed_offset=seed_offset, load_warmup=at_load, load_warmup_s=warm_for or None, stop=stopper,
                planned=planned,
            )
        figures: dict[str, Any] = {}
        if stopper is not None:
            result, figures = _settle(result, stopper, run, seed_offset, planned)
            figures.update(planned_requests=planned, max_requests=cap)
        out: dict[str, Any] = dict(summarize(result))
        out.update(figures, load_warmup_s=warm_for, load_warmup_requests=result.load_warmup_sent)
        first = min(r.start for r in result.records)
        if metrics_url:
            out["engine_queue"] = queue.series(first)
        rows = per_request_view(result.records)
        for row, record in zip(rows, result.records, strict=True):
            row["start_s"] = record.start - first
        return out, rows

    return measure


def _settle(
    result: LoadResult, stopper: LevelStopper, run: Workload, stream: int, planned: int
) -> tuple[LoadResult, dict[str, Any]]:
    """The level as judged: the requests of the look that settled it, or those that condemned it."""
    cut_short = result.stopped_early and stopper.decided_at is None
    keep = stopper.decided_at or (stopper.looks[stopper.look] if cut_short else None)
    figures: dict[str, Any] = {
        "extended": 1.0 if (stopper.decided_at or len(result.records)) > stopper.looks[0] else 0.0,
        "stopped_early": 1.0 if cut_short else 0.0,
        "stop_reason": stopper.reason,
    }
    if cut_short:
        figures["cut_short_of"] = keep
    if keep is None or all(i < keep for i in result.indices):
        return result, figures
    kept = [(i, r) for i, r in zip(result.indices, result.records, strict=True) if i < keep]
    records = [r for _, r in kept]
    ends = [r.start + (r.e2e_s if r.e2e_s is not None else (r.ttft_s or 0.0)) for r in records]
    duration = max(ends) - min(r.start for r in records)
    span = None
    if run.open_loop and run.rate:
        offsets = run_offsets(run, kept[-1][0] + 1, stream, planned)
        span = offsets[kept[-1][0]] - offsets[kept[0][0]]
    trimmed = replace(
        result, records=records, indices=[i for i, _ in kept], duration_s=duration,
        achieved_rate=len(records) / duration if duration > 0 else 0.0, scheduled_span_s=span,
    )
    return trimmed, figures


def _idle_latency(
    base_url: str, model: str, tokenizer: PromptTokenizer, vocab_size: int, level: Workload, offset: int,
    ignore_eos: bool, api_key: str | None,
) -> float:
    """Median end-to-end latency (s) of the workload's warm-up requests sent together; 0.0 if none finished.

    The requests go twice, and only the second round is timed: the first
    request of a cold engine carries its one-off compilation, which would
    otherwise stretch the warm-up by a multiple of it.
    """
    n = max(1, level.warmup_requests)
    probe = level.model_copy(
        update={"arrival": "concurrency", "concurrency": n, "num_requests": n, "warmup_requests": n, "duration_s": None}
    )
    # Its own prompts: offsets above 2**20 are out of reach of the levels' (seed_offset + call count).
    specs = build_requests(probe, tokenizer, vocab_size, count=2 * n, seed_offset=offset + 2**20)
    result = run_load(base_url, model, specs, probe, ignore_eos=ignore_eos, api_key=api_key)
    latencies = [r.e2e_s for r in result.records if r.ok and r.e2e_s is not None]
    return statistics.median(latencies) if latencies else 0.0


class _QueueWatch:
    """The engine's waiting and running counts over one level, if a metrics URL was given."""

    def __init__(self, url: str | None, names: Mapping[str, tuple[str, ...]] | None,
                 headers: Mapping[str, str] | None, hz: float) -> None:
        self.scraper: Any = None
        if url:
            from autotune.telemetry.engine_metrics import EngineMetricsScraper

            self.scraper = EngineMetricsScraper(url, names=names, hz=hz, headers=headers)
        # Snapshots are stamped with time.monotonic(), requests with time.perf_counter().
        self.shift = time.perf_counter() - time.monotonic()

    def __enter__(self) -> _QueueWatch:
        if self.scraper is not None:
            self.scraper.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.scraper is not None:
            self.scraper.stop()

    def series(self, first_send: float) -> dict[str, list[float | None]]:
        """``t`` (s from ``first_send``), ``waiting`` and ``running``, one entry per scrape."""
        if self.scraper is None:
            return {"t": [], "waiting": [], "running": []}
        snaps = [s for s in (self.scraper.before, *self.scraper.polls, self.scraper.after) if s is not None]
        return {
            "t": [round(s.t + self.shift - first_send, 3) for s in snaps],
            "waiting": [s.gauges.get("waiting") for s in snaps],
            "running": [s.gauges.get("running") for s in snaps],
        }
