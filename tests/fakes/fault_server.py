"""A fault-injecting stand-in for an OpenAI-compatible engine, for tests only.

The real engine cannot be made to answer 500, cut a stream, stall, or print
without end on demand; this server can, one fault per start. It is launched by
autotune itself through ``engine.launch_template`` (the engine's own argv
follows ``--`` and is ignored), so the launcher, the process group, the load
generator and the study all run for real around it.

Modes (``--mode``, or the first word of ``--mode-file`` read at start):
  ok            streams ``max_tokens`` chunks, usage, ``[DONE]``
  5xx           every completion is HTTP 500 (``--fail-every K``: every K-th)
  cut           two chunks, then the connection is closed mid-stream
  stall         one chunk, then nothing, forever
  chatty        ok, but writes ``--chatty-mib`` MiB of log lines first
  never_healthy never listens
  slow          ok, ``--token-delay`` seconds between chunks
  fast          ok, no log line per request (to outrun the client)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from aiohttp import web


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", default="ok")
    p.add_argument("--mode-file")
    p.add_argument("--fail-every", type=int, default=1)
    p.add_argument("--token-delay", type=float, default=0.0)
    p.add_argument("--chatty-mib", type=float, default=8.0)
    p.add_argument("--require-key-env", help="answer 401 unless the bearer token is this variable's value")
    argv = sys.argv[1:]
    if "--" in argv:  # the engine's own command line, wrapped by launch_template
        argv = argv[: argv.index("--")]
    args = p.parse_args(argv)
    if args.mode_file and Path(args.mode_file).exists():
        args.mode = Path(args.mode_file).read_text().split()[0]
    return args


def chunk(text: str, usage: int | None = None) -> bytes:
    body: dict = {"object": "text_completion", "choices": [{"index": 0, "text": text}]}
    if usage is not None:
        body = {"object": "text_completion", "choices": [], "usage": {"completion_tokens": usage}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def make_app(args: argparse.Namespace) -> web.Application:
    served = 0
    bursts: dict[int, bytes] = {}

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="# fake\nfake_requests_total %d\n" % served)

    key = os.environ.get(args.require_key_env, "") if args.require_key_env else None

    async def completions(request: web.Request) -> web.StreamResponse:
        nonlocal served
        served += 1
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": {"message": "bad or missing API key"}}, status=401)
        body = await request.json()
        if args.mode != "fast":
            print(f"request {served} mode {args.mode}", flush=True)
        if args.mode == "5xx" and served % args.fail_every == 0:
            return web.json_response({"error": {"message": "injected internal error"}}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = int(body.get("max_tokens", 16))
        if args.mode == "cut":
            await resp.write(chunk("a"))
            await resp.write(chunk("b"))
            assert request.transport is not None
            request.transport.close()  # mid-stream, no terminating chunk
            return resp
        if args.mode == "stall":
            await resp.write(chunk("a"))
            await asyncio.sleep(3600)
        if not args.token_delay:  # the whole answer in one write: cheap here, n events for the client
            if n not in bursts:
                bursts[n] = chunk("a") * n + chunk("", usage=n) + b"data: [DONE]\n\n"
            await resp.write(bursts[n])
            await resp.write_eof()
            return resp
        for _ in range(n):
            await asyncio.sleep(args.token_delay)
            await resp.write(chunk("a"))
        await resp.write(chunk("", usage=n))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/completions", completions)
    return app


def main() -> None:
    args = parse()
    print(f"fault server pid {os.getpid()} mode {args.mode}", flush=True)
    if args.require_key_env:  # as careless engines do: print the key (the launcher must mask it)
        print(f"api_key={os.environ.get(args.require_key_env)}", flush=True)
    if args.mode == "never_healthy":
        while True:
            time.sleep(3600)
    if args.mode == "chatty":
        line = ("INFO chatty engine log line " + "x" * 100 + "\n").encode()
        for _ in range(int(args.chatty_mib * 2**20 / len(line))):
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        args.mode = "ok"
        print("chatty start finished", flush=True)
    web.run_app(make_app(args), host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
