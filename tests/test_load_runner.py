"""Arrival processes, bounded runs and the load generator's view of its own health.

Inter-arrival distributions are tested on the generated schedule with
Kolmogorov-Smirnov tests (seeded, so a verdict never flips between runs);
runs go against the streaming test server of ``test_load_client``.  Nothing
here asserts that something was fast: where timing matters, the server's own
sleeps give a lower bound that a slower machine can only widen.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from autotune.load.goodput import workload_at_level
from autotune.load.runner import (
    SATURATED_LOOP_CPU,
    SEND_LAG_TOLERANCE_S,
    LoadResult,
    arrival_offsets,
    poisson_offsets,
    run_load,
    run_load_async,
)
from autotune.load.stats import summarize
from autotune.load.workload import Workload
from tests.test_load_client import HOLD_S, SPLIT_GAP_S, FakeEngine, _serve, _spec

# --- the schedule ------------------------------------------------------------

N_GAPS = 4000
# With this many gaps a KS test at 1% would reject a wrong shape by a wide margin
# (see test_ks_tells_burstiness_apart); the seeds fix every verdict.
ALPHA = 0.01


def _gaps(offsets: list[float]) -> np.ndarray:
    return np.diff(np.asarray(offsets))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rate", [0.5, 20.0, 800.0])
def test_poisson_gaps_are_exponential(seed: int, rate: float) -> None:
    offsets = poisson_offsets(N_GAPS + 1, rate, seed)
    assert offsets[0] == 0.0
    gaps = _gaps(offsets)
    assert (gaps >= 0).all()
    result = stats.kstest(gaps, stats.expon(scale=1 / rate).cdf)
    assert result.pvalue > ALPHA, result


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0, 8.0])
def test_gamma_gaps_follow_vllm_convention(seed: int, burstiness: float) -> None:
    rate = 10.0
    gaps = _gaps(arrival_offsets(N_GAPS + 1, rate, seed, burstiness))
    assert (gaps >= 0).all()
    expected = stats.gamma(a=burstiness, scale=1 / (rate * burstiness))
    result = stats.kstest(gaps, expected.cdf)
    assert result.pvalue > ALPHA, result
    # The mean gap is 1/rate whatever the burstiness; the spread is 1/sqrt(burstiness).
    assert gaps.mean() == pytest.approx(1 / rate, rel=5 * (1 / math.sqrt(burstiness)) / math.sqrt(N_GAPS))
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.1)


def test_ks_tells_burstiness_apart() -> None:
    """The tests above have power: bursty gaps are not taken for Poisson ones."""
    rate = 10.0
    bursty = _gaps(arrival_offsets(N_GAPS + 1, rate, 0, 0.5))
    regular = _gaps(arrival_offsets(N_GAPS + 1, rate, 0, 2.0))
    poisson = stats.expon(scale=1 / rate).cdf
    assert stats.kstest(bursty, poisson).pvalue < 1e-6
    assert stats.kstest(regular, poisson).pvalue < 1e-6


def test_burstiness_one_is_the_poisson_schedule() -> None:
    assert arrival_offsets(50, 3.0, 7, 1.0) == poisson_offsets(50, 3.0, 7)
    assert arrival_offsets(50, 3.0, 7, 0.5) == arrival_offsets(50, 3.0, 7, 0.5)
    assert arrival_offsets(50, 3.0, 7, 0.5) != arrival_offsets(50, 3.0, 8, 0.5)
    assert arrival_offsets(0, 3.0, 7, 0.5) == []
    with pytest.raises(ValueError):
        arrival_offsets(5, 3.0, 7, 0.0)


def test_gamma_workloads_validate() -> None:
    w = Workload(arrival="gamma", rate=5.0, burstiness=0.5)
    assert w.open_loop and w.burstiness == 0.5
    assert Workload(arrival="poisson", rate=5.0).open_loop
    assert not Workload().open_loop
    for bad in (
        {"arrival": "gamma"},  # no rate
        {"arrival": "gamma", "rate": 1.0, "burstiness": 0},
        {"arrival": "poisson", "rate": 1.0, "burstiness": 0.5},  # burstiness only shapes gamma
        {"burstiness": 2.0},
        {"duration_s": 0},
    ):
        with pytest.raises(ValidationError):
            Workload(**bad)  # type: ignore[arg-type]


def test_goodput_levels_keep_gamma_arrivals() -> None:
    w = Workload(arrival="gamma", rate=1.0, burstiness=0.25)
    level = workload_at_level(w, "req/s", 12.0)
    assert (level.arrival, level.rate, level.burstiness) == ("gamma", 12.0, 0.25)
    assert workload_at_level(Workload(), "req/s", 3.0).arrival == "poisson"


# --- runs against the streaming test server ---------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine()
    with _serve(engine) as url:
        yield url, engine


@pytest.fixture
def url(server: tuple[str, FakeEngine]) -> str:
    engine = server[1]
    for _ in range(1000):
        if engine.in_flight == 0:
            break
        time.sleep(0.01)
    engine.reset()
    return server[0]


def test_open_loop_warmup_is_left_out(url: str, server: tuple[str, FakeEngine]) -> None:
    engine = server[1]
    workload = Workload(arrival="gamma", rate=100.0, burstiness=0.5, num_requests=20, warmup_requests=3, seed=4)
    warmup = [_spec(tokens=2, prompt_tokens=999, tag=100 + i) for i in range(3)]
    measured = [_spec(tokens=4, prompt_tokens=10, tag=i) for i in range(20)]
    result = run_load(url, "m", warmup + measured, workload)
    assert len(engine.bodies) == 23
    assert {b["prompt"] for b in engine.bodies[:3]} == {s.prompt for s in warmup}
    assert [r.prompt_tokens for r in result.records] == [10] * 20
    figures = summarize(result)
    assert figures["completed"] == 20 and figures["total_input_tokens"] == 200
    assert figures["offered_rate"] == 100.0 and figures["burstiness"] == 0.5
    assert len(result.send_lag_s) == 20 and all(lag >= 0 for lag in result.send_lag_s)


def test_open_loop_stops_sending_at_the_duration(url: str) -> None:
    rate, duration = 200.0, 0.15
    workload = Workload(arrival="poisson", rate=rate, num_requests=200, warmup_requests=0, duration_s=duration, seed=5)
    result = run_load(url, "m", [_spec(tokens=2, tag=i) for i in range(200)], workload)
    due = [o for o in poisson_offsets(200, rate, 5) if o <= duration]
    assert 1 <= len(due) < 200
    assert len(result.records) == len(due)  # exactly the sends the schedule puts inside the window
    assert all(r.ok for r in result.records)


def test_closed_loop_stops_sending_at_the_duration(url: str) -> None:
    # Each request takes at least HOLD_S, so two workers fit at most 2 * (d / HOLD_S + 1) sends in d;
    # d leaves a busy machine time to start both workers before it ends.
    duration = 0.5
    workload = Workload(concurrency=2, num_requests=60, warmup_requests=0, duration_s=duration)
    result = run_load(url, "m", [_spec("hold", tokens=2, tag=i) for i in range(60)], workload)
    assert 2 <= len(result.records) <= 2 * (duration / HOLD_S + 1)
    assert all(r.ok for r in result.records)
    assert summarize(result)["completed"] == len(result.records)


def test_request_count_bounds_a_run_without_duration(url: str) -> None:
    workload = Workload(concurrency=3, num_requests=9, warmup_requests=0)
    assert len(run_load(url, "m", [_spec(tag=i) for i in range(9)], workload).records) == 9


def test_an_event_is_timed_by_its_first_byte(url: str) -> None:
    """The first token's event comes in two pieces SPLIT_GAP_S apart: TTFT is the first piece."""
    workload = Workload(concurrency=1, num_requests=1, warmup_requests=0)
    record = run_load(url, "m", [_spec("split", tokens=3)], workload).records[0]
    assert record.ok and record.ttft_s is not None and record.e2e_s is not None
    # Timed at the second piece, TTFT would be at least SPLIT_GAP_S and the rest would follow at once.
    assert record.e2e_s - record.ttft_s >= SPLIT_GAP_S


