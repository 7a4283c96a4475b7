"""An aiohttp app served on 127.0.0.1 from a thread of its own, for tests whose client blocks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence

from aiohttp import web

Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


@contextlib.contextmanager
def serve_app(routes: Sequence[Route]) -> Iterator[str]:
    """Yield the app's base URL; ``routes`` are ``(method, path, handler)``.

    The load generator runs its own event loop and blocks the test's thread, so
    the server needs a loop on another thread.  Handlers are cancelled when a
    client hangs up, as a real server's are.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
