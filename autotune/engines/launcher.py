"""Starts an engine server as a child process and takes it down again, whole.

Shared by every engine: the server runs in its own process group (so its
workers and compile helpers go with it), on a loopback port, with stdout and
stderr in the trial's log file. A failed start is reported with the engine's own
last words, because that is what a user needs to fix the configuration.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Callable

from autotune.engines.base import LaunchPlan
from autotune.errors import EngineStartError

_ERROR_LINE = re.compile(
    r"(error:|Error\b|Exception\b|exited with|CUDA out of memory|OutOfMemory|No available memory|not supported|Killed)",
)
# Lines that mention an error but explain nothing: stack-frame noise and wrappers.
_NOISE = re.compile(
    r"^\s*(File \"|Traceback|\^|~|raise |During handling|The above exception|\s*$)"
    r"|See root cause above|See stack trace for root cause|EngineDeadError|output_handler failed|failed to automatically increase"
)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the engine binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> list[str]:
    try:
        with open(path, "r", errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except FileNotFoundError:
        return []


def reason_from_log(path: Path) -> str:
    """The engine's own error line: the last line that says what went wrong."""
    lines = tail(path, 200)
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if _ERROR_LINE.search(line) and not _NOISE.search(_strip_log_prefix(line)):
            reason = _strip_log_prefix(line)
            if "validation error" in line:
                # pydantic puts the field and the complaint on the next lines
                detail = [_strip_log_prefix(x).split(" [type=")[0] for x in lines[i + 1 : i + 3]]
                detail = [d for d in detail if d and not d.startswith("For further information")]
                reason = ": ".join([reason, *detail])
            return reason[:500]
    for line in reversed(lines):
        if line.strip():
            return _strip_log_prefix(line)[:500]
    return "engine exited without output"


def _strip_log_prefix(line: str) -> str:
    # vLLM prefixes lines with "(APIServer pid=123) ERROR 11-24 10:00:00 [file.py:12] "
    line = re.sub(r"^\(\w+ pid=\d+\)\s*", "", line.strip())
    line = re.sub(r"^(ERROR|WARNING|INFO|DEBUG)\s+\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \[[^\]]*\]\s*", "", line)
    return line


class EngineServer:
    """One running engine; use as a context manager so it is always torn down."""

    def __init__(
        self,
        plan: LaunchPlan,
        log_path: Path,
        *,
        startup_timeout_s: float = 600.0,
        poll_s: float = 0.5,
    ) -> None:
        self.plan = plan
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.poll_s = poll_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.plan.env}
        with open(self.log_path, "ab") as log:
            log.write(f"$ {self.plan.command_line()}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(  # argv list, never a shell string
                self.plan.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def wait_healthy(self, on_wait: Callable[[float], None] | None = None) -> float:
        """Blocks until the health endpoint answers 200; returns seconds taken."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        url = self.plan.base_url + self.plan.health_path
        while True:
            elapsed = time.monotonic() - t0
            code = self.proc.poll()
            if code is not None:
                raise EngineStartError(
                    f"engine exited with status {code} before it was healthy: {reason_from_log(self.log_path)}",
                    "\n".join(tail(self.log_path)),
                )
            if elapsed > self.startup_timeout_s:
                raise EngineStartError(
                    f"engine not healthy after {self.startup_timeout_s:.0f}s (last log line: "
                    f"{reason_from_log(self.log_path)})",
                    "\n".join(tail(self.log_path)),
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        self.startup_s = time.monotonic() - t0
                        return self.startup_s
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if on_wait is not None:
                on_wait(elapsed)
            time.sleep(self.poll_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the whole group, then SIGKILL after the grace period."""
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(pgid, signal.SIGKILL)
            # Children of the group may outlive the leader for a moment.
            deadline = time.monotonic() + 10
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "EngineServer":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
