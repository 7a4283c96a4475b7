"""One measurement at a time on one machine, or on one set of GPUs.

Two engines measured at once on the same devices disturb each other's figures
(engine starts took twice as long, both measurements were off), and a second
engine may not even fit. So every engine autotune launches holds a lock on the
devices it uses from its start to its teardown, and a study holds it for a
whole trial; a second study or worker waits for it, and says for whom.

The locks are ``flock(2)`` locks under autotune's cache folder, one folder per
host name (a cache on a shared file system serves many machines); the kernel
releases them when their process dies, however it dies. An engine bound to
GPUs (``CUDA_VISIBLE_DEVICES``) takes a lock per GPU and a shared lock on the
machine, so workers on disjoint GPUs measure side by side; an engine bound to
nothing takes the machine whole. Held locks are counted per process: a quality
baseline started inside a trial does not wait for its own study.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Callable

from autotune.engines.base import cache_root

__all__ = ["devices_of", "holding", "lock_folder"]

_depth = 0
_guard = threading.Lock()


def lock_folder() -> Path:
    """``$AUTOTUNE_LOCKS``, else ``<cache>/locks/<host name>``."""
    override = os.environ.get("AUTOTUNE_LOCKS")
    if override:
        return Path(override).expanduser()
    return cache_root() / "locks" / (socket.gethostname() or "localhost")


def devices_of(env: Mapping[str, str]) -> tuple[int, ...] | None:
    """The GPUs an engine with this environment is bound to; None: the whole machine."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    try:
        return tuple(sorted({int(x) for x in value.split(",") if x.strip()}))
    except ValueError:  # GPU UUIDs: not worth mapping, the machine is taken whole
        return None


def describe(gpus: tuple[int, ...] | None) -> str:
    return "this machine" if gpus is None else f"GPU{'s' if len(gpus) > 1 else ''} {','.join(map(str, gpus))}"


@contextlib.contextmanager
def holding(
    gpus: tuple[int, ...] | None, *, holder: str | None = None, say: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Holds the devices for the block, waiting (and saying so) while another process holds them.

    A folder that cannot hold the locks (a read-only cache) leaves the block
    unlocked, with one line said: measuring beats refusing to measure.
    """
    global _depth
    with _guard:
        nested = _depth > 0
        _depth += 1
    try:
        if nested:
            yield
            return
        with contextlib.ExitStack() as stack:
            try:
                _acquire(stack, gpus, holder or _default_holder(), say or _stderr)
            except OSError as e:
                (say or _stderr)(f"measuring without the device lock ({lock_folder()}: {e.strerror or e})")
            yield
    finally:
        with _guard:
            _depth -= 1


def _acquire(stack: contextlib.ExitStack, gpus: tuple[int, ...] | None, holder: str,
             say: Callable[[str], None]) -> None:
    folder = lock_folder()
    folder.mkdir(parents=True, exist_ok=True)
    what = describe(gpus)
    # The machine first, then GPUs in one order: two processes never hold each other's next lock.
    wanted = [("machine", fcntl.LOCK_EX if gpus is None else fcntl.LOCK_SH)]
    wanted += [(f"gpu{i}", fcntl.LOCK_EX) for i in gpus or ()]
    said = False
    for name, mode in wanted:
        f = stack.enter_context(open(folder / f"{name}.lock", "a+"))
        if not _try(f, mode):
            if not said:
                say(f"waiting for {_holders(folder, name, gpus is None) or 'another autotune process'} "
                    f"to finish measuring on {what}")
                said = True
            fcntl.flock(f.fileno(), mode)
        stack.callback(fcntl.flock, f.fileno(), fcntl.LOCK_UN)
        if mode == fcntl.LOCK_EX:
            _write(f, f"{holder} (pid {os.getpid()})")
            stack.callback(_write, f, "")
    if said:
        say(f"{what} is free: measuring")


def _try(f: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _write(f: IO[str], text: str) -> None:
    """Who holds a lock, in the lock file itself, for whoever waits for it."""
    try:
        f.seek(0)
        f.truncate()
        f.write(text)
        f.flush()
    except OSError:
        pass


def _holders(folder: Path, name: str, whole_machine: bool) -> str:
    """Who holds ``name``: its own holder, and for the machine the holders of every GPU too."""
    files = [folder / f"{name}.lock"]
    if whole_machine:
        files += sorted(folder.glob("gpu*.lock"))
    found: list[str] = []
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text and text not in found:
            found.append(text)
    return ", ".join(found)


def _default_holder() -> str:
    command = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if command in ("__main__.py", "cli"):
        command = "autotune"
    args = [a for a in sys.argv[1:2] if not a.startswith("-")]
    return " ".join([command, *args])


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
