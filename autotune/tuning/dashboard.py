"""optuna-dashboard on a study's storage, bound to 127.0.0.1 only."""

from __future__ import annotations

import signal
import threading
from typing import Callable

from autotune.errors import UserError

__all__ = ["serve_dashboard"]


def serve_dashboard(storage_url: str, port: int, on_ready: Callable[[], None] | None = None) -> None:
    """Serves until Ctrl-C or SIGTERM; a port already taken is one line.

    The server runs in a daemon thread: a signal delivered while it handles a
    request would otherwise be swallowed by wsgiref's catch-all error handler.
    """
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UserError("optuna-dashboard is not installed (pip install 'autotune[report]')") from None
    if on_ready is not None:
        on_ready()
    stopped = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            run_server(storage_url, host="127.0.0.1", port=port)
        except BaseException as e:  # noqa: BLE001 - reported below, in the main thread
            failure.append(e)
        finally:
            stopped.set()

    threading.Thread(target=serve, name="optuna-dashboard", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda _s, _f: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    if failure and isinstance(failure[0], OSError):
        err = failure[0]
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {getattr(err, 'strerror', None) or err}")
