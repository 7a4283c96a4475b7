"""The typer app and the consoles every command prints to.

Help is plain text, as argparse tools such as ``vllm bench serve`` print it:
``-h`` and ``--help`` both work, a switch reads as a switch (no ``<bool>``),
and the output does not depend on a terminal's width, so it can be grepped.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import typer
from rich.console import Console

from autotune._version import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Tune LLM inference engines with Optuna, measured on the real engine.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
console = Console()
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        print(f"autotune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                 help="print autotune's version and exit"),
) -> None:
    """Tune LLM inference engines with Optuna, measured on the real engine.

    Start with `autotune optimize --model tiny --trials 8`, then `autotune review
    autotune-runs/tiny-vllm` and open report.html beside it.
    """


def interrupted(message: str) -> typer.Exit:
    """The one line an interrupted command leaves, and its exit status (130, as a shell's)."""
    err_console.print(message, highlight=False)
    _said.append(message)
    return typer.Exit(130)


def interruption_said() -> bool:
    return bool(_said)


_said: list[str] = []


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
