"""The fault matrix: what a study does when things break.

Each row asserts the same four things: the study goes on (or resumes), the
failed trial keeps its reason, no finished trial is lost, and no process is
left behind. The real engine produces the faults it can produce on demand
(out of memory at start, death mid-measurement); the fault server in
``tests/fakes`` produces those it cannot (5xx, cut and stalled streams, a
rate the client cannot offer, a never-healthy start, endless logs), started
by autotune's own launcher through ``engine.launch_template``.

Rows elsewhere: a rejected argument (tests/test_rejected_argument.py), three
workers and kill -9 of one (tests/test_workers.py), a broken machine
(tests/test_failfast.py), two studies on one machine (tests/test_device_lock.py).
"""

from __future__ import annotations

import os
import signal
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

from autotune.engines.engine_log import CappedLog
from autotune.engines.launcher import group_members
from autotune.errors import RunFailed
from autotune.spec import load_spec
from autotune.tuning import budget_state, counted, load_study, run_study
from tests.conftest import REPO, autotune_cmd, processes_with_env
from tests.fakes import MARKER, fault_engine_spec

FAIL, COMPLETE = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE


class ModePerTrial:
    """Sets the fault server's mode before each trial's engine starts."""

    def __init__(self, mode_file: Path, modes: dict[int, str]) -> None:
        self.mode_file, self.modes = mode_file, modes

    def study_opened(self, *a: Any) -> None: ...
    def trial_status(self, message: str) -> None: ...
    def requests_progress(self, done: int, total: int) -> None: ...
    def trial_finished(self, *a: Any) -> None: ...

    def trial_started(self, number: int, config: dict[str, Any]) -> None:
        self.mode_file.write_text(self.modes.get(number, "ok"))


def fault_study(tmp_path: Path, modes: dict[int, str], **kw: Any) -> tuple[optuna.Study, str]:
    """Runs a study whose first trial meets the fault and whose second is served normally."""
    marker = uuid.uuid4().hex
    mode_file = tmp_path / "mode"
    spec = load_spec(None, fault_engine_spec(tmp_path / "study", mode_file, marker=marker, **kw))
    run = run_study(spec, ModePerTrial(mode_file, modes))
    return run.study, marker


def assert_went_on(study: optuna.Study, marker: str, reason: str) -> None:
    first, second = study.trials[:2]
    assert first.state == FAIL and first.user_attrs["status"] == "failed"
    assert reason in first.user_attrs["reason"], first.user_attrs["reason"]
    assert second.state == COMPLETE and second.user_attrs["figures"]["completed"] > 0
    assert sum(counted(t) for t in study.trials) == 2
    assert processes_with_env(MARKER, marker) == []


def test_5xx_responses_fail_the_trial_with_the_servers_words(tmp_path: Path) -> None:
    study, marker = fault_study(tmp_path, {0: "5xx"})
    assert_went_on(study, marker, "all requests failed: HTTP 500")
    assert "injected internal error" in study.trials[0].user_attrs["reason"]


def test_some_5xx_are_counted_not_fatal(tmp_path: Path) -> None:
    study, marker = fault_study(tmp_path, {0: "5xx", 1: "5xx"}, extra=["--fail-every", "3"])
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 2
    for t in finished:
        assert t.state == COMPLETE
        assert t.user_attrs["figures"]["failed"] == 2 and t.user_attrs["figures"]["completed"] == 4
        assert "HTTP 500" in t.user_attrs["figures"]["first_error"]
    assert processes_with_env(MARKER, marker) == []


def test_stream_cut_mid_response(tmp_path: Path) -> None:
    study, marker = fault_study(tmp_path, {0: "cut"})
    assert_went_on(study, marker, "all requests failed")


def test_stalled_stream_hits_the_per_request_timeout(tmp_path: Path) -> None:
    study, marker = fault_study(tmp_path, {0: "stall"}, request_timeout_s=2)
    assert_went_on(study, marker, "timeout after 2s")


