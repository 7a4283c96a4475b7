"""Goodput search: Wilson intervals, SLO verdicts, the bounded search, and a live server.

The search is tested against synthetic, deterministic ``measure`` functions whose
latency grows with load and crosses the SLO at a known load, so the expected
goodput is exact.  One module-scoped aiohttp server on 127.0.0.1 (streaming
OpenAI-style SSE, slower the more requests are in flight) exercises
``endpoint_measure``; nothing asserts that something was fast.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from autotune.load.goodput import (
    GoodputResult,
    LevelResult,
    endpoint_measure,
    judge,
    search_goodput,
    wilson_interval,
    workload_at_level,
)
from autotune.load.levels import clopper_pearson, confidence_of
from autotune.load.workload import Workload
from autotune.spec import parse_slos
from tests.live_app import serve_app

# --------------------------------------------------------------------------- wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "lower", "upper"),
    [
        # Closed forms: 0 of n -> (0, z^2/(n+z^2)); n of n -> (n/(n+z^2), 1).
        (0, 10, 0.0, 3.8416 / 13.8416),
        (10, 10, 10 / 13.8416, 1.0),
        (50, 100, 0.4038, 0.5962),  # symmetric about 0.5; statsmodels proportion_confint(method="wilson")
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_values(successes: int, n: int, lower: float, upper: float) -> None:
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(lower, abs=6e-5)
    assert hi == pytest.approx(upper, abs=6e-5)


def test_wilson_edges_and_shape() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0
    assert wilson_interval(3, 10, z=0.0) == pytest.approx((0.3, 0.3))
    for n in (1, 2, 5, 50, 1000):
        for s in range(0, n + 1, max(1, n // 17)):
            lo, hi = wilson_interval(s, n)
            assert 0.0 <= lo <= s / n <= hi <= 1.0  # always contains the point estimate
            wide_lo, wide_hi = wilson_interval(s, n, z=2.58)
            assert wide_lo <= lo and hi <= wide_hi
    # More evidence, narrower interval.
    assert wilson_interval(50, 50)[0] < wilson_interval(500, 500)[0]
    for bad in ((-1, 10), (11, 10), (0, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_confident_99_percent_needs_381_clean_requests() -> None:
    """The figure the module docstring quotes for the conservative rule."""
    assert wilson_interval(380, 380)[0] < 0.99 <= wilson_interval(381, 381)[0]
    assert wilson_interval(72, 72)[0] < 0.95 <= wilson_interval(73, 73)[0]


# --------------------------------------------------------------------------- judge


def _requests(ttfts_s: list[float | None]) -> list[dict[str, Any]]:
    """per_request_view-shaped records; None is a failed request."""
    out: list[dict[str, Any]] = []
    for t in ttfts_s:
        if t is None:
            out.append({"ttft_s": None, "tpot_s": None, "e2e_s": None, "itl_s": None})
        else:
            out.append({"ttft_s": t, "tpot_s": 0.01, "e2e_s": t + 0.5, "itl_s": [0.01] * 3})
    return out


def _mix(good: int, bad: int, failed: int = 0) -> list[dict[str, Any]]:
    return _requests([0.1] * good + [0.5] * bad + [None] * failed)


def test_judge_aggregate_slos() -> None:
    slos = parse_slos("p99(ttft)<200ms, output_tps>100")
    ok, attainment, violations = judge(slos, {"p99_ttft_ms": 150.0, "output_throughput": 120.0}, [])
    assert ok and attainment == {}
    assert violations["p99(ttft)<200ms"] == pytest.approx(-0.25)
    assert violations["output_tps>100"] == pytest.approx(-0.2)

    ok, _, violations = judge(slos, {"p99_ttft_ms": 250.0, "output_throughput": 120.0}, [])
    assert not ok and violations["p99(ttft)<200ms"] == pytest.approx(0.25)
    ok, _, _ = judge(slos, {"p99_ttft_ms": 150.0, "output_throughput": 80.0}, None)
    assert not ok
    ok, _, _ = judge(slos, {"p99_ttft_ms": math.nan, "output_throughput": 120.0}, [])
    assert not ok  # no measurement is not a pass


@pytest.mark.parametrize(
    ("slo", "good", "bad", "failed", "default", "conservative"),
    [
        ("ttft<300ms@95%", 49, 1, 0, True, False),  # 98% observed, lower bound ~0.895
        ("ttft<300ms@99%", 99, 1, 0, True, False),  # exactly on target
        ("ttft<300ms@99%", 50, 0, 0, True, False),  # perfect, but 50 cannot confirm 99%
        ("ttft<300ms@99%", 400, 0, 0, True, True),  # enough evidence for both rules
        ("ttft<300ms@95%", 90, 10, 0, False, False),  # clearly below
        ("ttft<300ms@95%", 94, 0, 6, False, False),  # failed requests are misses
        ("ttft<300ms@95%", 0, 0, 0, False, False),  # nothing served, nothing attained
    ],
)
def test_judge_attainment_rules(
    slo: str, good: int, bad: int, failed: int, default: bool, conservative: bool
) -> None:
    per_request = _mix(good, bad, failed)
    n = good + bad + failed
    ok, attainment, violations = judge(parse_slos(slo), {}, per_request)
    assert ok is default
    info = attainment[slo]
    assert info["n"] == n
    assert info["achieved"] == pytest.approx(good / n if n else 0.0)
    assert (info["lower"], info["upper"]) == pytest.approx(clopper_pearson(good, n, confidence_of(1.96)))
    assert info["target"] == parse_slos(slo)[0].attainment
    assert violations[slo] == parse_slos(slo)[0].violation({}, per_request)

    strict_ok, strict_info, strict_violations = judge(parse_slos(slo), {}, per_request, conservative=True)
    assert strict_ok is conservative
    assert strict_info == attainment and strict_violations == violations  # only the verdict differs


def test_judge_confidence_level_moves_the_conservative_verdict() -> None:
    per_request = _mix(80, 0)  # lower bound 0.954 at z=1.96, 0.924 at z=2.58
    slos = parse_slos("ttft<300ms@95%")
    assert judge(slos, {}, per_request, conservative=True)[0]
    assert not judge(slos, {}, per_request, conservative=True, confidence_z=2.58)[0]
    assert judge(slos, {}, per_request, confidence_z=2.58)[0]  # default rule: point estimate decides


def test_judge_needs_every_slo() -> None:
    slos = parse_slos("ttft<300ms@95%, p99(tpot)<40ms")
    per_request = _mix(100, 0)
    assert judge(slos, {"p99_tpot_ms": 30.0}, per_request)[0]
    slow = [{**row, "tpot_s": 0.05} for row in per_request]  # every token 50 ms apart
    assert not judge(slos, {"p99_tpot_ms": 50.0}, slow)[0]
    assert not judge(slos, {"p99_tpot_ms": 30.0}, _mix(80, 20))[0]
    with pytest.raises(ValueError, match="per-request"):
        judge(slos, {"p99_tpot_ms": 30.0}, None)


# --------------------------------------------------------------------------- synthetic systems


class Queue:
    """p99 TTFT of an M/M/1-like server: base / (1 - load/capacity), unbounded at capacity.

    With SLO ``p99(ttft)<threshold`` the true goodput (the supremum of holding
    loads) is ``capacity * (1 - base/threshold)``.
    """

    def __init__(self, capacity: float = 20.0, base_ms: float = 50.0) -> None:
        self.capacity = capacity
        self.base_ms = base_ms
        self.calls: list[float] = []

    def crossing(self, threshold_ms: float) -> float:
        return self.capacity * (1 - self.base_ms / threshold_ms)

    def __call__(self, load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        self.calls.append(load)
        busy = load / self.capacity
        ttft = self.base_ms / (1 - busy) if busy < 1 else 1e9
        return {
            "p99_ttft_ms": ttft,
            "request_throughput": min(load, self.capacity),
            "output_throughput": 64 * min(load, self.capacity),
        }, []


class Batcher:
    """Closed loop: p99 TTFT = step_ms * concurrency; ``p99(ttft)<200ms`` holds up to 13 at 15 ms."""

    def __init__(self, step_ms: float = 15.0) -> None:
        self.step_ms = step_ms
        self.calls: list[float] = []

    def __call__(self, load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        assert float(load).is_integer(), load
        self.calls.append(load)
        return {"p99_ttft_ms": self.step_ms * load, "request_throughput": load, "output_throughput": 10.0 * load}, []


def _check_search(result: GoodputResult, calls: list[float], max_levels: int) -> None:
    """Invariants of every search, monotone system or not."""
    assert 1 <= len(result.levels) <= max_levels
    assert [level.load for level in result.levels] == [float(c) for c in calls]
    assert len(set(calls)) == len(calls), f"a level was measured twice: {calls}"
    holding = [level for level in result.levels if level.holds]
    if holding:
        assert result.best is max(holding, key=lambda level: level.load)
        assert result.goodput == result.best.load
    else:
        assert result.best is None and result.goodput == 0.0
    json.dumps(result.to_json(), allow_nan=False)


P99_200 = parse_slos("p99(ttft)<200ms")


@pytest.mark.parametrize("start", [0.5, 3.0, 14.9, 15.0, 40.0, 1000.0])
@pytest.mark.parametrize("resolution", [0.1, 0.01])
def test_search_rate_finds_the_crossing(start: float, resolution: float) -> None:
    queue = Queue()
    true = queue.crossing(200.0)  # 15 req/s
    result = search_goodput(queue, P99_200, unit="req/s", start=start, max_levels=30, resolution=resolution)
    _check_search(result, queue.calls, 30)
    assert result.unit == "req/s"
    assert result.goodput < true <= result.goodput * (1 + resolution)


def test_search_rate_within_budget_never_overshoots() -> None:
    queue_true = Queue().crossing(200.0)
    for max_levels in range(1, 8):
        for start in (0.3, 2.0, 9.0, 15.0, 16.0, 70.0):
            queue = Queue()
            result = search_goodput(queue, P99_200, unit="req/s", start=start, max_levels=max_levels)
            _check_search(result, queue.calls, max_levels)
            assert result.goodput < queue_true  # a monotone system never yields a false pass


def test_search_default_budget_is_six_and_stops_early_when_resolved() -> None:
    queue = Queue()
    result = search_goodput(queue, P99_200, unit="req/s", start=1.0)
    assert len(queue.calls) == 6  # 1, 2, 4, 8, 16 bracket; one bisection fits
    assert queue.calls[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    queue = Queue()
    result = search_goodput(queue, P99_200, unit="req/s", start=8.0, resolution=0.5, max_levels=20)
    assert queue.calls == [8.0, 16.0, 12.0]  # (16 - 12) / 12 < 0.5: resolved with budget to spare
    assert result.goodput == 12.0


def test_a_first_step_of_one_resolution_from_a_reading_brackets_it_in_two_levels() -> None:
    true = Queue().crossing(200.0)  # 15 req/s
    for start, calls in ((14.5, 2), (15.2, 2)):  # a reading just under, and one just over, the crossing
        queue = Queue()
        result = search_goodput(queue, P99_200, unit="req/s", start=start, resolution=0.05, growth=1.25,
                                first_growth=1.049)
        assert len(queue.calls) == calls, queue.calls
        assert result.goodput < true <= result.goodput * 1.05
        plain = Queue()
        search_goodput(plain, P99_200, unit="req/s", start=start, resolution=0.05, growth=1.25)
        assert len(plain.calls) > calls  # the same search with its growth from the first step
    for start in (8.0, 30.0):  # a reading far off: it widens to the growth and still finds the crossing
        queue = Queue()
        result = search_goodput(queue, P99_200, unit="req/s", start=start, resolution=0.05, growth=1.25,
                                first_growth=1.049, max_levels=20)
        _check_search(result, queue.calls, 20)
        assert queue.calls[1] == pytest.approx(start * 1.049 if start < true else start / 1.049)
        assert queue.calls[2] == pytest.approx(queue.calls[1] * 1.25 if start < true else queue.calls[1] / 1.25)
        assert result.goodput < true <= result.goodput * 1.05
    with pytest.raises(ValueError, match="first_growth"):
        search_goodput(Queue(), P99_200, unit="req/s", start=1.0, first_growth=1.0)


@pytest.mark.parametrize("start", [1, 2, 5, 13, 14, 17, 100])
def test_search_concurrency_is_integer_and_exact(start: int) -> None:
    batcher = Batcher()
    result = search_goodput(batcher, P99_200, unit="concurrency", start=start, max_levels=30, resolution=0.001)
    _check_search(result, batcher.calls, 30)
    assert all(isinstance(c, int) for c in batcher.calls)
    assert result.goodput == 13.0 and result.unit == "concurrency"
    # Stopped on adjacent integers: 13 held and 14 failed were both measured.
    assert {13, 14} <= set(batcher.calls)


def test_search_concurrency_default_resolution_and_budget() -> None:
    for max_levels in range(1, 8):
        for start in (1, 3, 6, 13, 14, 40):
            batcher = Batcher()
            result = search_goodput(batcher, P99_200, unit="concurrency", start=start, max_levels=max_levels)
            _check_search(result, batcher.calls, max_levels)
            assert result.goodput <= 13
            if max_levels >= 7:
                assert result.goodput >= 13 / 1.1


def test_search_concurrency_rounds_the_bounds() -> None:
    batcher = Batcher(step_ms=1.0)  # everything holds
    result = search_goodput(batcher, P99_200, unit="concurrency", start=2.6, upper=10.9, max_levels=10)
    assert batcher.calls == [3, 6, 10]
    assert result.goodput == 10.0
    batcher = Batcher(step_ms=1000.0)  # nothing holds
    result = search_goodput(batcher, P99_200, unit="concurrency", start=9, min_load=2.2, max_levels=10)
    assert batcher.calls == [9, 4, 3]
    assert result.goodput == 0.0


def test_fails_even_at_the_lowest_load() -> None:
    queue = Queue(base_ms=500.0)  # TTFT above 200 ms at any load
    result = search_goodput(queue, P99_200, unit="req/s", start=4.0, min_load=0.5, max_levels=10)
    assert queue.calls == [4.0, 2.0, 1.0, 0.5]
    assert result.goodput == 0.0 and result.best is None
    assert not any(level.holds for level in result.levels)

    queue = Queue(base_ms=500.0)  # no floor: the budget stops the descent
    result = search_goodput(queue, P99_200, unit="req/s", start=4.0)
    assert queue.calls == [4.0 / 2**i for i in range(6)]
    assert result.goodput == 0.0

    batcher = Batcher(step_ms=300.0)
    result = search_goodput(batcher, P99_200, unit="concurrency", start=8, max_levels=10)
    assert batcher.calls == [8, 4, 2, 1]  # concurrency never goes below 1
    assert result.goodput == 0.0 and result.to_json()["best"] is None


def test_holds_up_to_upper() -> None:
    queue = Queue(capacity=1e6)
    result = search_goodput(queue, P99_200, unit="req/s", start=4.0, upper=50.0, max_levels=10)
    assert queue.calls == [4.0, 8.0, 16.0, 32.0, 50.0]
    assert result.goodput == 50.0 and result.best is result.levels[-1]

    queue = Queue(capacity=1e6)
    result = search_goodput(queue, P99_200, unit="req/s", start=50.0, upper=50.0)
    assert queue.calls == [50.0] and result.goodput == 50.0

    batcher = Batcher(step_ms=1.0)
    result = search_goodput(batcher, P99_200, unit="concurrency", start=3, upper=20, max_levels=10)
    assert batcher.calls == [3, 6, 12, 20]
    assert result.goodput == 20.0


def test_search_with_attainment_slo_and_conservative_switch() -> None:
    """Misses grow with load; the conservative rule settles lower than the point estimate."""
    n = 200
    calls: list[float] = []

    def measure(load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        calls.append(load)
        misses = min(n, round(n * (load / 20.0) ** 3))
        return {"p99_ttft_ms": 0.0}, _mix(n - misses, misses)

    slos = parse_slos("ttft<300ms@95%")
    loose = search_goodput(measure, slos, unit="req/s", start=2.0, max_levels=20, resolution=0.01)
    _check_search(loose, calls, 20)
    calls.clear()
    strict = search_goodput(measure, slos, unit="req/s", start=2.0, max_levels=20, resolution=0.01, conservative=True)
    _check_search(strict, calls, 20)
    assert 0 < strict.goodput < loose.goodput
    true = 20.0 * (10.5 / n) ** (1 / 3)  # round(misses) <= 10 (95% of 200) up to here, ~7.49
    assert true / 1.01 <= loose.goodput <= true
    assert loose.best is not None and loose.best.attainment["ttft<300ms@95%"]["achieved"] >= 0.95
    assert strict.best is not None and strict.best.attainment["ttft<300ms@95%"]["lower"] >= 0.95


@pytest.mark.parametrize("unit", ["req/s", "concurrency"])
def test_search_invariants_on_noisy_non_monotone_systems(unit: str) -> None:
    rnd = random.Random(7)
    for trial in range(300):
        verdicts: dict[float, bool] = {}
        calls: list[float] = []
        p_hold = rnd.random()

        def measure(load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
            calls.append(load)
            verdicts[load] = rnd.random() < p_hold
            return {"p99_ttft_ms": 100.0 if verdicts[load] else 300.0}, []

        max_levels = rnd.randint(1, 12)
        start = rnd.choice([1, 2, 3, 7, 16, 33]) if unit == "concurrency" else rnd.uniform(0.1, 50)
        upper = rnd.choice([None, start * rnd.uniform(1, 20)])
        min_load = rnd.choice([None, start * rnd.uniform(0.01, 1)])
        result = search_goodput(
            measure,
            P99_200,
            unit=unit,  # type: ignore[arg-type]
            start=start,
            max_levels=max_levels,
            upper=upper,
            min_load=min_load,
            resolution=rnd.choice([0.01, 0.1, 0.3]),
        )
        _check_search(result, calls, max_levels)
        for level in result.levels:
            assert level.holds is verdicts[level.load], trial
            if upper is not None:
                assert level.load <= upper
            if min_load is not None:
                assert level.load >= min_load
            if unit == "concurrency":
                assert level.load >= 1 and float(level.load).is_integer()


def test_on_level_and_to_json() -> None:
    seen: list[LevelResult] = []
    queue = Queue()

    def measure(load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        figures, _ = queue(load)
        figures["p90_ttft_ms"] = math.nan  # non-finite figures must not break JSON
        return figures, _requests([figures["p99_ttft_ms"] / 1000] * 100)  # every request at the p99

    slos = parse_slos("p99(ttft)<200ms, ttft<300ms@95%")
    result = search_goodput(measure, slos, unit="req/s", start=4.0, on_level=seen.append)
    assert seen == result.levels
    doc = result.to_json()
    json.dumps(doc, allow_nan=False)
    assert doc["goodput"] == result.goodput and doc["unit"] == "req/s"
    assert [lv["load"] for lv in doc["levels"]] == queue.calls
    first = doc["levels"][0]
    assert set(first) == {
        "load", "holds", "verdict", "requests", "extended", "stopped_early", "stop_reason", "output_throughput",
        "request_throughput", "p99_ttft_ms", "sustained_ratio", "violations", "attainment", "slos", "backlog",
    }
    assert first["requests"] == 100 and first["slos"]["ttft<300ms@95%"]["kind"] == "attainment"
    assert doc["incumbent"] is None and doc["stopped"] is None and doc["goodput_upper_bound"] is None
    assert first["request_throughput"] == 4.0 and first["output_throughput"] == 256.0
    assert first["p99_ttft_ms"] == pytest.approx(50 / 0.8)
    assert first["attainment"]["ttft<300ms@95%"]["n"] == 100
    assert doc["best"]["load"] == result.goodput
    assert doc["best"]["request_throughput"] == result.goodput
    assert doc["best"]["total_token_throughput"] is None  # absent figure


def test_search_rejects_bad_arguments() -> None:
    queue = Queue()
    with pytest.raises(ValueError, match="at least one SLO"):
        search_goodput(queue, [], unit="req/s", start=1.0)
    bad: list[dict[str, Any]] = [
        {"unit": "tokens/s", "start": 1.0},
        {"unit": "req/s", "start": 0.0},
        {"unit": "req/s", "start": 1.0, "max_levels": 0},
        {"unit": "req/s", "start": 1.0, "resolution": 0.0},
        {"unit": "req/s", "start": 10.0, "upper": 5.0},
        {"unit": "req/s", "start": 1.0, "min_load": 2.0},
        {"unit": "concurrency", "start": 4, "upper": 0.5},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            search_goodput(queue, P99_200, **kwargs)
    assert queue.calls == []  # rejected before anything was measured


# --------------------------------------------------------------------------- workload per level


def test_workload_at_level() -> None:
    base = Workload(concurrency=16, num_requests=32, seed=3)
    slow = workload_at_level(base, "req/s", 1.0)
    assert (slow.arrival, slow.rate, slow.concurrency) == ("poisson", 1.0, 16)  # cap never below the workload's
    fast = workload_at_level(base, "req/s", 10.5)
    assert (fast.arrival, fast.rate, fast.concurrency) == ("poisson", 10.5, 84)  # ceil(10.5 * 8)
    assert workload_at_level(base, "req/s", 10.5, inflight_horizon_s=30).concurrency == 315
    closed = workload_at_level(base, "concurrency", 5)
    assert (closed.arrival, closed.concurrency) == ("concurrency", 5)
    assert closed.num_requests == 32 and closed.seed == 3
    assert base.arrival == "concurrency" and base.concurrency == 16  # not mutated
    with pytest.raises(ValueError):
        workload_at_level(base, "req/s", 0.0)
    with pytest.raises(ValueError):
        workload_at_level(base, "concurrency", 0.5)


# --------------------------------------------------------------------------- live server


class WordTokenizer:
    """Token i is the word ``w<i>``: every id sequence round-trips exactly."""

    def encode(self, text: str) -> list[int]:
        return [int(word[1:]) for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)


class CrowdedEngine:
    """Streams OpenAI-style SSE; the first token waits ``cost_s`` per request in flight."""

    def __init__(self) -> None:
        self.cost_s = 0.0
        self.in_flight = 0
        self.prompts: list[str] = []

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.prompts.append(body["prompt"])
        self.in_flight += 1
        try:
            await asyncio.sleep(self.cost_s * self.in_flight)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            n = int(body["max_tokens"])
            for i in range(n):
                if i:
                    await asyncio.sleep(0.001)
                await _event(resp, _chunk(f" t{i}", None))
            await _event(resp, _chunk("", "length"))
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
            await _event(resp, {"id": "cmpl-0", "object": "text_completion", "choices": [], "usage": usage})
            await _event(resp, "[DONE]")
            await resp.write_eof()
            return resp
        finally:
            self.in_flight -= 1


async def _event(resp: web.StreamResponse, obj: Any) -> None:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    await resp.write(f"data: {data}\n\n".encode())


def _chunk(text: str, finish: str | None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": "cmpl-0", "object": "text_completion", "model": "m", "choices": [choice], "usage": None}


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, CrowdedEngine]]:
    engine = CrowdedEngine()
    with serve_app([("POST", "/v1/completions", engine.completions)]) as url:
        yield url, engine


LIVE_WORKLOAD = Workload(prompt_tokens=8, output_tokens=4, num_requests=20, warmup_requests=2, concurrency=1)


def test_endpoint_goodput_falls_when_requests_cost_more(live: tuple[str, CrowdedEngine]) -> None:
    url, engine = live
    slos = parse_slos("ttft<100ms@90%")
    found: dict[float, GoodputResult] = {}
    for cost_s in (0.002, 0.07):  # TTFT ~ cost * in-flight: crosses 100 ms near 50 vs near 1.4
        engine.cost_s = cost_s
        measure = endpoint_measure(url, "m", WordTokenizer(), 1000, LIVE_WORKLOAD, unit="concurrency")
        result = search_goodput(measure, slos, unit="concurrency", start=4, upper=16, max_levels=4)
        loads = [level.load for level in result.levels]
        assert len(loads) == len(set(loads)) <= 4
        for level in result.levels:
            assert len(level.per_request) == LIVE_WORKLOAD.num_requests
            assert level.figures["completed"] == LIVE_WORKLOAD.num_requests
        json.dumps(result.to_json(), allow_nan=False)
        found[cost_s] = result
    cheap, costly = found[0.002], found[0.07]
    assert cheap.goodput > costly.goodput
    assert cheap.best is not None and cheap.best.figures["request_throughput"] > 0


def test_endpoint_rate_levels_use_fresh_prompts(live: tuple[str, CrowdedEngine]) -> None:
    url, engine = live
    engine.cost_s = 0.001
    workload = LIVE_WORKLOAD.model_copy(update={"num_requests": 10})
    measure = endpoint_measure(url, "m", WordTokenizer(), 1000, workload, unit="req/s", warmup_s=0)
    batches: list[set[str]] = []
    for rate in (40.0, 80.0):
        before = len(engine.prompts)
        figures, per_request = measure(rate)
        batches.append(set(engine.prompts[before:]))
        assert figures["offered_rate"] == rate
        assert figures["completed"] == 10 and len(per_request) == 10
        assert all(r["ttft_s"] is not None for r in per_request)
    assert all(len(batch) == 12 for batch in batches)  # warm-up + measured, all distinct
    assert batches[0].isdisjoint(batches[1])  # no level re-sends what the last one cached