# --- load generator health --------------------------------------------------


def _result(*, lag: list[float], loop_cpu: float, rate: float | None = 50.0, duration: float = 2.0) -> LoadResult:
    return LoadResult(
        records=[], duration_s=duration, client_cpu_s=loop_cpu, offered_rate=rate, achieved_rate=0.0,
        loop_cpu_s=loop_cpu, send_lag_s=lag,
    )


def test_health_flags_a_late_schedule() -> None:
    on_time = _result(lag=[0.001] * 95 + [0.5] * 5, loop_cpu=0.2)  # a few hiccups, caught up
    late = _result(lag=[0.001] * 80 + [0.5] * 20, loop_cpu=0.2)  # a fifth of the sends far behind
    assert on_time.health()["loadgen_saturated"] == 0.0
    figures = late.health()
    assert figures["loadgen_saturated"] == 1.0
    assert figures["loadgen_send_lag_p90_ms"] == pytest.approx(500.0)
    assert figures["loadgen_send_lag_max_ms"] == pytest.approx(500.0)
    assert figures["loadgen_cpu_percent"] == pytest.approx(10.0)


def test_lag_tolerance_is_one_gap_at_low_rates() -> None:
    lag = [0.08] * 100  # 80 ms behind: jitter at 1 req/s, bunching at 50 req/s
    assert _result(lag=lag, loop_cpu=0.1, rate=1.0).health()["loadgen_saturated"] == 0.0
    assert _result(lag=lag, loop_cpu=0.1, rate=50.0).health()["loadgen_saturated"] == 1.0
    tight = [SEND_LAG_TOLERANCE_S * 2] * 100
    assert _result(lag=tight, loop_cpu=0.1, rate=1000.0).health()["loadgen_saturated"] == 1.0


