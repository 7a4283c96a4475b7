"""A zero-latency OpenAI-compatible streaming server, for measuring load generators.

A load generator's own ceiling (how many streamed tokens per second it can
take in, and how much time it adds to each measurement) cannot be read off a
real engine, whose latency hides the client's.  This server answers
``/v1/completions`` and ``/v1/chat/completions`` with exactly ``max_tokens``
SSE chunks (one token each) and no model behind them, so whatever a client
measures above the server's own timings is the client's doing.

It behaves like a continuous-batching engine whose step takes no time: one
scheduler pass writes the next token of every open stream, then yields to
the event loop so that new requests join the next pass.  A client that reads
slower than that pace finds several chunks per network read, as it would
from a real engine under load.

The server times itself on the same monotonic clock as its clients
(``time.perf_counter`` is CLOCK_MONOTONIC, shared by every process on Linux):
per request, when the request had fully arrived, when its first and last
token were handed to the kernel.  ``GET /fake/stats`` summarises that (and the
server's own CPU time, to show that the server was not the bottleneck);
``POST /fake/reset`` starts a new tally.

Raw asyncio (uvloop when installed) with a minimal HTTP/1.1 parser: it
serves the clients under test, not the web.  Binds 127.0.0.1 only.

    python benchmarks/fake_server.py --port 8000 --cpu 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeServer", "main"]

_COMPLETIONS = "/v1/completions"
_CHAT = "/v1/chat/completions"
_MAX_HEADER_BYTES = 64 * 1024
_SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk: SSE over keep-alive connections needs chunked framing."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: Any) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


@dataclass
class _Templates:
    """Pre-encoded chunks for one (endpoint, model): the hot loop only writes bytes."""

    token: bytes
    last: bytes
    chat: bool
    model: str

    @classmethod
    def build(cls, chat: bool, model: str) -> _Templates:
        return cls(cls._token(chat, model, None), cls._token(chat, model, "length"), chat, model)

    @staticmethod
    def _token(chat: bool, model: str, finish: str | None) -> bytes:
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": " x"}, "logprobs": None, "finish_reason": finish}
            obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [choice]}
        else:
            choice = {"index": 0, "text": " x", "logprobs": None, "finish_reason": finish, "stop_reason": None}
            obj = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": model, "choices": [choice]}
        return _event(obj)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        obj = {
            "id": "chatcmpl-fake" if self.chat else "cmpl-fake",
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": 0,
            "model": self.model,
            "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                      "completion_tokens": completion_tokens},
        }
        return _event(obj)


@dataclass
class _Stream:
    """One streaming response in progress."""

    conn: _Connection
    templates: _Templates
    remaining: int
    prompt_tokens: int
    include_usage: bool
    received: float
    first: float | None = None
    n: int = 0


@dataclass
class _Tally:
    """Server-side timings since the last reset."""

    since: float = field(default_factory=time.perf_counter)
    cpu_since: float = field(default_factory=time.process_time)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    requests: int = 0
    first_received: float | None = None
    last_done: float | None = None


class FakeServer:
    """The scheduler and the shared state of every connection."""

    def __init__(self, model: str, eos_prob: float = 0.0, seed: int = 0) -> None:
        self.model = model
        self.eos_prob = eos_prob
        self.rng = random.Random(seed)
        self.active: list[_Stream] = []
        self.incoming: list[_Stream] = []
        self.wake = asyncio.Event()
        self.tally = _Tally()
        self._templates: dict[tuple[bool, str], _Templates] = {}

    def templates(self, chat: bool, model: str) -> _Templates:
        key = (chat, model)
        t = self._templates.get(key)
        if t is None:
            t = self._templates[key] = _Templates.build(chat, model)
        return t

    def submit(self, stream: _Stream) -> None:
        self.incoming.append(stream)
        self.wake.set()

    async def run(self) -> None:
        """One pass = one token to every open stream; then let new requests in."""
        perf = time.perf_counter
        while True:
            if self.incoming:
                self.active.extend(self.incoming)
                self.incoming.clear()
            if not self.active:
                self.wake.clear()
                await self.wake.wait()
                continue
            still: list[_Stream] = []
            for s in self.active:
                transport = s.conn.transport
                if transport is None or transport.is_closing():
                    s.conn.stream_ended()
                    continue
                s.remaining -= 1
                s.n += 1
                if s.remaining > 0:
                    transport.write(s.templates.token)
                    if s.first is None:
                        s.first = perf()
                    still.append(s)
                    continue
                tail = s.templates.last
                if s.include_usage:
                    tail += s.templates.usage(s.prompt_tokens, s.n)
                transport.write(tail + _chunk(b"data: [DONE]\n\n") + _LAST_CHUNK)
                self._finished(s, perf())
                s.conn.stream_ended()
            self.active = still
            await asyncio.sleep(0)

    def _finished(self, s: _Stream, now: float) -> None:
        t = self.tally
        first = s.first if s.first is not None else now
        t.ttft.append(first - s.received)
        if s.n > 1:
            t.itl.append((now - first) / (s.n - 1))
        t.tokens += s.n
        t.requests += 1
        if t.first_received is None or s.received < t.first_received:
            t.first_received = s.received
        t.last_done = now

    def stats(self) -> dict[str, Any]:
        t = self.tally
        span = (t.last_done - t.first_received) if t.first_received is not None and t.last_done else 0.0

        def q(xs: list[float], p: float) -> float | None:
            if not xs:
                return None
            xs = sorted(xs)
            k = (len(xs) - 1) * p
            lo = int(k)
            hi = min(lo + 1, len(xs) - 1)
            return 1000 * (xs[lo] + (xs[hi] - xs[lo]) * (k - lo))

        return {
            "requests": t.requests,
            "tokens": t.tokens,
            "span_s": span,
            "tokens_per_s": t.tokens / span if span > 0 else None,
            "cpu_s": time.process_time() - t.cpu_since,
            "wall_s": time.perf_counter() - t.since,
            "median_ttft_ms": q(t.ttft, 0.5),
            "p99_ttft_ms": q(t.ttft, 0.99),
            "mean_itl_ms": 1000 * statistics.fmean(t.itl) if t.itl else None,
            "p99_itl_ms": q(t.itl, 0.99),
        }

    def reset(self) -> None:
        self.tally = _Tally()


class _Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive; one request at a time, as every streaming client sends them."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.streaming = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self._process()

    def stream_ended(self) -> None:
        self.streaming = False
        if self.close_after and self.transport is not None:
            self.transport.close()
        elif self.buffer:
            self._process()

    def _process(self) -> None:
        while self.buffer and not self.streaming and self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEADER_BYTES:
                    self._reply(431, b"headers too large", close=True)
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, version = head[0].split(" ", 2)
            except ValueError:
                self._reply(400, b"bad request line", close=True)
                return
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            received = time.perf_counter()
            conn_hdr = headers.get("connection", "").lower()
            self.close_after = conn_hdr == "close" or (version == "HTTP/1.0" and conn_hdr != "keep-alive")
            self._handle(method, target.split("?", 1)[0], body, received)

    def _handle(self, method: str, path: str, body: bytes, received: float) -> None:
        server = self.server
        if method == "POST" and path in (_COMPLETIONS, _CHAT):
            try:
                req = json.loads(body)
            except ValueError:
                self._reply(400, b'{"error":{"message":"body is not JSON"}}')
                return
            self._generate(req, path == _CHAT, received)
        elif method == "GET" and path in ("/health", "/ping"):
            self._reply(200, b"")
        elif method == "GET" and path in ("/v1/models", "/models"):
            models = {"object": "list", "data": [{"id": server.model, "object": "model", "created": 0,
                                                  "owned_by": "fake", "max_model_len": 1 << 20}]}
            self._reply(200, json.dumps(models).encode())
        elif method == "GET" and path == "/version":
            self._reply(200, b'{"version":"fake"}')
        elif method == "GET" and path == "/fake/stats":
            self._reply(200, json.dumps(server.stats()).encode())
        elif method == "POST" and path == "/fake/reset":
            server.reset()
            self._reply(200, b"{}")
        else:
            self._reply(404, b'{"error":{"message":"not found"}}')

    def _generate(self, req: dict[str, Any], chat: bool, received: float) -> None:
        server = self.server
        n = req.get("max_completion_tokens") or req.get("max_tokens") or 16
        n = max(1, int(n))
        if not req.get("ignore_eos") and server.eos_prob > 0:
            # Without ignore_eos a model may stop early; a geometric draw stands in for EOS.
            k = 1
            while k < n and server.rng.random() >= server.eos_prob:
                k += 1
            n = k
        model = str(req.get("model") or server.model)
        templates = server.templates(chat, model)
        prompt_tokens = _prompt_tokens(req, chat)
        if not req.get("stream"):
            self._reply(200, _whole_response(chat, model, n, prompt_tokens))
            return
        opts = req.get("stream_options") or {}
        assert self.transport is not None
        self.transport.write(_SSE_HEADERS)
        self.streaming = True
        server.submit(_Stream(self, templates, n, prompt_tokens, bool(opts.get("include_usage")), received))

    def _reply(self, status: int, body: bytes, close: bool = False) -> None:
        if self.transport is None:
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close or self.close_after else "") + "\r\n"
        )
        self.transport.write(head.encode() + body)
        if close or self.close_after:
            self.transport.close()


def _prompt_tokens(req: dict[str, Any], chat: bool) -> int:
    """A rough count: the server has no tokenizer, and clients under test do not depend on it."""
    if chat:
        text = " ".join(str(m.get("content", "")) for m in req.get("messages") or [] if isinstance(m, dict))
        return len(text.split())
    prompt = req.get("prompt", "")
    if isinstance(prompt, list):
        return len(prompt) if prompt and isinstance(prompt[0], int) else len(" ".join(map(str, prompt)).split())
    return len(str(prompt).split())


def _whole_response(chat: bool, model: str, n: int, prompt_tokens: int) -> bytes:
    text = " x" * n
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n, "completion_tokens": n}
    if chat:
        obj: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                            "finish_reason": "length"}], "usage": usage}
    else:
        obj = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": model,
               "choices": [{"index": 0, "text": text, "finish_reason": "length"}], "usage": usage}
    return json.dumps(obj).encode()


async def serve(host: str, port: int, model: str, eos_prob: float = 0.0, ready: Any = None) -> None:
    loop = asyncio.get_running_loop()
    server = FakeServer(model, eos_prob)
    srv = await loop.create_server(lambda: _Connection(server), host, port, backlog=4096, reuse_address=True)
    bound = srv.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{bound}", flush=True)
    if ready is not None:
        ready(bound)
    async with srv:
        await server.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--model", default="fake", help="model name reported by /v1/models")
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU core")
    parser.add_argument("--eos-prob", type=float, default=0.0,
                        help="per-token chance of stopping early when a request does not set ignore_eos")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    runner: Any = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    try:
        runner(serve("127.0.0.1", args.port, args.model, args.eos_prob))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
