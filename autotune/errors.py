"""Errors that reach the user as one line, and the helpers that make them one line.

Anything raised as ``UserError`` is a problem with what the user gave us (a spec,
an expression, a path); the CLI prints its message alone, with no traceback.
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad input: printed as one line, exit status 2, nothing written."""


class RunFailed(Exception):
    """Work began and could not go on (nothing was measured, the machine is broken):
    printed as one line, exit status 1; what was measured before is kept."""


class EngineStartError(RuntimeError):
    """The engine did not become healthy; ``reason`` carries its own last words."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


def one_line(value: BaseException | str) -> str:
    """A message on one line: pydantic's first complaint with the field it names, else the text."""
    from pydantic import ValidationError

    if isinstance(value, ValidationError):
        return validation_line(value)
    return " ".join(str(value).split())


def validation_line(e: Any) -> str:
    """Pydantic's first complaint, as one line that names the field."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{loc}: {msg}" if loc else msg


def root_cause_line(e: BaseException) -> str:
    """The root cause's first line: a driver's words, not its wrappers' (Optuna, SQLAlchemy)."""
    while e.__cause__ is not None or getattr(e, "orig", None) is not None:
        e = getattr(e, "orig", None) or e.__cause__  # type: ignore[assignment]
    text = " ".join(str(e).strip().split("\n")[0].split())
    return text[:300] or type(e).__name__
