"""Streaming client for an OpenAI-compatible ``/v1/completions`` endpoint.

Latency figures are only as good as the timestamps behind them, so each one is
taken (``time.perf_counter``, a monotonic clock) the moment a network read
hands us bytes, before any JSON parsing, and the body is consumed
incrementally rather than awaited whole.  An SSE event is timed by the read
that brought its first byte, even when the rest of it came with a later one.  SSE events that arrive in the same network read share a timestamp
(an inter-token gap of 0), as in ``vllm bench serve``; a high
``client_cpu_util`` in the summary says when that is the client's fault.
One failing request must never abort a load run, so ``send`` turns
every per-request problem into a record with ``ok=False``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from autotune.load.workload import RequestSpec

__all__ = ["CompletionsClient", "RequestRecord"]

_MAX_ERROR_CHARS = 200
_MAX_ERROR_BODY_BYTES = 4096


@dataclass
class RequestRecord:
    """What one request did, in seconds on the monotonic clock.

    ``prompt_tokens`` is the count we built the prompt to (see
    ``autotune.load.workload``), not the server's, which may include a BOS
    token.  ``output_tokens`` comes from the server's final ``usage`` chunk when
    there is one (a chunk may carry several tokens), else the number of
    text-carrying chunks.  ``e2e_s`` runs to the arrival of ``data: [DONE]``.
    On failure the fields measured before the failure are kept for diagnosis,
    and ``e2e_s``/``tpot_s`` stay ``None``.
    """

    ok: bool
    error: str | None
    prompt_tokens: int
    output_tokens: int
    start: float
    ttft_s: float | None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    tpot_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for trial artefacts."""
        return asdict(self)


class _StreamFailed(Exception):
    """The server reported an error inside an otherwise healthy stream."""


@dataclass
class _StreamState:
    """Accumulates timings from SSE lines as they arrive.

    ``finished_at`` and ``finish_ends_stream`` serve servers that end the stream
    without [DONE] (transformers serve): a choice's finish_reason arrived, and the
    client says where the server picks the length.
    """

    start: float
    first_text: float | None = None
    last_text: float | None = None
    itl: list[float] = field(default_factory=list)
    text_chunks: int = 0
    usage_tokens: int | None = None
    done_at: float | None = None
    finished_at: float | None = None
    finish_ends_stream: bool = False

    def feed(self, line: bytes, now: float) -> None:
        """Consume one SSE line; ``now`` is when the bytes holding it arrived."""
        line = line.strip()
        if not line.startswith(b"data:") or self.done_at is not None:
            return  # blank separators, comments, ``event:`` lines, trailing bytes
        payload = line[len(b"data:") :].strip()
        if payload == b"[DONE]":
            self.done_at = now
            return
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise _StreamFailed(f"bad SSE payload: {payload[:80]!r}") from exc
        if not isinstance(chunk, dict):
            raise _StreamFailed(f"bad SSE payload: {payload[:80]!r}")
        error = _error_message(chunk)
        if error is not None:
            raise _StreamFailed(f"server error in stream: {error}")
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        choices = chunk.get("choices")
        if choices and isinstance(choices[0], dict) and choices[0].get("finish_reason"):
            self.finished_at = now
        if choices and isinstance(choices[0], dict) and _carries_token(choices[0]):
            if self.last_text is None:
                self.first_text = now
            else:
                self.itl.append(now - self.last_text)
            self.last_text = now
            self.text_chunks += 1

    def record(self, spec: RequestSpec, error: str | None) -> RequestRecord:
        ttft = None if self.first_text is None else self.first_text - self.start
        output_tokens = self.usage_tokens if self.usage_tokens is not None else self.text_chunks
        if error is None and self.done_at is None:
            if self.finished_at is not None and self.finish_ends_stream:
                # The server said why the answer ended, then closed the stream: it is whole.
                self.done_at = self.finished_at
            else:
                error = "stream ended before [DONE]"
        if error is not None:
            return RequestRecord(
                ok=False,
                error=_shorten(error),
                prompt_tokens=spec.prompt_tokens,
                output_tokens=output_tokens,
                start=self.start,
                ttft_s=ttft,
                itl_s=self.itl,
            )
        assert self.done_at is not None
        e2e = self.done_at - self.start
        tpot = (e2e - ttft) / (output_tokens - 1) if ttft is not None and output_tokens > 1 else None
        return RequestRecord(
            ok=True,
            error=None,
            prompt_tokens=spec.prompt_tokens,
            output_tokens=output_tokens,
            start=self.start,
            ttft_s=ttft,
            itl_s=self.itl,
            e2e_s=e2e,
            tpot_s=tpot,
        )


