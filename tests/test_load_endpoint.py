"""Levels against a live server: stopping a run, the in-flight cap, arrival streams, warm-up at load, the engine queue.

One module-scoped aiohttp server on 127.0.0.1 streams OpenAI-style SSE
(``CrowdedEngine``: the first token waits a little per request in flight) and
serves a Prometheus ``/metrics`` with its own in-flight count.  Nothing here
asserts that something was fast; counts of requests are exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from autotune.load.endpoint import endpoint_measure
from autotune.load.goodput import search_goodput
from autotune.load.runner import arrival_offsets, run_load
from autotune.load.stats import summarize
from autotune.load.workload import RequestSpec, Workload
from autotune.spec import load_spec, parse_slos
from autotune.trial import run_trial, setup_from_spec
from tests.live_app import serve_app
from tests.test_goodput import CrowdedEngine, WordTokenizer


class MeteredEngine(CrowdedEngine):
    """Also says, on /metrics, how many requests it is serving (vLLM's gauge names),
    and notes how many were in flight when each prompt arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.busy_at: dict[str, int] = {}

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.busy_at[(await request.json())["prompt"]] = self.in_flight
        return await super().completions(request)

    async def metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="m"}} {self.in_flight}\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{model_name="m"} 0\n'
        )
        return web.Response(text=text, content_type="text/plain")


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, MeteredEngine]]:
    engine = MeteredEngine()
    with serve_app([("POST", "/v1/completions", engine.completions), ("GET", "/metrics", engine.metrics)]) as url:
        yield url, engine


@pytest.fixture
def server(live: tuple[str, MeteredEngine]) -> tuple[str, MeteredEngine]:
    url, engine = live
    engine.cost_s = 0.0005
    engine.prompts.clear()
    return url, engine


def specs(n: int, tokens: int = 4) -> list[RequestSpec]:
    return [RequestSpec(prompt=f"w{i} w1 w2", prompt_tokens=3, max_tokens=tokens) for i in range(n)]


WORKLOAD = Workload(prompt_tokens=8, output_tokens=4, num_requests=20, warmup_requests=2, concurrency=64)

# --------------------------------------------------------------------------- arrival schedules


def test_arrival_streams_differ_by_offset_and_repeat_by_offset() -> None:
    # Stream 0 is the schedule every run drew before streams existed.
    gaps = np.random.default_rng([7, 0x41525256]).exponential(1 / 3.0, size=49)
    assert arrival_offsets(50, 3.0, 7) == pytest.approx([0.0, *np.cumsum(gaps)])
    assert arrival_offsets(50, 3.0, 7, stream=1000) == arrival_offsets(50, 3.0, 7, stream=1000)
    assert arrival_offsets(50, 3.0, 7, stream=1000) != arrival_offsets(50, 3.0, 7)
    assert arrival_offsets(50, 3.0, 7, stream=1000) != arrival_offsets(50, 3.0, 7, stream=2000)
    # A level extended past its plan keeps the arrivals it had; another rate only rescales them.
    assert arrival_offsets(100, 3.0, 7, 0.5, stream=4)[:50] == arrival_offsets(50, 3.0, 7, 0.5, stream=4)
    assert arrival_offsets(50, 6.0, 7, stream=4) == pytest.approx([o / 2 for o in arrival_offsets(50, 3.0, 7, stream=4)])


def test_a_planned_schedule_offers_the_rate_itself() -> None:
    """Unscaled, the span of n arrivals is a draw (std ~1/sqrt(n) of its mean); planned, it is n/rate."""
    spans = [arrival_offsets(301, 20.0, seed, stream=5)[300] for seed in range(40)]
    assert np.std(spans) / np.mean(spans) > 0.02
    for seed in range(40):
        planned = arrival_offsets(301, 20.0, seed, stream=5, planned=300)
        assert planned[300] == pytest.approx(300 / 20.0)
        # The order and shape of the draw are kept: the same gaps, one factor apart.
        raw = np.diff(arrival_offsets(301, 20.0, seed, stream=5))
        assert np.diff(planned) == pytest.approx(raw * (15.0 / raw.sum()))
    # Extended past its plan, a level keeps the arrivals it had, at the same scale.
    long = arrival_offsets(600, 20.0, 3, 0.5, stream=4, planned=300)
    assert long[:301] == pytest.approx(arrival_offsets(301, 20.0, 3, 0.5, stream=4, planned=300))
    assert long[300] == pytest.approx(15.0)
    with pytest.raises(ValueError):
        arrival_offsets(10, 1.0, 0, planned=0)


