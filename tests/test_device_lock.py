"""One machine, one measurement at a time; a new SQLite study created by two processes at once.

The lock is taken by real processes (a holder script, ``autotune optimize``),
in a lock folder of the test's own (``AUTOTUNE_LOCKS``), so a test on this
machine never waits for another. Engines are the fault server (tests/fakes),
started by autotune's launcher: what is under test is who may start one when.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from autotune.engines.device_lock import holding
from tests.conftest import REPO, autotune_cmd, processes_with_env
from tests.fakes import MARKER, fault_engine_spec

HOLD = """
import sys
from autotune.engines.device_lock import holding
gpus = tuple(int(x) for x in sys.argv[1].split(",")) if sys.argv[1] else None
with holding(gpus, holder="holder script"):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture()
def locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "locks"
    monkeypatch.setenv("AUTOTUNE_LOCKS", str(folder))
    return folder


def hold(gpus: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, gpus], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0


def free(locks: Path, name: str, mode: int) -> bool:
    with open(locks / f"{name}.lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False


def test_gpu_sets_exclude_each_other_and_the_whole_machine(locks: Path) -> None:
    holder = hold("0,2")
    try:
        assert not free(locks, "gpu0", fcntl.LOCK_EX) and not free(locks, "gpu2", fcntl.LOCK_EX)
        assert free(locks, "gpu1", fcntl.LOCK_EX)  # a disjoint set measures alongside
        assert free(locks, "machine", fcntl.LOCK_SH)
        assert not free(locks, "machine", fcntl.LOCK_EX)  # the whole machine waits
        assert (locks / "gpu0.lock").read_text() == f"holder script (pid {holder.pid})"
    finally:
        release(holder)
    assert (locks / "gpu0.lock").read_text() == ""  # who held it is cleared with the lock
    whole = hold("")
    try:
        assert not free(locks, "machine", fcntl.LOCK_SH)  # no GPU set either
    finally:
        release(whole)


def test_the_second_waits_and_says_for_whom(locks: Path) -> None:
    holder = hold("")
    said: list[str] = []
    got = threading.Event()

    def second() -> None:
        with holding(None, holder="second", say=said.append):
            got.set()

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not said:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert said == [f"waiting for holder script (pid {holder.pid}) to finish measuring on this machine"]
    assert not got.is_set()
    release(holder)
    thread.join(timeout=60)
    assert got.is_set() and said[-1] == "this machine is free: measuring"


def test_a_process_does_not_wait_for_itself(locks: Path) -> None:
    said: list[str] = []
    with holding(None, say=said.append):
        with holding(None, say=said.append):  # a quality baseline inside a trial
            with holding((0,), say=said.append):
                pass
    assert said == []


RACE = """
import sys, time
from pathlib import Path
from autotune.spec import load_spec
from autotune.tuning import open_study
spec = load_spec(None, {"model": "tiny", "hardware": {"device": "cpu"}, "study_dir": sys.argv[1],
                        "enqueue": [{"max_num_seqs": 4}]})
print("ready", flush=True)
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
study = open_study(spec)
print(len(study.trials), flush=True)
"""


def test_two_processes_create_one_new_sqlite_study(tmp_path: Path, tiny_model: Path) -> None:
    """Ten times: two processes open the same new study at the same moment; both succeed, one study,
    and the spec's enqueued configuration is queued once."""
    for attempt in range(10):
        folder, go = tmp_path / f"study{attempt}", tmp_path / f"go{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", RACE, str(folder), str(go)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate()
        go.touch()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        storage = f"sqlite:///{folder / 'study.db'}"
        assert optuna.get_all_study_names(storage) == ["tiny-vllm"]
        assert len(optuna.load_study(study_name="tiny-vllm", storage=storage).trials) == 1


def _spec_file(tmp_path: Path, marker: str, trials: int, token_delay: float = 0.0) -> Path:
    mode_file = tmp_path / "mode"
    mode_file.write_text("slow" if token_delay else "ok")
    data = fault_engine_spec(tmp_path / "study", mode_file, marker=marker, trials=trials, token_delay=token_delay)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _check_one_at_a_time(study_dir: Path, trials: int) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="tiny-vllm", storage=f"sqlite:///{study_dir / 'study.db'}")
    ran = [t for t in study.trials if t.state.is_finished() and t.user_attrs.get("status") != "surplus"]
    assert [t.state for t in ran] == [optuna.trial.TrialState.COMPLETE] * trials
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in ran:  # each trial ran once: one engine start in its folder
        log = Path(t.user_attrs["log_path"]).read_text()
        assert log.count("fault server pid") == 1, log
    assert len({tuple(sorted(t.params.items())) for t in ran}) == trials  # no configuration measured twice
    spans = sorted((t.datetime_start, t.datetime_complete) for t in ran)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, spans  # the engines' runs never overlap
    return ran


def test_two_optimize_on_one_new_study_take_turns(tmp_path: Path, cli_env: dict, tiny_model: Path) -> None:
    """Ten times: two ``autotune optimize`` started together on one new --study-dir both finish,
    share the budget, and never measure at the same time."""
    for attempt in range(10):
        root = tmp_path / f"attempt{attempt}"
        root.mkdir()
        marker = uuid.uuid4().hex
        spec = _spec_file(root, marker, trials=2)
        env = {**cli_env, "AUTOTUNE_LOCKS": str(root / "locks")}
        procs = [subprocess.Popen(autotune_cmd("optimize", "--spec", str(spec)), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert not any("Traceback" in out for out in outs), outs
        _check_one_at_a_time(root / "study", trials=2)
        assert processes_with_env(MARKER, marker) == []


def test_a_second_study_waits_for_the_first_and_says_so(tmp_path: Path, cli_env: dict) -> None:
    marker = uuid.uuid4().hex
    spec = _spec_file(tmp_path, marker, trials=2, token_delay=0.2)
    env: dict[str, Any] = {**cli_env, "AUTOTUNE_LOCKS": str(tmp_path / "locks")}
    first = subprocess.Popen(autotune_cmd("optimize", "--spec", str(spec)), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    engine_log = tmp_path / "study" / "trials" / "0000" / "engine.log"
    deadline = time.monotonic() + 120
    while not (engine_log.exists() and "request 1 mode slow" in engine_log.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.2)
    second = subprocess.run(autotune_cmd("optimize", "--spec", str(spec)), capture_output=True, text=True,
                            env=env, timeout=300)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, out + second.stdout + second.stderr
    assert (f"waiting for study tiny-vllm (pid {first.pid}) to finish measuring on this machine"
            in " ".join(second.stdout.split())), second.stdout
    _check_one_at_a_time(tmp_path / "study", trials=2)
    assert processes_with_env(MARKER, marker) == []
