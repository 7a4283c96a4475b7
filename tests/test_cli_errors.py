"""Bad input on the command line: one line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import autotune_cmd


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--slo", "ttft<300xs"], "unknown unit 'xs'"),
        (["--slo", "tft<300ms"], "unknown metric 'tft'"),
        (["--objectives", "up:goodput"], "up"),
        (["--engine", "nonesuch"], "unknown engine 'nonesuch'"),
        (["--model", "/no/such/model/dir"], "model not found"),
        (["--price-per-gpu-hour", "-2"], "price_per_gpu_hour"),
        (["--sampler", "annealing"], "sampler"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, cli_env: dict, args: list[str], needle: str) -> None:
    study_dir = tmp_path / "study"
    proc = subprocess.run(
        autotune_cmd("optimize", "--study-dir", str(study_dir), *args),
        capture_output=True, text=True, env=cli_env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert not (study_dir / "study.db").exists()


def test_review_of_missing_study(tmp_path: Path, cli_env: dict) -> None:
    proc = subprocess.run(autotune_cmd("review", str(tmp_path)), capture_output=True, text=True, env=cli_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no study in")
