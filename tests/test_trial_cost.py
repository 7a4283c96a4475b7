"""benchmarks/trial_cost.py when the run's time runs out: the trials finished before it are recorded.

A machine lent for a fixed time ends a run by signalling its whole process
group, so the interrupt reaches both the study and the script that waits on
it. The study winds down and keeps its finished trials; the script must wait
for that and record them, not die of the same interrupt with nothing written.
The engine is the fault server, started by autotune's own launcher.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import yaml

from autotune.errors import UserError
from autotune.tuning import load_study
from tests.conftest import REPO, processes_with_env
from tests.fakes import MARKER, fault_engine_spec

SCRIPT = REPO / "benchmarks" / "trial_cost.py"


def _completed(study_dir: Path) -> list[int]:
    try:
        study, _ = load_study(study_dir)
    except UserError:  # not created yet
        return []
    return [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]


def test_a_run_interrupted_mid_study_records_the_trials_it_finished(tmp_path: Path, cli_env: dict,
                                                                     tiny_model: Path) -> None:
    marker = uuid.uuid4().hex
    mode_file = tmp_path / "mode"
    mode_file.write_text("slow")
    study_dir = tmp_path / "study"
    spec = fault_engine_spec(study_dir, mode_file, marker=marker, trials=4, token_delay=0.2)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "trial-cost.json"
    env = {**cli_env, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(SCRIPT), "--spec", str(spec_path), "--trials", "4", "--label", "after",
           "--study-dir", str(study_dir), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while not _completed(study_dir):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as `timeout -s INT` ends a run: the whole group
    stdout, stderr = proc.communicate(timeout=180)
    assert "KeyboardInterrupt" not in stderr and "Traceback" not in stderr, stderr
    assert proc.returncode == 130, stdout + stderr  # the study's own status for an interrupt
    finished = _completed(study_dir)
    assert finished and len(finished) < 4
    recorded = json.loads(out.read_text())["after"]
    done = [t for t in recorded["trials"] if t["state"] == "COMPLETE"]
    assert [t["number"] for t in done] == finished
    assert all(t["startup_s"] > 0 and t["measure_s"] > 0 for t in done)
    assert recorded["gpu_seconds"] >= sum(t["startup_s"] + t["measure_s"] for t in done)
    assert recorded["command"] and "--trials 4" in recorded["command"]
    assert "after: " in stdout and "median start + measurement" in stdout
    assert processes_with_env(MARKER, marker) == []

    # the same study recorded again as it stands: the same trials, and the command that ran it is kept
    again = subprocess.run([*cmd, "--record-only"], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    rerecorded = json.loads(out.read_text())["after"]
    assert rerecorded["trials"] == recorded["trials"]
    assert rerecorded["command"] == recorded["command"]
    assert _completed(study_dir) == finished  # nothing was run