def test_each_repeat_sends_on_its_own_schedule(server: tuple[str, MeteredEngine]) -> None:
    url, _ = server
    workload = Workload(arrival="poisson", rate=40.0, num_requests=20, warmup_requests=0, concurrency=64, seed=3)

    def span(offset: int) -> float | None:
        return run_load(url, "m", specs(20), workload, seed_offset=offset).scheduled_span_s

    assert span(1000) == span(1000) != span(2000)
    assert span(0) == pytest.approx(arrival_offsets(20, 40.0, 3, planned=20)[-1])


def test_endpoint_levels_share_a_schedule_and_repeats_do_not(server: tuple[str, MeteredEngine]) -> None:
    """Sends follow the schedule of the measure's own seed offset, at each level's rate, and not another's."""
    url, _ = server

    def schedule(stream: int, rate: float, n: int) -> np.ndarray:
        return np.asarray(arrival_offsets(n, rate, WORKLOAD.seed, stream=stream, planned=n))

    for rate in (10.0, 20.0):
        measure = endpoint_measure(url, "m", WordTokenizer(), 1000, WORKLOAD, unit="req/s", seed_offset=1000,
                                   warmup_s=0)
        sent = np.asarray([r["start_s"] for r in measure(rate)[1]])
        own = float(np.median(np.abs(sent - schedule(1000, rate, len(sent)))))  # the event loop's lateness only
        other = float(np.median(np.abs(sent - schedule(2000, rate, len(sent)))))  # another repeat's draw
        assert own < other / 3, (rate, own, other)


# --------------------------------------------------------------------------- the runner


@pytest.mark.parametrize("arrival", ["poisson", "concurrency"])
def test_a_run_stops_when_its_predicate_says_so(server: tuple[str, MeteredEngine], arrival: str) -> None:
    url, engine = server
    workload = Workload(arrival=arrival, rate=100.0 if arrival == "poisson" else None, num_requests=300,
                        warmup_requests=0, concurrency=4)
    seen: list[int] = []

    def stop(index: int, record: Any) -> bool:
        seen.append(index)
        return len(seen) >= 10

    result = run_load(url, "m", specs(300), workload, stop=stop)
    assert result.stopped_early and len(seen) == 10
    assert 10 <= len(result.records) < 300 and len(engine.prompts) < 300
    assert len(result.records) + result.cancelled + result.unsent == 300
    assert result.cancelled <= 4 if arrival == "concurrency" else result.unsent > 200
    assert len(engine.prompts) <= 300 - result.unsent  # what was never sent never reached the server
    assert result.indices == sorted(result.indices) and set(seen) <= set(result.indices)
    assert summarize(result)["completed"] == len(result.records)


def test_without_a_predicate_a_run_sends_everything(server: tuple[str, MeteredEngine]) -> None:
    url, engine = server
    workload = Workload(arrival="poisson", rate=200.0, num_requests=30, warmup_requests=0, concurrency=64)
    result = run_load(url, "m", specs(30), workload)
    assert not result.stopped_early and result.unsent == result.cancelled == 0
    assert len(result.records) == len(engine.prompts) == 30 and result.indices == list(range(30))


def test_a_capped_open_loop_says_so(server: tuple[str, MeteredEngine], caplog: pytest.LogCaptureFixture) -> None:
    url, engine = server
    engine.cost_s = 0.02  # each request holds its slot for tens of milliseconds
    capped = Workload(arrival="poisson", rate=400.0, num_requests=30, warmup_requests=0, concurrency=2)
    with caplog.at_level(logging.WARNING, logger="autotune.load"):
        figures = summarize(run_load(url, "m", specs(30), capped))
    assert figures["inflight_capped"] == 1.0 and figures["inflight_capped_requests"] > 0
    assert figures["inflight_capped_wait_max_ms"] > 0 and figures["inflight_capped_wait_total_s"] > 0
    assert any("in-flight cap" in r.getMessage() for r in caplog.records)
    engine.cost_s = 0.0005
    free = Workload(arrival="poisson", rate=20.0, num_requests=10, warmup_requests=0, concurrency=64)
    figures = summarize(run_load(url, "m", specs(10), free))
    assert figures["inflight_capped"] == 0.0 and figures["inflight_capped_requests"] == 0.0


