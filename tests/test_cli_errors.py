"""Errors on the command line: bad input is one line, exit 2, nothing written; a failure once
work began (nothing measured, autotune's own) is one line, exit 1."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import autotune_cmd, processes_with_env
from tests.fakes import FAULT_SERVER, MARKER, fault_engine_spec


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


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp: ["optimize", "--spec", "."], "is a folder, not a YAML file"),
        (lambda tmp: ["optimize", "--study-dir", str(tmp / "file" / "study")], "lies under"),
        (lambda tmp: ["optimize", "--slo", ""], "--slo is blank"),
        (lambda tmp: ["measure", "--set", "max_num_seqs=abc", "--out", str(tmp / "m")], "expected a whole number"),
    ],
)
def test_no_traceback_through_the_console_script(tmp_path: Path, cli_env: dict, make, needle: str) -> None:
    (tmp_path / "file").write_text("")
    proc = subprocess.run(autotune_cmd(*make(tmp_path)), capture_output=True, text=True, env=cli_env,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing left behind


def test_autotunes_own_failure_is_one_line_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure of autotune itself, once work began: one line naming it, exit 1, the traceback on request."""
    import signal
    import sys

    from autotune import cli

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the disk controller said no")

    monkeypatch.setattr("autotune.cli.study.run_study", broken)
    monkeypatch.setattr(sys, "argv", ["autotune", "optimize", "--study-dir", str(tmp_path / "study")])
    handler = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, handler[0])
        signal.signal(signal.SIGINT, handler[1])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert [line for line in err.splitlines() if line.strip()] == [
        "error: RuntimeError: the disk controller said no (AUTOTUNE_TRACEBACK=1 shows where)"
    ]


def _fault_spec(tmp_path: Path, mode: str) -> tuple[Path, str]:
    marker = uuid.uuid4().hex
    (tmp_path / "mode").write_text(mode)
    data = fault_engine_spec(tmp_path / "unused", tmp_path / "mode", marker=marker)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec, marker


def test_measure_with_no_completed_request_fails(tmp_path: Path, cli_env: dict) -> None:
    """An engine that answers every request with HTTP 500: exit 1 with the first error, no measure.json."""
    spec, marker = _fault_spec(tmp_path, "5xx")
    out = tmp_path / "out"
    proc = subprocess.run(autotune_cmd("measure", "--spec", str(spec), "--out", str(out)),
                          capture_output=True, text=True, env=cli_env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: no request completed (6 failed): HTTP 500"), proc.stderr
    assert "injected internal error" in lines[0]
    assert not (out / "measure.json").exists()
    assert "load generator" not in proc.stdout + proc.stderr  # no word about a generator that kept up fine
    assert processes_with_env(MARKER, marker) == []


def test_measure_of_an_endpoint_that_fails_every_request(tmp_path: Path, cli_env: dict) -> None:
    """An endpoint that is up but completes nothing is not a measurement either."""
    from autotune.engines.base import LaunchPlan
    from autotune.engines.launcher import EngineServer, free_port

    port = free_port()
    argv = [sys.executable, str(FAULT_SERVER), "--port", str(port), "--mode", "5xx"]
    server = EngineServer(LaunchPlan(argv, {}, "127.0.0.1", port, "/health", None), tmp_path / "server.log")
    server.start()
    try:
        server.wait_healthy()
        out = tmp_path / "out"
        proc = subprocess.run(
            autotune_cmd("measure", "--endpoint", f"http://127.0.0.1:{port}/v1", "--out", str(out),
                         "--num-requests", "4", "--prompt-tokens", "8", "--output-tokens", "8"),
            capture_output=True, text=True, env=cli_env, timeout=300,
        )
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no request completed (4 failed): HTTP 500" in lines[0], proc.stderr
    assert not (out / "measure.json").exists()
