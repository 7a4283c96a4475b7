"""Where locally built models live, and how a build lands there whole, once.

Tests and studies running in parallel share one build instead of racing to
make it: a build happens in a private folder that is renamed into place only
when complete, under a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from autotune.engines.base import cache_root

__all__ = ["REQUIRED_FILES", "building", "cache_root", "is_complete", "model_cli", "once"]

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def is_complete(dest: Path) -> bool:
    """Builds are renamed into place whole, so the files' presence is proof enough."""
    return all((dest / name).is_file() for name in REQUIRED_FILES)


@contextlib.contextmanager
def building(dest: Path) -> Iterator[Path]:
    """A private folder to build ``dest`` in, published as ``dest`` when the block ends without error."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a shared model cache should be readable
    try:
        yield tmp
        for path in tmp.iterdir():  # some writers create files 0600
            path.chmod(0o644)
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, dest: Path) -> None:
    """rename() is atomic but refuses a non-empty target; a leftover incomplete
    folder is moved aside first, and a finished one from a racing builder wins."""
    if dest.exists() and not is_complete(dest):
        stale = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stale-", dir=dest.parent))
        with contextlib.suppress(FileNotFoundError):
            os.rename(dest, stale / dest.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, dest)
    except OSError:
        if not is_complete(dest):
            raise


def once(dest: Path, build: Callable[[Path], Path]) -> Path:
    """``build(dest)`` unless a complete build is there, one builder at a time (file lock)."""
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            return build(dest)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def model_cli(module: str, ensure: Callable[[], Path], build_to: Callable[[Path], Path] | None,
              argv: list[str] | None = None) -> int:
    """``python -m <module> [DEST]``: lets CI or a user pre-build a model once, outside any study."""
    args = sys.argv[1:] if argv is None else argv
    most = 1 if build_to is not None else 0
    if len(args) > most or (args and args[0] in ("-h", "--help")):
        print(f"usage: python -m {module}" + (" [DEST]" if build_to is not None else ""), file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    print(build_to(Path(args[0])) if args and build_to is not None else ensure())
    return 0