def test_never_healthy_hits_the_startup_deadline(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    mode_file = tmp_path / "mode"
    data = fault_engine_spec(tmp_path / "study", mode_file, marker=marker)
    data["engine"]["startup_timeout_s"] = 3
    run = run_study(load_spec(None, data), ModePerTrial(mode_file, {0: "never_healthy"}))
    assert_went_on(run.study, marker, "not healthy after 3s")


def test_load_generator_that_cannot_keep_the_rate(tmp_path: Path) -> None:
    """An offered rate beyond the client is a failed trial saying so; a lower rate then resumes the study."""
    marker = uuid.uuid4().hex
    mode_file = tmp_path / "mode"
    data = fault_engine_spec(
        tmp_path / "study", mode_file, marker=marker, trials=1, arrival="poisson", rate=50000.0,
        num_requests=2000, concurrency=512, output_tokens=256,
    )
    data["max_model_len"] = 512  # the stand-in ignores it; the requests must fit it all the same
    first = run_study(load_spec(None, data), ModePerTrial(mode_file, {0: "fast"}))
    (t0,) = first.study.trials
    assert t0.state == FAIL and "load generator could not keep the offered rate" in t0.user_attrs["reason"]
    assert t0.user_attrs["figures"]["client_cpu_util"] >= 0.5
    data["workload"].update(rate=20.0, num_requests=6, concurrency=2)
    data["budget"]["trials"] = 2
    second = run_study(load_spec(None, data), ModePerTrial(mode_file, {}))
    trials = [t for t in second.study.trials if t.state.is_finished()]
    assert [t.state for t in trials] == [FAIL, COMPLETE]
    assert trials[0].user_attrs["reason"] == t0.user_attrs["reason"]
    assert processes_with_env(MARKER, marker) == []


def test_engine_log_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that writes 8 MiB of log keeps at most two files of 1 MiB, newest output included."""
    monkeypatch.setenv("AUTOTUNE_ENGINE_LOG_MAX_MIB", "1")
    study, marker = fault_study(tmp_path, {0: "chatty", 1: "chatty"}, extra=["--chatty-mib", "8"])
    finished = [t for t in study.trials if t.state.is_finished()]
    assert [t.state for t in finished] == [COMPLETE, COMPLETE]
    for t in finished:
        log = Path(t.user_attrs["log_path"])
        rotated = log.with_name("engine.log.1")
        assert log.stat().st_size <= 2**20 and rotated.stat().st_size <= 2**20
        assert "request 6 mode ok" in log.read_text()  # the newest lines are the ones kept
    total = sum(p.stat().st_size for p in (tmp_path / "study").rglob("*") if p.is_file())
    assert total < 5 * 2**20
    assert processes_with_env(MARKER, marker) == []


def test_full_disk_stops_the_copy_not_the_engine(tmp_path: Path) -> None:
    """On a full disk (/dev/full answers every write with ENOSPC) the engine's output is still drained."""
    log = CappedLog(Path("/dev/full"), 2**20)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; [sys.stdout.write('x' * 99 + '\\n') for _ in range(50000)]"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    pump = threading.Thread(target=log.pump, args=(proc.stdout,))
    pump.start()
    assert proc.wait(timeout=60) == 0  # a blocked pipe would hang the engine here
    pump.join(timeout=10)
    assert log.broken is not None and "No space left" in log.broken


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_the_trial_and_the_next_run_resumes(tmp_path: Path, cli_env: dict, sig: int) -> None:
    marker = uuid.uuid4().hex
    mode_file = tmp_path / "mode"
    mode_file.write_text("slow")
    data = fault_engine_spec(tmp_path / "study", mode_file, marker=marker, trials=1, token_delay=0.5)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    cmd = autotune_cmd("optimize", "--spec", str(spec_path))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    engine_log = tmp_path / "study" / "trials" / "0000" / "engine.log"
    deadline = time.monotonic() + 120
    while not (engine_log.exists() and "request 1 mode slow" in engine_log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert [line for line in err.splitlines() if line.strip()] == [
        "interrupted: finished trials are kept; run the same command to resume"
    ], err
    study, _ = load_study(tmp_path / "study")
    (t0,) = study.trials
    assert t0.state == FAIL and t0.user_attrs["status"] == "interrupted"
    assert t0.user_attrs["reason"] == "interrupted by the user"
    assert processes_with_env(MARKER, marker) == []
    mode_file.write_text("ok")
    again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    study, _ = load_study(tmp_path / "study")
    assert [t.state for t in study.trials if t.state.is_finished()] == [FAIL, COMPLETE]
    assert study.trials[0].user_attrs["reason"] == "interrupted by the user"
    assert processes_with_env(MARKER, marker) == []


_UNRETRIEVED = """
import asyncio, sys
from autotune.cli import app, main

@app.command("hang")
def hang() -> None:
    async def request() -> None:
        raise ConnectionResetError("the engine went away")

    async def run() -> None:
        tasks = [asyncio.ensure_future(request())]  # held, as the runner holds them, and never read
        await asyncio.sleep(0.1)
        print("measuring", flush=True)
        await asyncio.sleep(600)

    asyncio.run(run())

sys.argv = ["autotune", "hang"]
main()
"""


def test_interrupted_load_run_leaves_no_asyncio_noise(cli_env: dict) -> None:
    """SIGTERM while request tasks hold errors nobody will read: asyncio's "Task exception was never
    retrieved" (69 lines of it, once) stays out of what the user reads."""
    proc = subprocess.Popen([sys.executable, "-c", _UNRETRIEVED], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "measuring"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Task exception" not in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) <= 1, err


def test_a_trial_that_cannot_be_launched_is_failed_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launch program that vanished after the spec was checked: each trial is failed with the
    reason, none is left running, and the third such start stops the study uncounted."""
    monkeypatch.setattr("autotune.tuning.loop.require_launchable", lambda setup: None)
    marker = uuid.uuid4().hex
    data = fault_engine_spec(tmp_path / "study", tmp_path / "mode", marker=marker, trials=8)
    data["engine"]["launch_template"] = ["/nonexistent/bin/wrapper", "{argv}"]
    with pytest.raises(RunFailed, match="looks like the machine"):
        run_study(load_spec(None, data))
    study, _ = load_study(tmp_path / "study")
    assert [t.state for t in study.trials] == [FAIL, FAIL, FAIL]
    for t in study.trials:
        assert t.user_attrs["status"] == "failed"
        assert t.user_attrs["reason"] == "cannot launch /nonexistent/bin/wrapper: No such file or directory"
    assert budget_state(study).done == 0


def _read_only(folder: Path) -> Any:
    """A command prefix under which ``folder`` is read-only, and how to undo it; None where none can be had.

    Root writes through permission bits, so as root the folder is bind-mounted
    read-only in a mount namespace of the command's own (nothing outside sees it).
    """
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return [], lambda: [p.chmod(m) for p, m in modes.items()]
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"', str(folder)]
    try:
        probe = subprocess.run([*prefix, "sh", "-c", f"! touch {folder}/probe"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (prefix, lambda: None) if probe.returncode == 0 and not (folder / "probe").exists() else None


def test_read_only_study_folder_is_refused_and_resumes_once_writable(tmp_path: Path, cli_env: dict) -> None:
    marker = uuid.uuid4().hex
    mode_file = tmp_path / "mode"
    mode_file.write_text("ok")
    data = fault_engine_spec(tmp_path / "study", mode_file, marker=marker, trials=1)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    cmd = autotune_cmd("optimize", "--spec", str(spec_path))
    first = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    data["budget"]["trials"] = 2
    spec_path.write_text(yaml.safe_dump(data))
    db = tmp_path / "study" / "study.db"
    before = db.read_bytes()
    read_only = _read_only(tmp_path / "study")
    if read_only is None:
        pytest.skip("cannot make a folder read-only here (root without a mount namespace)")
    prefix, undo = read_only
    try:
        refused = subprocess.run([*prefix, *cmd], capture_output=True, text=True, env=cli_env, timeout=300)
    finally:
        undo()
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert lines == [f"error: study folder {tmp_path / 'study'} is not writable"], refused.stderr
    assert db.read_bytes() == before  # the database is unharmed
    again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    study, _ = load_study(tmp_path / "study")
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE]
    assert processes_with_env(MARKER, marker) == []


def test_postgres_restart_mid_study(tmp_path: Path, postgres: Any, pg_url: str, cli_env: dict) -> None:
    """The database restarts while a trial is measuring: the worker reconnects and the study completes."""
    marker = uuid.uuid4().hex
    mode_file = tmp_path / "mode"
    mode_file.write_text("slow")
    data = fault_engine_spec(tmp_path / "study", mode_file, marker=marker, trials=3, token_delay=0.3)
    data["heartbeat"] = {"interval_s": 1, "grace_s": 6}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        autotune_cmd("worker", "--storage", pg_url, "--study", "pg-restart", "--spec", str(spec_path),
                     "--study-dir", str(tmp_path / "study")),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env,
    )
    engine_log = tmp_path / "study" / "trials" / "0000" / "engine.log"
    deadline = time.monotonic() + 120
    while not (engine_log.exists() and "request 1 mode slow" in engine_log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    postgres.restart()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    study = optuna.load_study(study_name="pg-restart", storage=pg_url)
    done = [t for t in study.trials if counted(t)]
    assert len(done) == 3 and all(t.state == COMPLETE for t in done), [
        (t.number, t.state, t.user_attrs.get("reason")) for t in study.trials
    ]
    for t in study.trials:
        if t.state == FAIL:  # a trial cut off by the restart keeps why, and was retried
            assert t.user_attrs.get("reason")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert processes_with_env(MARKER, marker) == []


def test_teardown_leaves_no_group_member(tmp_path: Path) -> None:
    """The launcher's own check: after stop() no live process is left in the engine's group."""
    from autotune.engines.base import LaunchPlan
    from autotune.engines.launcher import EngineServer, free_port

    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); time.sleep(600)"
    )
    plan = LaunchPlan([sys.executable, "-c", code], {}, "127.0.0.1", free_port(), "/health", None)
    server = EngineServer(plan, tmp_path / "engine.log")
    server.start()
    assert server.proc is not None
    deadline = time.monotonic() + 60  # the child starts its own child: however long that takes here
    while len(group_members(server.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(group_members(server.proc.pid)) == 2
    server.stop(grace_s=1)  # both ignore SIGTERM: SIGKILL takes them
    assert group_members(server.proc.pid) == []
    assert server.teardown_problems == []


def test_a_killed_engine_says_so_in_its_log(tmp_path: Path) -> None:
    """Killed by a signal, an engine writes nothing; the launcher's note gives the reason a cause."""
    from autotune.engines.base import LaunchPlan
    from autotune.engines.launcher import EngineServer, free_port, reason_from_log

    code = "import time; print('serving', flush=True); time.sleep(600)"
    plan = LaunchPlan([sys.executable, "-c", code], {}, "127.0.0.1", free_port(), "/health", None)
    server = EngineServer(plan, tmp_path / "engine.log")
    server.start()
    assert server.proc is not None
    time.sleep(0.5)
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    assert not server.alive()
    assert "exited with signal 9 (SIGKILL)" in reason_from_log(tmp_path / "engine.log")
    server.stop()


def test_engine_goes_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    """A worker killed with -9 cannot tear anything down; the kernel's parent-death signal does."""
    marker = uuid.uuid4().hex
    parent = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from autotune.engines.base import LaunchPlan\n"
        "from autotune.engines.launcher import EngineServer, free_port\n"
        "code = 'import time; time.sleep(600)'\n"  # writes nothing: no pipe to break
        f"plan = LaunchPlan([sys.executable, '-c', code], {{'{MARKER}': '{marker}'}}, '127.0.0.1', free_port(), '/h', None)\n"
        f"EngineServer(plan, Path({str(tmp_path / 'engine.log')!r})).start()\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    assert len(processes_with_env(MARKER, marker)) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while processes_with_env(MARKER, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_env(MARKER, marker) == []


# --- the real engine: out of memory at start, death mid-measurement ---------------------------

REAL_SPEC: dict[str, Any] = {
    "model": "tiny",
    "max_model_len": 256,
    "sampler": "random",
    "hardware": {"device": "cpu"},
    "engine": {"extra_args": ["--enforce-eager"], "startup_timeout_s": 600},
    "workload": {"prompt_tokens": 16, "output_tokens": 16, "concurrency": 1, "num_requests": 12,
                 "warmup_requests": 1},
    "space": {"max_num_seqs": 4, "max_num_batched_tokens": 512, "block_size": 32,
              "enable_prefix_caching": True, "kv_cache_space_gib": 1},
}


class KillEngineDuring:
    """Kills the real engine's whole process group once trial ``number`` has measured a request."""

    def __init__(self, number: int, marker: str) -> None:
        self.number, self.marker, self.current, self.killed = number, marker, -1, False
        self.victims: list[tuple[int, int, list[int]]] = []  # (trial, requests done, pids): shown if a test fails

    def study_opened(self, *a: Any) -> None: ...
    def trial_status(self, message: str) -> None: ...
    def trial_finished(self, *a: Any) -> None: ...

    def trial_started(self, number: int, config: dict[str, Any]) -> None:
        self.current = number

    def requests_progress(self, done: int, total: int) -> None:
        if self.current != self.number or done < 1 or self.killed:
            return
        victims = processes_with_env(MARKER, self.marker)
        self.victims.append((self.current, done, victims))
        for pid in victims:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while processes_with_env(MARKER, self.marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        # only a kill that found its engine counts; a scan that found nothing tries again next request
        self.killed = bool(victims) and not processes_with_env(MARKER, self.marker)


@pytest.fixture(scope="module")
def real_faults(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Any]:
    """One study on real vLLM-CPU: trial 0 cannot get its KV cache (4 TiB asked of the machine),
    then, resumed with the engine's own settings, trial 1 loses its engine mid-measurement and
    trial 2 runs normally."""
    root = tmp_path_factory.mktemp("real")
    marker = uuid.uuid4().hex
    data = {**REAL_SPEC, "study_dir": str(root / "study")}
    # vLLM's own process layout (a worker process beside the engine core), which the tests'
    # conftest changes for speed: these are the tests of what a kill leaves behind
    env = {MARKER: marker, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    data["engine"] = {**REAL_SPEC["engine"], "env": env,
                      # what the container really grants, unknown to the feasibility check
                      "launch_template": ["env", "VLLM_CPU_KVCACHE_SPACE=4096", "{argv}"]}
    data["budget"] = {"trials": 1}
    first = run_study(load_spec(None, data)).study.trials  # a snapshot: the study object stays live
    left_after_oom = processes_with_env(MARKER, marker)
    data["engine"] = {**REAL_SPEC["engine"], "env": env}
    data["budget"] = {"trials": 3}
    killer = KillEngineDuring(1, marker)
    second = run_study(load_spec(None, data), killer)
    return {"first": first, "study": second.study, "killed": killer.killed, "victims": killer.victims,
            "left_after_oom": left_after_oom, "left": processes_with_env(MARKER, marker)}


@pytest.mark.engine
def test_engine_out_of_memory_at_start(real_faults: dict[str, Any]) -> None:
    (t0,) = [t for t in real_faults["first"] if t.state.is_finished()]
    assert t0.state == FAIL and t0.user_attrs["status"] == "failed"
    reason = t0.user_attrs["reason"]
    assert "before it was healthy" in reason and "memory" in reason.lower(), reason
    assert real_faults["left_after_oom"] == []
    # resumed: the failed start is kept, with its reason, and counted
    assert real_faults["study"].trials[0].user_attrs["reason"] == reason


@pytest.mark.engine
def test_engine_dies_mid_measurement(real_faults: dict[str, Any]) -> None:
    study = real_faults["study"]
    finished = [t for t in study.trials if t.state.is_finished()]
    assert real_faults["killed"]
    t1, t2 = finished[1], finished[2]
    assert t1.state == FAIL and t1.user_attrs["status"] == "failed"
    assert "engine died during measurement" in t1.user_attrs["reason"]
    assert "signal 9 (SIGKILL)" in t1.user_attrs["reason"], t1.user_attrs["reason"]
    assert t2.state == COMPLETE and t2.user_attrs["figures"]["completed"] == 12
    assert sum(counted(t) for t in study.trials) == 3
    assert real_faults["left"] == []


# --- GPU memory back to its baseline after teardown (NVIDIA machines only) --------------------

_HOLD_GPU_MEMORY = """
import ctypes, sys, time
cuda = ctypes.CDLL("libcuda.so.1")
ctx, ptr = ctypes.c_void_p(), ctypes.c_uint64()
assert cuda.cuInit(0) == 0 and cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, 0) == 0
assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(2 << 30)) == 0
print("memory " + "held", flush=True)  # not the literal: the log starts with the command line
time.sleep(600)
"""


def test_gpu_memory_back_to_baseline_after_teardown(tmp_path: Path) -> None:
    """An engine holding 2 GiB of GPU memory is stopped; stop() returns once NVML sees it freed."""
    from autotune.engines.base import LaunchPlan
    from autotune.engines.launcher import EngineServer, free_port, gpu_memory_used

    before = gpu_memory_used([0])
    if not before:
        pytest.skip("no NVIDIA GPU visible through NVML")
    plan = LaunchPlan([sys.executable, "-c", _HOLD_GPU_MEMORY], {"CUDA_VISIBLE_DEVICES": "0"}, "127.0.0.1",
                      free_port(), "/health", None)
    server = EngineServer(plan, tmp_path / "engine.log")
    server.start()
    deadline = time.monotonic() + 60
    while "memory held" not in (tmp_path / "engine.log").read_text():
        assert server.alive() and time.monotonic() < deadline, (tmp_path / "engine.log").read_text()
        time.sleep(0.2)
    held = gpu_memory_used([0])
    assert held is not None and held[0] - before[0] >= 2 << 30
    server.stop(grace_s=5)
    after = gpu_memory_used([0])
    assert after is not None and after[0] - before[0] < 256 << 20
    assert server.teardown_problems == []
