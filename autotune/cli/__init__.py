"""The ``autotune`` command line: flags in, a spec out, the public API called, results printed."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import typer

from autotune.cli import study as _study  # noqa: F401 - registers optimize, worker
from autotune.cli import inspect as _inspect  # noqa: F401 - registers review, verify, report, dashboard, locate
from autotune.cli import run as _run  # noqa: F401 - registers measure, compare
from autotune.cli import export as _export  # noqa: F401 - registers export
from autotune.cli._app import app, console, err_console
from autotune.errors import UserError, one_line

__all__ = ["app", "console", "main"]


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (a scheduler, `timeout`, `kill`) unwinds like Ctrl-C, so the engine's
    # process group is torn down and the running trial is recorded as interrupted.
    # An exception raised while a __del__ runs (garbage collection of an HTTP
    # connection, say) is printed and swallowed by Python, and the signal would
    # be lost: deliver it again a moment later instead.
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            timer = threading.Timer(0.05, os.kill, args=(os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    from typer._click import exceptions as click_errors  # typer vendors click

    from autotune.tuning import quiet_optuna

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    quiet_optuna()
    # Every bad input is one line and exit status 2.
    try:
        rc = app(standalone_mode=False)
    except UserError as e:
        err_console.print(f"error: {one_line(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click_errors.NoArgsIsHelpError as e:
        print(e.format_message())
        sys.exit(2)
    except click_errors.ClickException as e:  # unknown option, bad value, missing argument
        err_console.print(f"error: {one_line(e.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code if e.exit_code else 2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
