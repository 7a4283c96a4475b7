"""The command line as people who live in ``vllm bench serve`` expect it: -h, --version,
defaults in the help, vllm bench's flag names, one meaning per flag, and a dry run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from autotune._version import __version__
from autotune.cli._options import with_flags
from autotune.spec import flag_overrides, load_spec
from tests.conftest import autotune_cmd

COMMANDS = ["optimize", "worker", "review", "verify", "report", "dashboard", "locate", "measure", "compare", "export"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(autotune_cmd(*args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "100"})


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    out = _run(flag)
    assert out.returncode == 0 and out.stdout.strip() == f"autotune {__version__}"


def test_every_command_takes_h_and_prints_plain_help() -> None:
    for command in COMMANDS:
        out = _run(command, "-h")
        assert out.returncode == 0, (command, out.stderr)
        assert out.stdout.startswith("Usage:") and "-h, --help" in out.stdout, command
        assert "<bool>" not in out.stdout and "╭" not in out.stdout, command  # a switch reads as a switch


def test_help_shows_the_workload_defaults_and_vllm_bench_names() -> None:
    text = " ".join(_run("optimize", "-h").stdout.split())
    for flag, default in (("--concurrency, --max-concurrency", "default 16"),
                          ("--prompt-tokens, --input-len", "default 128"),
                          ("--output-tokens, --output-len", "default 64"),
                          ("--num-requests, --num-prompts", "default 64")):
        assert flag in text and default in text, flag
    assert "--rate, --request-rate" in text


def test_vllm_bench_names_set_the_same_spec_fields() -> None:
    """Both spellings reach ``flag_overrides`` as the same flags, through the real shared options."""
    app = typer.Typer()
    seen: list[dict[str, Any]] = []

    @app.command()
    @with_flags
    def probe(*, flags: dict[str, Any]) -> None:
        seen.append(flag_overrides(**flags))

    runner = CliRunner()
    ours = runner.invoke(app, ["--concurrency", "4", "--rate", "2.5", "--prompt-tokens", "100",
                               "--output-tokens", "10", "--num-requests", "7"])
    theirs = runner.invoke(app, ["--max-concurrency", "4", "--request-rate", "2.5", "--input-len", "100",
                                 "--output-len", "10", "--num-prompts", "7"])
    assert ours.exit_code == 0 and theirs.exit_code == 0, (ours.output, theirs.output)
    assert seen[0] == seen[1] == {
        "workload.concurrency": 4, "workload.rate": 2.5, "workload.prompt_tokens": 100,
        "workload.output_tokens": 10, "workload.num_requests": 7, "workload.arrival": "poisson",
    }
    spec = load_spec(None, seen[1])
    assert (spec.workload.concurrency, spec.workload.num_requests) == (4, 7)


def test_verify_counts_fresh_starts_with_its_own_flag(tmp_path: Path) -> None:
    out = _run("verify", str(tmp_path), "--repeats", "3")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: verify counts fresh server starts: use --starts 3 (--repeats measures one start)"
    assert "--starts" in _run("verify", "-h").stdout


def test_dry_run_shows_space_verdicts_and_commands_without_starting_anything(tmp_path: Path) -> None:
    from autotune.cli._dry_run import preview

    # A folder of its own: the default (autotune-runs/tiny-vllm) is where the README's quick start writes.
    spec = load_spec(None, {"model": "tiny", "slo": "p99(ttft)<500ms", "budget.trials": 8,
                            "study_dir": str(tmp_path / "run"),
                            "enqueue": [{"max_num_seqs": 4, "block_size": 64}]})
    before = _children()
    data = preview(spec, samples=4)
    assert _children() == before  # nothing was started
    assert not Path(str(spec.study_dir)).exists()  # nothing was written
    assert {"max_num_seqs", "block_size", "kv_cache_dtype"} <= set(data["space"])
    assert data["space"]["max_num_seqs"]["via"] == "--max-num-seqs"
    defaults, first, *drawn = data["configurations"]
    assert defaults["source"].startswith("the engine's defaults") and defaults["config"] == {}
    assert "--max-num-seqs" not in defaults["command"]  # launched with no knob set
    assert first["source"] == "enqueued by the spec" and first["config"] == {"max_num_seqs": 4, "block_size": 64}
    assert len(drawn) == 4 and all(c["refused"] == [] for c in data["configurations"])
    for c in data["configurations"]:  # the exact launch, max-model-len included
        assert "--max-model-len 512" in c["command"]
        for knob, value in c["config"].items():
            arg = data["space"][knob]["via"]
            if arg.startswith("--") and not isinstance(value, bool):
                assert f"{arg} {value}" in c["command"]


def test_dry_run_shows_why_a_configuration_is_refused() -> None:
    from autotune.cli._dry_run import preview

    spec = load_spec(None, {"model": "tiny", "max_model_len": 1_000_000, "budget.trials": 2})
    data = preview(spec, samples=2)
    assert all(any("max-model-len" in r or "max_model_len" in r for r in c["refused"])
               for c in data["configurations"]), data["configurations"][0]["refused"]


def test_optimize_dry_run_flag() -> None:
    """The flag on ``optimize`` itself (cli/study.py calls ``_dry_run.dry_run``)."""
    if "--dry-run" not in _run("optimize", "-h").stdout:
        pytest.skip("optimize has no --dry-run flag yet")
    out = _run("optimize", "--model", "tiny", "--trials", "2", "--dry-run", "--study-dir", "/nonexistent/dry")
    assert out.returncode == 0, out.stderr
    assert re.search(r"vllm.* --max-model-len 512", out.stdout)
    assert not Path("/nonexistent/dry").exists()


def _children() -> list[str]:
    """This process's children, read from /proc (running ``ps`` would be one)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(os.getpid()):
            out.append(stat.parent.name)
    return sorted(out)


def test_python_dash_m_autotune_is_the_same_command() -> None:
    out = subprocess.run([sys.executable, "-m", "autotune", "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"autotune {__version__}"
