"""An engine's output on disk: capped in size, secrets masked.

The engine's log is where autotune reads why a start failed and what the start
cost, so it must survive a chatty engine without filling the disk, and must never
keep a key the engine was handed.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from pathlib import Path
from typing import IO

DEFAULT_LOG_MAX_BYTES = 64 * 2**20


def default_log_max_bytes() -> int:
    """Per log file; ``AUTOTUNE_ENGINE_LOG_MAX_MIB`` overrides it."""
    value = os.environ.get("AUTOTUNE_ENGINE_LOG_MAX_MIB")
    try:
        return max(4096, int(float(value) * 2**20)) if value else DEFAULT_LOG_MAX_BYTES
    except ValueError:
        return DEFAULT_LOG_MAX_BYTES


_SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD)", re.IGNORECASE)


def secret_values(env: dict[str, str]) -> list[bytes]:
    """Values of secret-looking variables, to be masked if an engine ever prints them."""
    return sorted(
        {v.encode() for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 8}, key=len, reverse=True
    )


def _rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def tail(path: Path, lines: int = 40) -> list[str]:
    """The last lines of a log, reaching into its rotated copy when the live one is short."""
    out: deque[str] = deque(maxlen=lines)
    for part in (_rotated(path), path):
        try:
            with open(part, "r", errors="replace") as f:
                out.extend(line.rstrip("\n") for line in f)
        except FileNotFoundError:
            continue
    return list(out)


class CappedLog:
    """An engine's output on disk, never more than two files of ``max_bytes``.

    A chatty or looping engine must not fill the study folder's disk: when the
    live file reaches the cap it becomes ``<name>.1`` (replacing the older one)
    and a new one starts, so the newest output, where the engine's last words
    are, is always kept. A full disk stops the copy, never the engine: the pipe
    is still drained. Secret values are masked line by line.
    """

    def __init__(self, path: Path, max_bytes: int, *, secrets: list[bytes] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.secrets = secrets or []
        self.rotations = 0
        self.broken: str | None = None
        self._lock = threading.Lock()
        self._file = open(path, "ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        for secret in self.secrets:
            data = data.replace(secret, b"***")
        with self._lock:
            if self.broken is not None or self._file.closed:
                return
            try:
                if self._size + len(data) > self.max_bytes and self._size > 0:
                    self._rotate()
                data = data[: self.max_bytes]
                self._file.write(data)
                self._file.flush()
                self._size += len(data)
            except OSError as e:  # ENOSPC and friends
                self.broken = f"{type(e).__name__}: {e}"

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, _rotated(self.path))
        self.rotations += 1
        self._file = open(self.path, "wb")
        note = f"autotune: log reached {self.max_bytes} bytes; earlier output in {_rotated(self.path).name}, older dropped\n"
        self._file.write(note.encode())
        self._size = len(note)

    def pump(self, stream: "IO[bytes]") -> None:
        """Copies the engine's output line by line until it closes its end."""
        with stream:
            for line in iter(lambda: stream.readline(1 << 16), b""):
                self.write(line)

    def close(self) -> None:
        with self._lock:
            self._file.close()
