"""Folders autotune writes into, judged before anything is written.

A study folder that is a file, lies under a file, or sits on a read-only disk
would otherwise fail deep inside SQLite or Optuna, with a long traceback and
sometimes half a study behind it. Judged here first, it is one line and exit
status 2, and nothing is created.
"""

from __future__ import annotations

import os
from pathlib import Path

from autotune.errors import UserError

__all__ = ["check_folder", "check_writable_file", "make_folder"]


def check_folder(path: Path, what: str) -> None:
    """Refuses a folder that could not be made or written, without creating anything.

    ``os.access`` answers EROFS for a read-only file system even to root, for
    whom permission bits mean nothing.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and not existing.is_symlink():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise UserError(f"{what} {path}: {existing} is a broken link")
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise UserError(f"{what} {path} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == path else f"would be made in {existing}, which is"
        raise UserError(f"{what} {path} {where} not writable")


def check_writable_file(path: Path, what: str) -> None:
    """Refuses an existing file autotune must write to but cannot (a read-only study.db)."""
    path = Path(path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} is not writable")


def make_folder(path: Path, what: str) -> Path:
    """The folder, made if it is missing, or one line saying why it cannot be."""
    check_folder(path, what)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make {what} {path}: {e.strerror or e}") from None
    return Path(path)
