"""The ``autotune`` command line: flags in, a spec out, the public API called, results printed."""

from __future__ import annotations

import logging
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
from autotune.cli._app import app, console, err_console, interruption_said
from autotune.errors import RunFailed, UserError, one_line, root_cause_line

__all__ = ["app", "console", "main"]


_quiet = False  # set by _quiet_shutdown: unraisable exceptions are noise from then on
_signalled: int | None = None  # the signal _terminate last turned into KeyboardInterrupt
_previous_unraisablehook = sys.unraisablehook


def _quiet_shutdown() -> None:
    # An interrupted load run leaves asyncio tasks whose errors nobody will read
    # (the engine went away under them); their "Task exception was never
    # retrieved" and "Exception ignored in ..." would bury the one line that says what happened.
    global _quiet
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    _quiet = True


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (a scheduler, `timeout`, `kill`) unwinds like Ctrl-C, so the engine's
    # process group is torn down and the running trial is recorded as interrupted.
    global _signalled
    _signalled = signum
    _quiet_shutdown()
    raise KeyboardInterrupt(f"signal {signum}")


def _unraisable(unraisable: Any) -> None:
    """Keep an interrupt that landed where Python cannot raise.

    The signal handler runs wherever the main thread happens to be; inside a
    ``__del__``, a weakref callback (``weakref.finalize``, SQLAlchemy's pool) or a
    generator closed by garbage collection, Python swallows its KeyboardInterrupt
    and the study would run on. The same signal is sent again a moment later, once
    that code has returned, so it is raised in ordinary code.
    """
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _signalled is not None:
        # Not sent from here: the handler would run inside this hook, swallowed again.
        # Aimed at the main thread so a blocking call there is woken.
        timer = threading.Timer(0.05, signal.pthread_kill, args=(threading.main_thread().ident, _signalled))
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError:  # interpreter shutting down: exiting anyway
            pass
        return
    if not _quiet:
        _previous_unraisablehook(unraisable)


def _install_signal_handlers() -> None:
    global _previous_unraisablehook
    if sys.unraisablehook is not _unraisable:  # main() run twice in one process: wrap only once
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _unraisable
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)


def _fail(message: str, status: int) -> None:
    _quiet_shutdown()
    err_console.print(f"error: {one_line(message)}", highlight=False, soft_wrap=True)
    sys.exit(status)


def main() -> None:
    from typer._click import exceptions as click_errors  # typer vendors click

    from autotune.tuning import quiet_optuna

    _install_signal_handlers()
    quiet_optuna()
    # Every bad input is one line and exit status 2; a failure once work began, one line and 1.
    try:
        rc = app(standalone_mode=False)
    except UserError as e:
        _fail(str(e), 2)
    except RunFailed as e:
        _fail(str(e), 1)
    except click_errors.NoArgsIsHelpError as e:
        print(e.format_message())
        sys.exit(2)
    except click_errors.ClickException as e:  # unknown option, bad value, missing argument
        _fail(e.format_message(), e.exit_code if e.exit_code else 2)
    except (KeyboardInterrupt, typer.Abort):
        _quiet_shutdown()
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit:
        raise
    except OSError as e:  # a disk that filled or turned read-only under a running study
        where = f": {e.filename}" if e.filename else ""
        _fail(f"{e.strerror or e}{where}", 1)
    except Exception as e:  # autotune's own failure: one line; the traceback on request
        if os.environ.get("AUTOTUNE_TRACEBACK"):
            raise
        _fail(f"{type(e).__name__}: {root_cause_line(e)} (AUTOTUNE_TRACEBACK=1 shows where)", 1)
    if rc == 130 and not interruption_said():  # typer turned an interrupt no command caught into 130: say so
        err_console.print("interrupted")
    sys.exit(rc if isinstance(rc, int) else 0)