def test_warmup_at_load_feeds_straight_into_the_measured_phase(server: tuple[str, MeteredEngine]) -> None:
    url, engine = server
    engine.cost_s = 0.05  # a warm-up request lives at least 50 ms, longer than a gap at 50 req/s
    workload = Workload(arrival="poisson", rate=50.0, num_requests=10, warmup_requests=1, concurrency=64)
    sent = specs(1 + 25 + 10)
    result = run_load(url, "m", sent, workload, load_warmup=25)
    assert len(engine.prompts) == 36 and len(result.records) == 10
    assert engine.busy_at[sent[0].prompt] == 0 and engine.busy_at[sent[1].prompt] == 0  # the plain warm-up drained
    assert engine.busy_at[sent[26].prompt] > 0  # the first measured request found the warm-up at work
    assert [r.prompt_tokens for r in result.records] == [3] * 10 and len(result.send_lag_s) == 10
    # The measured phase starts one gap after the warm-up's last send, not after it drained.
    assert result.scheduled_span_s == pytest.approx(arrival_offsets(10, 50.0, 0, planned=10)[-1])


def test_a_closed_loop_warm_up_at_load_ends_at_its_time_bound(server: tuple[str, MeteredEngine]) -> None:
    """A configuration that queues (each request holds the server >= 50 ms here) must not spend
    ``concurrency`` times longer warming up than one that batches: the warm-up at load stops
    starting requests after ``load_warmup_s``, and the measured requests follow in full."""
    url, engine = server
    engine.cost_s = 0.05
    workload = Workload(num_requests=10, warmup_requests=0, concurrency=2)
    result = run_load(url, "m", specs(200 + 10), workload, load_warmup=200, load_warmup_s=0.3)
    # Two workers, each request >= 50 ms: at most 2 x (0.3 / 0.05 + 1) warm-up requests can start
    # in 0.3 s on any machine (fewer on a slow one), far short of the 200 offered.
    assert 0 < result.load_warmup_sent <= 14
    assert len(engine.prompts) == result.load_warmup_sent + 10 and len(result.records) == 10
    assert [r.prompt_tokens for r in result.records] == [3] * 10
    # Without the bound the whole count runs.
    engine.prompts.clear()
    engine.cost_s = 0.0005
    whole = run_load(url, "m", specs(30 + 10), workload, load_warmup=30)
    assert whole.load_warmup_sent == 30 and len(engine.prompts) == 40


def test_a_trial_against_an_endpoint_autotune_did_not_start(server: tuple[str, MeteredEngine], tmp_path: Path) -> None:
    """The whole trial path with an external endpoint: nothing launched, nothing stopped, figures kept."""
    url, engine = server
    setup = setup_from_spec(load_spec(None, {
        "model": "tiny", "hardware.device": "cpu",
        "engine": {"name": "external", "options": {"base_url": url + "/v1", "served_model": "m"}},
        "workload": {"prompt_tokens": 8, "output_tokens": 4, "num_requests": 6, "warmup_requests": 1},
    }))
    outcome = run_trial(setup, {"concurrency": 2}, tmp_path / "trial")
    assert outcome.status == "ok", outcome.reason
    assert outcome.figures["completed"] == 6 and outcome.command == ""
    assert len(engine.prompts) == 1 + 6


# --------------------------------------------------------------------------- endpoint_measure


