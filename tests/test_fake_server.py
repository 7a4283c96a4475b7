"""The load-generator benchmark's zero-latency server streams exactly what it is asked for.

Its figures are only a yardstick if every client gets ``max_tokens`` chunks,
one token each, in the shapes vLLM sends; the server runs as its own process,
as the benchmark runs it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from autotune.load.client import CompletionsClient
from autotune.load.workload import RequestSpec

SERVER = Path(__file__).resolve().parent.parent / "benchmarks" / "fake_server.py"


def _start(*extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", *extra], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    return proc, line.split()[-1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, url = _start("--eos-prob", "0.2")
    yield url
    proc.terminate()
    proc.wait(5)


async def _events(url: str, path: str, body: dict) -> list[str]:
    async with aiohttp.ClientSession() as session, session.post(url + path, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]


@pytest.mark.parametrize("n", [1, 7, 300])
def test_completions_stream_exactly_max_tokens(server: str, n: int) -> None:
    body = {"model": "m", "prompt": "a b c", "max_tokens": n, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    events = asyncio.run(_events(server, "/v1/completions", body))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert len(texts) == n
    assert chunks[-1]["usage"]["completion_tokens"] == n
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def test_chat_stream_carries_deltas(server: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5,
            "stream": True, "ignore_eos": True}
    events = asyncio.run(_events(server, "/v1/chat/completions", body))
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == [" x"] * 5
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_without_ignore_eos_a_stream_may_stop_early(server: str) -> None:
    body = {"model": "m", "prompt": "a", "max_tokens": 400, "stream": True, "stream_options": {"include_usage": True}}
    events = asyncio.run(_events(server, "/v1/completions", body))
    produced = json.loads(events[-2])["usage"]["completion_tokens"]
    assert 1 <= produced < 400


def test_autotune_client_counts_every_token_and_the_server_agrees(server: str) -> None:
    urllib.request.urlopen(urllib.request.Request(server + "/fake/reset", method="POST")).read()

    async def go() -> list:
        async with CompletionsClient(server, "m") as client:
            return await asyncio.gather(*[client.send(RequestSpec("p q", 2, 50)) for _ in range(8)])

    records = asyncio.run(go())
    assert all(r.ok for r in records)
    assert [r.output_tokens for r in records] == [50] * 8
    with urllib.request.urlopen(server + "/fake/stats") as resp:
        stats = json.loads(resp.read())
    assert stats["requests"] == 8
    assert stats["tokens"] == 400


def test_keep_alive_serves_requests_in_turn_on_one_connection(server: str) -> None:
    async def go() -> list[int]:
        counts = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for n in (3, 4, 5):
                body = {"model": "m", "prompt": "a", "max_tokens": n, "stream": True, "ignore_eos": True}
                async with session.post(server + "/v1/completions", json=body) as resp:
                    text = (await resp.read()).decode()
                counts.append(text.count('"text"'))
        return counts

    assert asyncio.run(go()) == [3, 4, 5]


def test_unknown_path_is_404(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server + "/nope")
    assert err.value.code == 404
