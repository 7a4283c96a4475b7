"""The launcher: engine error lines from real vLLM logs, process-group teardown."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from autotune.engines.base import LaunchPlan
from autotune.engines.launcher import EngineServer, free_port, reason_from_log
from autotune.errors import EngineStartError

LOGS = Path(__file__).parent / "data" / "engine_logs"


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("vllm_cpu_bs7.log", "No common block size for 7"),
        ("vllm_cpu_kvbytes_tiny.log", "To serve at least one request with the model's max seq len (512)"),
        ("vllm_cpu_kvspace_frac.log", "invalid literal for int() with base 10: '0.25'"),
        ("vllm_cpu_mns_neg.log", "max_num_batched_tokens: Input should be greater than or equal to 1"),
        ("vllm_h100_gpu_memory_busy.log", "Free memory on device cuda:0 (3.39/79.18 GiB) on startup is less"),
    ],
)
def test_reason_is_the_engines_own_error_line(log: str, expected: str) -> None:
    reason = reason_from_log(LOGS / log)
    assert expected in reason
    assert "\n" not in reason
    assert "See root cause above" not in reason


def _plan(argv: list[str], port: int) -> LaunchPlan:
    return LaunchPlan(argv=argv, env={}, host="127.0.0.1", port=port, health_path="/health", metrics_path=None)


def test_child_that_exits_is_a_start_error_with_its_words(tmp_path: Path) -> None:
    code = "import sys; print('ValueError: this engine refuses --frobnicate'); sys.exit(3)"
    server = EngineServer(_plan([sys.executable, "-c", code], free_port()), tmp_path / "engine.log")
    server.start()
    with pytest.raises(EngineStartError) as info:
        server.wait_healthy()
    assert "status 3" in info.value.reason and "refuses --frobnicate" in info.value.reason
    server.stop()


def test_alive_waits_for_a_death_in_progress_when_asked(tmp_path: Path) -> None:
    """An engine killed a moment ago can still look alive; with settle_s its exit is waited for."""
    flag = tmp_path / "die"
    code = (
        "import os, pathlib, signal, time\n"
        f"while not pathlib.Path({str(flag)!r}).exists(): time.sleep(0.02)\n"
        "time.sleep(0.3); os.kill(os.getpid(), signal.SIGKILL)"
    )
    server = EngineServer(_plan([sys.executable, "-c", code], free_port()), tmp_path / "engine.log")
    server.start()
    try:
        assert server.alive() and server.alive(settle_s=0.2)  # nothing asked it to die: still running
        flag.touch()
        assert not server.alive(settle_s=120)
        assert "signal 9 (SIGKILL)" in (tmp_path / "engine.log").read_text()
    finally:
        server.stop()


def test_a_start_gets_a_scratch_folder_that_its_stop_removes(tmp_path: Path) -> None:
    """What an engine leaves in its scratch folder (vLLM: a socket per process) goes with it,
    even when it is killed and cleans nothing up itself."""
    code = (
        "import os, pathlib, socket, time\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(os.path.join(os.environ['ENGINE_SCRATCH'], 'ipc'))\n"
        "pathlib.Path(os.environ['ENGINE_SCRATCH'], 'ready').touch()\n"
        "time.sleep(600)"
    )
    plan = LaunchPlan(argv=[sys.executable, "-c", code], env={}, host="127.0.0.1", port=free_port(),
                      health_path="/health", metrics_path=None, scratch_env=("ENGINE_SCRATCH",))
    server = EngineServer(plan, tmp_path / "engine.log")
    server.start()
    try:
        assert server.scratch is not None and server.scratch.is_dir()
        while not (server.scratch / "ready").exists():
            assert server.alive(), (tmp_path / "engine.log").read_text()
            time.sleep(0.05)
        assert (server.scratch / "ipc").is_socket()
    finally:
        server.stop(grace_s=0)
    assert not server.scratch.exists()


def test_a_start_that_cannot_launch_leaves_no_scratch_folder(tmp_path: Path) -> None:
    plan = LaunchPlan(argv=[str(tmp_path / "no-such-engine")], env={}, host="127.0.0.1", port=free_port(),
                      health_path="/health", metrics_path=None, scratch_env=("ENGINE_SCRATCH",))
    server = EngineServer(plan, tmp_path / "engine.log")
    with pytest.raises(EngineStartError, match="cannot launch"):
        server.start()
    server.stop()
    assert server.scratch is not None and not server.scratch.exists()


def test_never_healthy_hits_the_deadline_and_the_group_is_gone(tmp_path: Path) -> None:
    # A parent that starts a grandchild and never answers /health.
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print('loading', flush=True); time.sleep(600)"
    )
    server = EngineServer(
        _plan([sys.executable, "-c", code], free_port()), tmp_path / "engine.log", startup_timeout_s=2, poll_s=0.2
    )
    server.start()
    assert server.proc is not None
    pgid = os.getpgid(server.proc.pid)
    with pytest.raises(EngineStartError, match="not healthy after 2s"):
        server.wait_healthy()
    server.stop(grace_s=5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
