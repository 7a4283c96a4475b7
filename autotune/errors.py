"""Errors that reach the user as one line and exit status 2.

Anything raised as ``UserError`` is a problem with what the user gave us (a spec,
an expression, a path); the CLI prints its message alone, with no traceback.
"""


class UserError(Exception):
    """Bad input: printed as one line, exit status 2, nothing written."""


class EngineStartError(RuntimeError):
    """The engine did not become healthy; ``reason`` carries its own last words."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail
