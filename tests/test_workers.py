"""Many workers, one study in PostgreSQL: the budget is shared, no trial runs twice,
none is lost, and the trial of a worker killed with -9 is retried by another.

Every worker is a real ``autotune worker`` process against a real PostgreSQL
server; every trial launches its engine through autotune's launcher and
measures it over HTTP. The engine is the tests' stand-in server in its
normal mode (tests/fakes): three real vLLM servers do not fit on two cores,
and what is under test here, the sharing of one study, does not depend on
the engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from autotune.tuning import counted
from tests.conftest import autotune_cmd, processes_with_env
from tests.fakes import MARKER, fault_engine_spec

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
TRIALS = 6


def _spec(tmp_path: Path, marker: str) -> Path:
    mode_file = tmp_path / "mode"
    mode_file.write_text("slow")
    data = fault_engine_spec(tmp_path / "unused", mode_file, marker=marker, trials=TRIALS, token_delay=0.15)
    data["heartbeat"] = {"interval_s": 1, "grace_s": 5}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start(tmp_path: Path, pg_url: str, spec: Path, n: int, env: dict, name: str) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen(
            autotune_cmd("worker", "--storage", pg_url, "--study", name, "--spec", str(spec),
                         "--study-dir", str(tmp_path / f"worker{i}")),
            stdout=open(tmp_path / f"worker{i}.out", "w"), stderr=subprocess.STDOUT, env=env,
        ))
    return procs


def _trial_dirs(tmp_path: Path) -> Counter:
    """How many workers made a folder for each trial number (two would mean it ran twice)."""
    return Counter(int(p.name) for p in tmp_path.glob("worker*/trials/*"))


def _check_study(study: optuna.Study, tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    done = [t for t in study.trials if counted(t)]
    assert len(done) == TRIALS and all(t.state == COMPLETE for t in done)
    assert all(t.user_attrs["figures"]["completed"] == 6 for t in done)  # nothing measured was lost
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    dirs = _trial_dirs(tmp_path)
    assert max(dirs.values()) == 1, dirs  # no trial run by two workers
    assert {t.number for t in done} <= set(dirs)
    return done


def test_three_workers_share_the_budget(tmp_path: Path, pg_url: str, cli_env: dict) -> None:
    marker = uuid.uuid4().hex
    procs = _start(tmp_path, pg_url, _spec(tmp_path, marker), 3, cli_env, "shared")
    for i, p in enumerate(procs):
        assert p.wait(timeout=600) == 0, (tmp_path / f"worker{i}.out").read_text()
    study = optuna.load_study(study_name="shared", storage=pg_url)
    done = _check_study(study, tmp_path)
    assert len({t.user_attrs["worker"] for t in done}) >= 2  # the work was shared
    assert processes_with_env(MARKER, marker) == []


def test_worker_killed_mid_trial_is_retried(tmp_path: Path, pg_url: str, cli_env: dict) -> None:
    marker = uuid.uuid4().hex
    procs = _start(tmp_path, pg_url, _spec(tmp_path, marker), 3, cli_env, "killed")
    victim = procs[0]
    deadline = time.monotonic() + 180
    victim_trial = None
    while victim_trial is None:  # a trial of worker 0 that is measuring
        assert time.monotonic() < deadline and victim.poll() is None
        for log in (tmp_path / "worker0" / "trials").glob("*/engine.log"):
            if "request 2 mode slow" in log.read_text():
                victim_trial = int(log.parent.name)
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for i, p in enumerate(procs[1:], start=1):
        assert p.wait(timeout=600) == 0, (tmp_path / f"worker{i}.out").read_text()
    study = optuna.load_study(study_name="killed", storage=pg_url)
    lost = study.trials[victim_trial]
    assert lost.state == FAIL and lost.user_attrs["status"] == "lost"
    assert "sent no heartbeat" in lost.user_attrs["reason"]
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim_trial]
    assert len(retries) == 1 and retries[0].state == COMPLETE, _table(study)
    assert retries[0].params == lost.params
    assert retries[0].user_attrs["worker"] != lost.user_attrs["worker"]
    done = [t for t in study.trials if counted(t)]
    assert len(done) == TRIALS and all(t.state == COMPLETE for t in done)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    dirs = _trial_dirs(tmp_path)
    assert max(dirs.values()) == 1, dirs
    # The killed worker's engine went with it (parent-death signal), not left holding the port.
    deadline = time.monotonic() + 15
    while processes_with_env(MARKER, marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with_env(MARKER, marker) == []


def _table(study: optuna.Study) -> str:
    return "\n".join(
        f"{t.number} {t.state.name} {t.user_attrs.get('status')} retry_of={t.user_attrs.get('retry_of')} "
        f"sys={t.system_attrs.get('failed_trial')} {t.user_attrs.get('worker')}"
        for t in study.trials
    )


def test_worker_needs_only_storage_and_study(tmp_path: Path, pg_url: str, cli_env: dict) -> None:
    """The spec lives in the study: a worker started without --spec runs it, its password never stored."""
    marker = uuid.uuid4().hex
    spec = _spec(tmp_path, marker)
    data = yaml.safe_load(spec.read_text())
    data["budget"]["trials"] = 1
    spec.write_text(yaml.safe_dump(data))
    first = subprocess.run(
        autotune_cmd("worker", "--storage", pg_url, "--study", "bare", "--spec", str(spec),
                     "--study-dir", str(tmp_path / "worker0")),
        capture_output=True, text=True, env=cli_env, timeout=300,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    study = optuna.load_study(study_name="bare", storage=pg_url)
    study.set_user_attr("autotune_spec", {**study.user_attrs["autotune_spec"], "budget": {"trials": 2}})
    second = subprocess.run(
        autotune_cmd("worker", "--storage", pg_url, "--study", "bare", "--study-dir", str(tmp_path / "worker1")),
        capture_output=True, text=True, env=cli_env, timeout=300,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    study = optuna.load_study(study_name="bare", storage=pg_url)
    assert [t.state for t in study.trials if t.state.is_finished()] == [COMPLETE, COMPLETE]
    assert sorted(p.name for p in (tmp_path / "worker1" / "trials").iterdir()) == ["0001"]
    assert processes_with_env(MARKER, marker) == []


def test_gpus_bind_the_engine(tmp_path: Path) -> None:
    """--gpus reaches the engine as CUDA_VISIBLE_DEVICES and sizes the hardware to it."""
    from autotune.spec import load_spec
    from autotune.trial import setup_from_spec
    from autotune.trial import plan
    from autotune.tuning.worker import _bind_gpus, parse_gpus

    base = load_spec(None, {"hardware": {"device": "cuda", "gpu_count": 8, "gpu_memory_gib": 80}})
    spec = _bind_gpus(base, parse_gpus("2,3") or [])
    assert spec.hardware.gpu_count == 2 and spec.hardware.gpu_ids == [2, 3]
    launch = plan(setup_from_spec(spec), {}, 12345)
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "2,3"
