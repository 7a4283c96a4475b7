"""Client and runner against a real streaming HTTP server on 127.0.0.1.

The server speaks OpenAI-style SSE like vLLM does and runs on its own event
loop in a thread, so client timings are taken exactly as in production.  The
prompt's first word picks the server's behaviour, so one run can mix healthy
and broken requests.  Nothing here asserts that something was fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from autotune.load.client import CompletionsClient, RequestRecord
from autotune.load.runner import LoadResult, poisson_offsets, run_load, run_load_async
from autotune.load.stats import summarize
from autotune.load.workload import RequestSpec, Workload
from tests.live_app import serve_app

TOKEN_DELAY_S = 0.002
# "hold" requests wait this long before their first token; "split" requests send
# their first event in two writes this far apart.
HOLD_S = 0.05
SPLIT_GAP_S = 0.3
# A safety net only: gated requests normally pass as soon as enough are in flight.
GATE_TIMEOUT_S = 10.0


class FakeEngine:
    """Streams ``max_tokens`` tokens; keeps what it saw for the assertions.

    Requests whose prompt starts with ``gate`` hold their first token until
    ``gate_at`` requests have been in flight together once, so that reaching
    the concurrency limit does not depend on how fast this machine is.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self, gate_at: int = 0) -> None:
        """Forget what earlier requests did (call when ``in_flight`` is 0)."""
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.max_in_flight = 0
        self.gate_at = gate_at
        self.gate = asyncio.Event()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.auth.append(request.headers.get("Authorization"))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.in_flight >= self.gate_at:
            self.gate.set()
        try:
            return await self._respond(request, body)
        finally:
            self.in_flight -= 1

    async def _respond(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        mode = body["prompt"].split()[0]
        n = int(body["max_tokens"])
        if mode == "gate":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.gate.wait(), GATE_TIMEOUT_S)
        if mode == "hold":
            await asyncio.sleep(HOLD_S)
        if mode == "http500":
            await asyncio.sleep(TOKEN_DELAY_S)
            return web.Response(status=500, text='{"error": "internal boom"}')
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def event(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        per_chunk = 2 if mode == "pairs" else 1
        sent = 0
        if mode == "split":  # the first token's event arrives in two pieces
            first = f"data: {json.dumps(_chunk(' t0', None, None))}\n\n".encode()
            await resp.write(first[:10])
            await asyncio.sleep(SPLIT_GAP_S)
            await resp.write(first[10:])
            sent = 1
        while sent < n:
            await asyncio.sleep(TOKEN_DELAY_S)
            k = min(per_chunk, n - sent)
            sent += k
            text = "".join(f" t{sent - k + j}" for j in range(k))
            await event(_chunk(text, None, None))
            if mode == "cut" and sent >= 2:
                assert request.transport is not None
                request.transport.close()
                return resp
            if mode == "hang":
                await asyncio.sleep(30)
            if mode == "error" and sent >= 2:
                await event({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
                await resp.write_eof()
                return resp
        await event(_chunk("", "length", None))  # vLLM ends each choice with an empty-text chunk
        if mode != "nousage":
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
            await event({"id": "cmpl-0", "object": "text_completion", "choices": [], "usage": usage})
        if mode != "nodone":
            await event("[DONE]")
        await resp.write_eof()
        return resp


def _chunk(text: str, finish: str | None, usage: Any) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": "cmpl-0", "object": "text_completion", "model": "m", "choices": [choice], "usage": usage}


def _serve(engine: FakeEngine) -> contextlib.AbstractContextManager[str]:
    return serve_app([("POST", "/v1/completions", engine.completions)])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine()
    with _serve(engine) as url:
        yield url, engine


@pytest.fixture
def url(server: tuple[str, FakeEngine]) -> str:
    """The server, idle: a handler abandoned by an earlier test's client has ended."""
    engine = server[1]
    for _ in range(1000):
        if engine.in_flight == 0:
            break
        time.sleep(0.01)
    engine.reset()
    return server[0]


@pytest.fixture
def engine(server: tuple[str, FakeEngine], url: str) -> FakeEngine:
    return server[1]


def _spec(mode: str = "ok", tokens: int = 6, prompt_tokens: int = 10, tag: int = 0) -> RequestSpec:
    return RequestSpec(prompt=f"{mode} prompt {tag}", prompt_tokens=prompt_tokens, max_tokens=tokens)


def _send_one(url: str, spec: RequestSpec, **kwargs: Any) -> RequestRecord:
    async def go() -> RequestRecord:
        async with CompletionsClient(url, "m", **kwargs) as client:
            return await client.send(spec)

    return asyncio.run(go())


# --- one request -------------------------------------------------------------


def test_healthy_stream_is_timed(url: str, engine: FakeEngine) -> None:
    record = _send_one(url, _spec(tokens=6, prompt_tokens=42))
    assert record.ok and record.error is None
    assert record.prompt_tokens == 42
    assert record.output_tokens == 6
    assert record.ttft_s is not None and record.e2e_s is not None and record.tpot_s is not None
    assert 0 < record.ttft_s < record.e2e_s
    assert len(record.itl_s) == 5
    assert all(gap >= 0 for gap in record.itl_s)
    assert record.tpot_s == pytest.approx((record.e2e_s - record.ttft_s) / 5)
    assert record.ttft_s + sum(record.itl_s) <= record.e2e_s
    json.dumps(record.as_dict())


def test_request_body_and_headers(url: str, engine: FakeEngine) -> None:
    _send_one(url, _spec(tokens=3), api_key="sk-test")
    _send_one(url + "/v1/", _spec(tokens=3), ignore_eos=False)  # a '/v1' base URL works too
    first, second = engine.bodies
    assert first == {
        "model": "m",
        "prompt": "ok prompt 0",
        "max_tokens": 3,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    assert "ignore_eos" not in second
    assert engine.auth == ["Bearer sk-test", None]


def test_output_tokens_come_from_usage(url: str) -> None:
    record = _send_one(url, _spec("pairs", tokens=7))  # 4 chunks carrying 2+2+2+1 tokens
    assert record.ok
    assert record.output_tokens == 7
    assert len(record.itl_s) == 3


def test_without_usage_tokens_are_counted_chunks(url: str) -> None:
    record = _send_one(url, _spec("nousage", tokens=5))
    assert record.ok
    assert record.output_tokens == 5
    assert len(record.itl_s) == 4


def test_single_token_has_no_tpot(url: str) -> None:
    record = _send_one(url, _spec(tokens=1))
    assert record.ok and record.output_tokens == 1
    assert record.itl_s == [] and record.tpot_s is None


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("http500", "HTTP 500"),
        ("cut", ""),
        ("error", "engine died"),
        ("nodone", "before [DONE]"),
    ],
)
def test_broken_responses_become_failed_records(url: str, mode: str, expected: str) -> None:
    record = _send_one(url, _spec(mode, tokens=6))
    assert not record.ok
    assert record.error and expected in record.error
    assert len(record.error) <= 200
    assert record.e2e_s is None and record.tpot_s is None
    json.dumps(record.as_dict())


def test_timeout_becomes_failed_record(url: str) -> None:
    record = _send_one(url, _spec("hang", tokens=4), timeout_s=0.2)
    assert not record.ok
    assert record.error == "timeout after 0.2s"
    assert record.e2e_s is None


def test_refused_connection_becomes_failed_record() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    record = _send_one(f"http://127.0.0.1:{port}", _spec())
    assert not record.ok and record.error


def test_send_needs_an_open_client(url: str) -> None:
    with pytest.raises(RuntimeError):
        asyncio.run(CompletionsClient(url, "m").send(_spec()))


# --- runs --------------------------------------------------------------------


def test_closed_loop_run(url: str, engine: FakeEngine) -> None:
    engine.reset(gate_at=4)
    workload = Workload(concurrency=4, num_requests=12, warmup_requests=2, output_tokens=8)
    warmup = [_spec(tokens=3, prompt_tokens=999, tag=100 + i) for i in range(2)]
    measured = [_spec("gate", tokens=8, prompt_tokens=10 + i, tag=i) for i in range(12)]
    calls: list[tuple[int, int]] = []

    result = run_load(url, "m", warmup + measured, workload, progress=lambda d, t: calls.append((d, t)))

    assert isinstance(result, LoadResult)
    assert [r.prompt_tokens for r in result.records] == [10 + i for i in range(12)]  # warm-up excluded
    assert all(r.ok and r.output_tokens == 8 and len(r.itl_s) == 7 for r in result.records)
    assert {b["prompt"] for b in engine.bodies[:2]} == {s.prompt for s in warmup}  # warm-up went first
    assert len(engine.bodies) == 14
    assert engine.max_in_flight == 4
    assert calls == [(i, 12) for i in range(1, 13)]
    assert result.duration_s > 0
    assert result.achieved_rate == pytest.approx(12 / result.duration_s)
    assert result.offered_rate is None
    assert result.client_cpu_s >= 0
    first_send = min(r.start for r in result.records)
    assert all(r.start + (r.e2e_s or 0) - first_send <= result.duration_s + 1e-9 for r in result.records)

    figures = summarize(result)
    assert figures["completed"] == 12 and figures["failed"] == 0
    assert figures["total_output_tokens"] == 96
    assert figures["total_input_tokens"] == sum(10 + i for i in range(12))


def test_failures_do_not_stop_a_run(url: str) -> None:
    workload = Workload(concurrency=3, num_requests=8, warmup_requests=0, request_timeout_s=5)
    specs = [_spec("http500" if i % 3 == 0 else "cut" if i % 3 == 1 else "ok", tag=i) for i in range(8)]
    result = run_load(url, "m", specs, workload)
    assert [r.ok for r in result.records] == [i % 3 == 2 for i in range(8)]
    figures = summarize(result)
    assert figures["completed"] == 2 and figures["failed"] == 6


def test_concurrency_larger_than_requests(url: str, engine: FakeEngine) -> None:
    workload = Workload(concurrency=16, num_requests=3, warmup_requests=0)
    result = run_load(url, "m", [_spec(tag=i) for i in range(3)], workload)
    assert len(result.records) == 3 and all(r.ok for r in result.records)
    assert engine.max_in_flight <= 3


def test_too_few_requests_for_warmup_is_an_error(url: str) -> None:
    with pytest.raises(ValueError, match="none to measure"):
        run_load(url, "m", [_spec()] * 4, Workload(warmup_requests=4))


def test_progress_errors_stop_the_run(url: str) -> None:
    def boom(done: int, total: int) -> None:
        raise KeyError("progress broke")

    with pytest.raises(KeyError):
        run_load(url, "m", [_spec(tag=i) for i in range(6)], Workload(concurrency=2, warmup_requests=0), progress=boom)


# --- Poisson arrivals --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_poisson_schedule_statistics(seed: int) -> None:
    rate = 50.0
    offsets = poisson_offsets(4000, rate, seed)
    assert offsets[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert all(g >= 0 for g in gaps)
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.08)  # standard error is 1.6%
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, rel=0.1)  # exponential: CV = 1
    above_mean = sum(g > 1 / rate for g in gaps) / len(gaps)
    assert above_mean == pytest.approx(0.3679, abs=0.03)  # P(X > mean) = 1/e


def test_poisson_schedule_is_seeded() -> None:
    assert poisson_offsets(50, 3.0, 7) == poisson_offsets(50, 3.0, 7)
    assert poisson_offsets(50, 3.0, 7) != poisson_offsets(50, 3.0, 8)
    assert poisson_offsets(0, 3.0, 7) == []
    with pytest.raises(ValueError):
        poisson_offsets(5, 0.0, 7)


def test_poisson_run_is_capped_by_concurrency(url: str, engine: FakeEngine) -> None:
    # 400 req/s offered against ~190 req/s of capacity at 3 in flight: the cap must hold.
    workload = Workload(arrival="poisson", rate=400.0, concurrency=3, num_requests=30, warmup_requests=1)
    specs = [_spec(tokens=8, tag=i) for i in range(31)]
    done: list[int] = []
    result = run_load(url, "m", specs, workload, progress=lambda d, t: done.append(d))
    assert len(result.records) == 30 and all(r.ok for r in result.records)
    assert engine.max_in_flight <= 3
    assert result.offered_rate == 400.0
    assert done == list(range(1, 31))
    assert summarize(result)["offered_rate"] == 400.0


def test_poisson_run_follows_the_schedule(url: str) -> None:
    """Sends are spread over the schedule, not fired at once.

    Only a lower bound is asserted: a slow machine can make sends late, never early.
    """
    workload = Workload(arrival="poisson", rate=200.0, concurrency=64, num_requests=60, warmup_requests=0, seed=3)
    result = asyncio.run(run_load_async(url, "m", [_spec(tokens=2, tag=i) for i in range(60)], workload))
    starts = sorted(r.start for r in result.records)
    scheduled = poisson_offsets(60, 200.0, 3, planned=60)
    assert starts[-1] - starts[0] >= 0.5 * scheduled[-1]


def test_first_token_is_the_first_chunk_even_with_empty_text() -> None:
    """A token whose text is not printable yet still streams; vllm bench serve times TTFT from it."""
    from autotune.load.client import _StreamState

    def line(text: str | None, finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"choices": [{"text": text, "finish_reason": finish}]}).encode()

    state = _StreamState(start=10.0)
    state.feed(line(""), now=10.1)  # first token, no printable text yet
    state.feed(line("ab"), now=10.3)
    state.feed(line("c"), now=10.4)
    state.feed(line("", finish="length"), now=10.5)  # closes the answer: not a token
    state.feed(b"data: [DONE]", now=10.6)
    spec = RequestSpec(prompt="x", prompt_tokens=1, max_tokens=3)
    record = state.record(spec, None)
    assert record.ok and record.ttft_s == pytest.approx(0.1)
    assert record.output_tokens == 3
    assert record.itl_s == pytest.approx([0.2, 0.1])