def test_the_first_level_is_warmed_up_at_its_own_load(server: tuple[str, MeteredEngine]) -> None:
    url, engine = server
    measure = endpoint_measure(url, "m", WordTokenizer(), 1000, WORKLOAD, unit="req/s", warmup_s=0.5)
    figures, rows = measure(40.0)
    # Two requests, twice, gauge the idle latency (ms here), then 0.5 s at 40 req/s, then the 20 measured.
    assert figures["load_warmup_s"] == 0.5 and figures["load_warmup_requests"] == 20
    assert len(engine.prompts) == 4 + 20 + 20 and len(rows) == figures["completed"] == 20
    before = len(engine.prompts)
    figures, rows = measure(80.0)
    assert figures["load_warmup_s"] == 0.0 and figures["load_warmup_requests"] == 0
    assert len(engine.prompts) - before == 2 + 20  # the plain warm-up only
    assert len(set(engine.prompts)) == len(engine.prompts)  # nothing re-sent to a prefix cache


def test_a_closed_loop_warms_up_for_a_few_latencies(server: tuple[str, MeteredEngine]) -> None:
    url, engine = server
    measure = endpoint_measure(url, "m", WordTokenizer(), 1000, WORKLOAD, unit="concurrency", warmup_s=0.2)
    figures, rows = measure(3)
    assert 0 < figures["load_warmup_requests"] <= 3 * 50 and figures["load_warmup_s"] >= 0.2
    assert len(rows) == 20 and len(engine.prompts) == 4 + figures["load_warmup_requests"] + 20


def test_a_level_planned_too_short_runs_on_to_where_it_can_hold_on_the_wire(
    server: tuple[str, MeteredEngine]
) -> None:
    """50 clean requests cannot confirm 95% (72 can): the level is looked at first at 72, and holds there."""
    url, _ = server
    slos = parse_slos("ttft<2s@95%")
    workload = WORKLOAD.model_copy(update={"num_requests": 50})
    measure = endpoint_measure(url, "m", WordTokenizer(), 1000, workload, unit="req/s", warmup_s=0, constraints=slos)
    result = search_goodput(measure, slos, unit="req/s", start=100.0, max_levels=1)
    level = result.levels[0]
    assert level.verdict == "holds" and level.requests == 72
    doc = level.to_json()
    assert doc["planned_requests"] == 50 and doc["max_requests"] == 100 and doc["extended"] is False
    assert doc["stop_reason"] == "holds at 72 requests" and doc["slos"]["ttft<2s@95%"]["n"] == 72


def test_a_condemned_level_is_cut_short_on_the_wire(server: tuple[str, MeteredEngine]) -> None:
    url, engine = server
    slos = parse_slos("ttft<1us@95%")  # no request can meet it
    workload = WORKLOAD.model_copy(update={"num_requests": 200})
    measure = endpoint_measure(url, "m", WordTokenizer(), 1000, workload, unit="req/s", warmup_s=0, constraints=slos)
    result = search_goodput(measure, slos, unit="req/s", start=100.0, max_levels=1)
    level = result.levels[0]
    assert level.verdict == "fails" and level.figures["stopped_early"] == 1.0
    assert level.requests < 50 and len(engine.prompts) < 2 + 200
    assert "fails whatever" in level.stop_reason and level.to_json()["stopped_early"] is True
    # the look it was collecting is kept, so that the level can be judged again as it was cut
    assert level.to_json()["cut_short_of"] == 200 and "of its first 200 requests" in level.stop_reason


def test_the_engine_queue_is_read_over_each_level(server: tuple[str, MeteredEngine]) -> None:
    url, engine = server
    engine.cost_s = 0.02  # about one request in flight at 40 req/s, over 2 s of polls at 4 Hz
    workload = WORKLOAD.model_copy(update={"num_requests": 80})
    measure = endpoint_measure(url, "m", WordTokenizer(), 1000, workload, unit="req/s", warmup_s=0,
                               metrics_url=url + "/metrics")
    figures, rows = measure(40.0)
    queue = figures["engine_queue"]
    assert len(queue["t"]) == len(queue["waiting"]) == len(queue["running"]) >= 2
    assert queue["t"][0] < 0 < queue["t"][-1]  # scraped from before the first send to after the last
    assert max(r for r in queue["running"] if r is not None) >= 1 and set(queue["waiting"]) == {0.0}
    result = search_goodput(lambda load: measure(load), parse_slos("ttft<2s@90%"), unit="req/s", start=40.0,
                            max_levels=1)
    assert "engine_queue" not in result.levels[0].figures  # judged, not carried into the trial's figures
    assert math.isfinite(result.levels[0].load)
