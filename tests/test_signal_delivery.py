"""A signal that lands where Python cannot raise is not lost.

The handler runs wherever the main thread happens to be. Inside a ``__del__``, a
weakref callback or a generator finalized by garbage collection, Python swallows
the KeyboardInterrupt it raises; a study sent SIGINT there once ran all its trials
and exited 0. Each case sends the signal from inside such a context, in a child
process, and the interrupt must still reach ordinary code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_PRELUDE = """
import gc, os, signal, sys, time, weakref
from autotune import cli

cli._install_signal_handlers()
SIG = {sig}

def send():
    # The handler runs at the next bytecode boundary: still inside the finalizer.
    os.kill(os.getpid(), SIG)
    for _ in range(100_000):
        pass
"""

_TRIGGERS = {
    "weakref_finalize": """
class Thing:
    pass

thing = Thing()
weakref.finalize(thing, send)
del thing
""",
    "generator_finally": """
def gen():
    try:
        yield 1
    finally:
        send()

g = gen()
next(g)
cycle = [g]
cycle.append(cycle)  # only the collector frees it, as with a pool's connections
del g, cycle
gc.collect()
""",
    "__del__": """
class Thing:
    def __del__(self):
        send()

thing = Thing()
del thing
""",
}

_WAIT = """
try:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.01)
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(0)
"""


def _run(trigger: str, sig: int) -> subprocess.CompletedProcess[str]:
    code = _PRELUDE.format(sig=int(sig)) + "\ntry:\n" + _indent(_TRIGGERS[trigger]) + (
        "\nexcept KeyboardInterrupt:\n    sys.exit(130)\n"  # raised before the trigger finished: delivered too
    ) + _WAIT
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=60)


def _indent(block: str) -> str:
    return "\n".join("    " + line if line.strip() else line for line in block.splitlines())


@pytest.mark.parametrize("trigger", sorted(_TRIGGERS))
def test_sigint_inside_a_finalizer_still_interrupts(trigger: str) -> None:
    done = _run(trigger, signal.SIGINT)
    assert done.returncode == 130, done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr


def test_sigterm_inside_a_weakref_callback_still_interrupts() -> None:
    done = _run("weakref_finalize", signal.SIGTERM)
    assert done.returncode == 130, done.stdout + done.stderr


_OTHER_ERRORS = """
import sys
from autotune import cli

cli._install_signal_handlers()

class Thing:
    def __init__(self, name):
        self.name = name

    def __del__(self):
        raise ValueError(self.name)

Thing("before")  # a real fault, until an interrupt: reported as Python would
cli._quiet_shutdown()
Thing("after")  # once interrupted, the same is noise
"""


def test_other_unraisable_errors_are_reported_until_quiet() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _OTHER_ERRORS], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ValueError: before" in done.stderr and "after" not in done.stderr, done.stderr