class CompletionsClient:
    """One pooled HTTP session shared by every request of a run.

    Use as ``async with CompletionsClient(...) as client: await client.send(spec)``.
    The connector has no connection limit: the caller's concurrency policy is
    the only one, so the client never queues requests behind our back.
    ``base_url`` is the server root (``http://host:port``); a trailing ``/v1``
    is accepted too.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        ignore_eos: bool = True,
        api_key: str | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        root = base_url.rstrip("/")
        self.url = root + ("/completions" if root.endswith("/v1") else "/v1/completions")
        self.model = model
        self.ignore_eos = ignore_eos
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CompletionsClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def payload(self, spec: RequestSpec) -> dict[str, Any]:
        """The request body; ``ignore_eos`` is a vLLM extension, hence optional."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": spec.prompt,
            "max_tokens": spec.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body

    async def send(self, spec: RequestSpec) -> RequestRecord:
        """Send one request and time it; failures come back as ``ok=False``.

        The timeout (``timeout_s``) covers the whole exchange, connect to
        ``[DONE]``.
        """
        if self._session is None:
            raise RuntimeError("CompletionsClient is not open; use 'async with'")
        body = self.payload(spec)
        state = _StreamState(time.perf_counter())
        # Without ignore_eos the server decides where an answer ends and says so with a
        # finish_reason; some such servers (transformers serve) then close without [DONE].
        state.finish_ends_stream = not self.ignore_eos
        try:
            error = await asyncio.wait_for(self._exchange(body, state), self.timeout_s)
        except asyncio.TimeoutError:
            # A server that lingers after [DONE] has still answered in full.
            error = None if state.done_at is not None else f"timeout after {self.timeout_s:g}s"
        except _StreamFailed as exc:
            error = str(exc)
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # one odd response must not end the run
            error = f"{type(exc).__name__}: {exc}"
        return state.record(spec, error)

    async def _exchange(self, body: dict[str, Any], state: _StreamState) -> str | None:
        """Post and consume the stream; an HTTP error status is returned, not raised.

        Reading goes on past ``[DONE]`` to the end of the body so that the
        connection returns to the pool instead of being closed.
        """
        assert self._session is not None
        async with self._session.post(self.url, json=body) as resp:
            if resp.status != 200:
                detail = await resp.content.read(_MAX_ERROR_BODY_BYTES)
                return f"HTTP {resp.status}: {detail.decode('utf-8', 'replace').strip()}"
            pending, pending_at = b"", 0.0  # an unfinished line, and when its first byte came
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                *lines, rest = (pending + data).split(b"\n")
                for i, line in enumerate(lines):
                    state.feed(line, pending_at if i == 0 and pending else now)
                if lines or not pending:
                    pending_at = now  # ``rest`` began in this read
                pending = rest
            if pending:
                state.feed(pending, pending_at)
        return None


def _error_message(chunk: dict[str, Any]) -> str | None:
    """The message of an OpenAI-style error object, in either shape vLLM has used."""
    err = chunk.get("error")
    if err:
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    if chunk.get("object") == "error":
        return str(chunk.get("message", "unknown error"))
    return None


def _carries_token(choice: dict[str, Any]) -> bool:
    """Does this streamed choice stand for a generated token?

    A token whose text is not yet printable (half of a multi-byte character,
    a piece the detokenizer holds back) still streams as a chunk with empty
    text, and ``vllm bench serve`` times the first token from the first such
    chunk. Waiting for printable text instead put TTFT hundreds of
    milliseconds late on a small-vocabulary model and shrank TPOT to match.
    An empty chunk that only closes the answer (a ``finish_reason`` and no
    text) is not a token.
    """
    text = choice.get("text")
    if text is None:
        return False
    return bool(text) or not choice.get("finish_reason")


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
