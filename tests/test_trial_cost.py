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
from typing import Any

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
    # A second trial's folder appears once the first is done and told. Watching the folders, not the storage,
    # takes no database lock (a read of SQLite while the study writes may fail, and be retried past the moment).
    # The deadline only stops a hung run: the study may first wait for the machine-wide engine lock that
    # another test's study holds.
    deadline = time.monotonic() + 600
    while len(list((study_dir / "trials").glob("0*"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
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


def _trial_cost() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import trial_cost

    return trial_cost


def test_phases_are_read_from_kept_engine_logs_where_the_code_recorded_none(tmp_path: Path) -> None:
    """The code before a change recorded only a start's total: its kept vLLM logs (here a recorded H200 start,
    cold and warm, the warm one gzipped) give the phases and the compile cache's verdict."""
    import gzip

    logs = REPO / "tests" / "data" / "engine_logs"
    (tmp_path / "trials" / "0000").mkdir(parents=True)
    (tmp_path / "trials" / "0001").mkdir(parents=True)
    (tmp_path / "trials" / "0000" / "engine.log").write_text((logs / "vllm_h200_defaults_cold.log").read_text())
    (tmp_path / "trials" / "0001" / "engine.log.gz").write_bytes(
        gzip.compress((logs / "vllm_h200_defaults_warm.log").read_bytes()))
    recorded = {"phases_s": {"compile": 1.0}, "compile_cache_hit": True}
    got = {"trials": [{"number": 0, "startup_s": 110.0}, {"number": 1, "startup_s": 60.0},
                      {"number": 2, "startup_s": 90.0, **recorded}, {"number": 3, "startup_s": 80.0}]}
    _trial_cost().read_phases(got, tmp_path)
    cold, warm, kept, nolog = got["trials"]
    assert cold["compile_cache_hit"] is False and warm["compile_cache_hit"] is True
    assert cold["phases_s"]["compile"] > 2 * warm["phases_s"]["compile"] > 0
    assert cold["phases_from"] == warm["phases_from"] == "engine log"
    assert kept == {"number": 2, "startup_s": 90.0, **recorded}  # what the code recorded stands
    assert nolog == {"number": 3, "startup_s": 80.0}


def test_report_draws_every_trial_the_medians_and_the_checks(tmp_path: Path, capsys: Any) -> None:
    def trial(n: int, start: float, measure: float, **rest: Any) -> dict[str, Any]:
        return {"number": n, "startup_s": start, "measure_s": measure, "config": {"max_num_seqs": 64 * (n + 1)},
                "phases_s": {"compile": 30.0, "warmup": 15.0}, "compile_cache_hit": False, "levels": 1, **rest}

    data = {
        "environment": {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580", "cuda": "13.0", "engine": "vllm",
                        "engine_version": "0.25.1"},
        "before": {"trials": [trial(0, 100.0, 100.0, goodput=20.0), trial(1, 110.0, 90.0, goodput=21.0)],
                   "median_trial_s": 200.0, "gpu_seconds": 400.0},
        "after": {"trials": [trial(0, 80.0, 20.0, goodput=None, goodput_upper_bound=21.0),
                             trial(1, 90.0, 60.0, goodput=22.5)],
                  "baseline": {"startup_s": 95.0, "measure_s": 50.0, "goodput": 19.0, "levels": 4},
                  "median_trial_s": 125.0, "gpu_seconds": 395.0},
        "early_stop_checks": [{"trial": 0, "bound": 21.0, "goodput": 19.5, "flipped": False,
                               "flipped_with_confidence": False, "levels": [[21.0, "fails"], [19.5, "holds"]]}],
    }
    assert _trial_cost().main(["--report", "/nowhere.json"]) == 2
    (tmp_path / "trial-cost.json").write_text(json.dumps(data))
    assert _trial_cost().main(["--report", str(tmp_path / "trial-cost.json")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| before") or line.startswith("| after")]
    assert len(rows) == 5 and rows[2].startswith("| after | defaults | engine defaults | 95 |")
    assert "| after | 0 | mns 64 | 80 | 30 (miss) | 15 | 20 | 1 | < 21 |" in rows
    assert "after / before: **0.62**" in out and "median start 85 s, median measurement 40 s" in out
    assert "| 0 | 21 | 19.5 | 21 ✗ 19.5 ✓ | stays below |" in out
