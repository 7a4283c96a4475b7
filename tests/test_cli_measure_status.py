"""The plain-output status printer of `autotune measure`."""

from __future__ import annotations

import pytest

from autotune.cli._app import status_lines


def test_counter_updates_collapse_and_new_messages_print(capsys: pytest.CaptureFixture[str]) -> None:
    say = status_lines(every_s=1e9)
    for i in range(50):
        say(f"starting engine ({i}s)")
    say("repeat 1/5")
    say("goodput level 1/3: 20 req/s")
    say("starting engine (51s)")
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines == ["starting engine (0s)", "repeat 1/5", "goodput level 1/3: 20 req/s", "starting engine (51s)"]