def test_health_flags_a_busy_event_loop() -> None:
    busy = _result(lag=[0.0] * 10, loop_cpu=2.0 * SATURATED_LOOP_CPU, duration=2.0)
    assert busy.health()["loadgen_saturated"] == 1.0
    closed = _result(lag=[], loop_cpu=1.0, rate=None, duration=2.0)  # a closed loop has no schedule
    figures = closed.health()
    assert figures["loadgen_saturated"] == 0.0 and "loadgen_send_lag_p90_ms" not in figures
    closed_busy = _result(lag=[], loop_cpu=1.9, rate=None, duration=2.0)
    assert closed_busy.health()["loadgen_saturated"] == 1.0


def test_a_starved_generator_flags_its_run(url: str) -> None:
    """A progress callback that burns 20 ms of the loop per completion at 200 req/s:
    the loop cannot keep a 5 ms schedule, and the run must say so."""

    def burn(done: int, total: int) -> None:
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass

    workload = Workload(arrival="poisson", rate=200.0, num_requests=60, warmup_requests=0, concurrency=64, seed=1)
    result = asyncio.run(run_load_async(url, "m", [_spec(tokens=2, tag=i) for i in range(60)], workload, progress=burn))
    figures = summarize(result)
    assert figures["loadgen_saturated"] == 1.0
    assert figures["loadgen_loop_cpu_percent"] > 0
    assert figures["completed"] == 60


def test_every_run_reports_its_cpu(url: str) -> None:
    workload = Workload(concurrency=2, num_requests=6, warmup_requests=0)
    figures = summarize(run_load(url, "m", [_spec(tag=i) for i in range(6)], workload))
    for key in ("loadgen_cpu_percent", "loadgen_loop_cpu_percent", "loadgen_saturated"):
        assert key in figures and figures[key] >= 0
    assert figures["loadgen_cpu_percent"] == pytest.approx(100 * figures["client_cpu_util"])

