"""The typer app and the consoles every command prints to."""

from __future__ import annotations

import time
from typing import Any, Callable

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Tune LLM inference engines with Optuna, measured on the real engine.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def status_lines(every_s: float = 15.0) -> Callable[[str], None]:
    """A status printer for plain output: a message that only updates a counter
    ("starting engine (12s)") is printed again at most every ``every_s`` seconds,
    so a log of a long engine start is a few lines, not one per tick."""
    last: dict[str, Any] = {"head": None, "at": 0.0}

    def say(message: str) -> None:
        head = message.split(" (")[0]
        now = time.monotonic()
        if head == last["head"] and now - last["at"] < every_s:
            return
        last["head"], last["at"] = head, now
        console.print(f"  {message}", highlight=False)

    return say
