"""A server's lifetime as one context manager: start, wait until healthy, always stop.

Every place that needs a running engine (a trial, a quality baseline,
``autotune measure``) goes through ``serving()``, so that no path can leave an
engine behind or forget its health deadline. An endpoint autotune did not
start is served by the same interface, with nothing to start or stop.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Protocol

from autotune.engines.base import LaunchPlan
from autotune.engines.device_lock import devices_of, holding
from autotune.engines.launcher import EngineServer
from autotune.errors import EngineStartError

__all__ = ["Endpoint", "Server", "serving"]


class Server(Protocol):
    """What a measurement needs of a running server."""

    plan: LaunchPlan
    startup_s: float | None

    def start(self) -> None: ...
    def wait_healthy(self, on_wait: Callable[[float], None] | None = None) -> float: ...
    def alive(self, settle_s: float = 0.0) -> bool: ...
    def stop(self) -> None: ...


class Endpoint:
    """A server that is already running: nothing to start or stop.

    Any HTTP answer from its models path counts as up (some servers answer that
    path with an error of their own); refused connections, DNS and TLS failures
    do not.
    """

    def __init__(self, plan: LaunchPlan, api_key: str | None = None) -> None:
        self.plan = plan
        self.startup_s: float | None = None
        self.url = plan.base_url + plan.health_path
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def start(self) -> None:
        pass

    def wait_healthy(self, on_wait: Callable[[float], None] | None = None) -> float:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, headers=self.headers), timeout=10):
                pass
        except urllib.error.HTTPError:
            pass  # it answered; the requests themselves will tell the rest
        except OSError as e:  # URLError: nothing answered
            raise EngineStartError(f"endpoint {self.url} did not answer: {e}", "") from None
        self.startup_s = time.monotonic() - t0
        return self.startup_s

    def alive(self, settle_s: float = 0.0) -> bool:
        return True  # not ours to watch: a failing server shows in its requests

    def stop(self) -> None:
        pass


@contextmanager
def serving(
    plan: LaunchPlan,
    log_path: Path,
    *,
    launches: bool = True,
    api_key: str | None = None,
    startup_timeout_s: float = 600.0,
    on_wait: Callable[[float], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> Iterator[Server]:
    """Yields a healthy server; raises ``EngineStartError`` with the engine's own words when it is not.

    ``launches=False``: the plan's address is an endpoint that is already up.
    Whatever happens inside the block, the engine's whole process group is gone
    when it ends. An engine autotune starts holds its devices from start to
    teardown (``autotune.engines.device_lock``); ``say`` hears that it waits for them.
    """
    if not launches:  # someone else's server, on devices autotune knows nothing of
        endpoint = Endpoint(plan, api_key)
        endpoint.wait_healthy(on_wait=on_wait)
        yield endpoint
        return
    server = EngineServer(plan, log_path, startup_timeout_s=startup_timeout_s)
    with holding(devices_of({**os.environ, **plan.env}), say=say):
        try:
            server.start()
            server.wait_healthy(on_wait=on_wait)
            yield server
        finally:
            server.stop()
