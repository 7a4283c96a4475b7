"""Starts an engine server as a child process and takes it down again, whole.

Shared by every engine: the server runs in its own process group (so its
workers and compile helpers go with it), on a loopback port, with stdout and
stderr in the trial's log file. A failed start is reported with the engine's own
last words, because that is what a user needs to fix the configuration.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Callable

from autotune.engines.base import LaunchPlan
from autotune.engines.engine_log import CappedLog, default_log_max_bytes, secret_values, tail
from autotune.errors import EngineStartError

_ERROR_LINE = re.compile(
    r"(error:|Error\b|Exception\b|exited with|CUDA out of memory|OutOfMemory|No available memory|not supported|Killed)",
)
# Lines that mention an error but explain nothing: stack-frame noise and wrappers.
_NOISE = re.compile(
    r"^\s*(File \"|Traceback|\^|~|raise |During handling|The above exception|\s*$)"
    r"|See root cause above|See stack trace for root cause|EngineDeadError|output_handler failed|failed to automatically increase"
)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the engine binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def reason_from_log(path: Path) -> str:
    """The engine's own error line: the last line that says what went wrong."""
    lines = tail(path, 200)
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if _ERROR_LINE.search(line) and not _NOISE.search(_strip_log_prefix(line)):
            reason = _strip_log_prefix(line)
            if "validation error" in line:
                # pydantic puts the field and the complaint on the next lines
                detail = [_strip_log_prefix(x).split(" [type=")[0] for x in lines[i + 1 : i + 3]]
                detail = [d for d in detail if d and not d.startswith("For further information")]
                reason = ": ".join([reason, *detail])
            return reason[:500]
    for line in reversed(lines):
        if line.strip():
            return _strip_log_prefix(line)[:500]
    return "engine exited without output"


def _strip_log_prefix(line: str) -> str:
    # vLLM prefixes lines with "(APIServer pid=123) ERROR 11-24 10:00:00 [file.py:12] "
    line = re.sub(r"^\(\w+ pid=\d+\)\s*", "", line.strip())
    line = re.sub(r"^(ERROR|WARNING|INFO|DEBUG)\s+\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \[[^\]]*\]\s*", "", line)
    return line


class EngineServer:
    """One running engine; use as a context manager so it is always torn down."""

    def __init__(
        self,
        plan: LaunchPlan,
        log_path: Path,
        *,
        startup_timeout_s: float = 600.0,
        poll_s: float = 0.5,
        log_max_bytes: int | None = None,
    ) -> None:
        self.plan = plan
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.poll_s = poll_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self.log_max_bytes = log_max_bytes if log_max_bytes is not None else default_log_max_bytes()
        self.teardown_problems: list[str] = []
        self._log: CappedLog | None = None
        self._pump: threading.Thread | None = None
        self._gpu_baseline: dict[int, int] | None = None
        self._death_noted = False
        self.scratch: Path | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.plan.env}
        if self.plan.scratch_env:
            self.scratch = Path(tempfile.mkdtemp(prefix="autotune-engine-"))
            env.update(dict.fromkeys(self.plan.scratch_env, str(self.scratch)))
        self._gpu_baseline = gpu_memory_used(_visible_gpus(env))
        self._log = CappedLog(self.log_path, self.log_max_bytes, secrets=secret_values(env))
        self._log.write(f"$ {self.plan.command_line()}\n".encode())
        try:
            self.proc = subprocess.Popen(  # argv list, never a shell string
                self.plan.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        except OSError as e:  # no such program, not executable: the engine never ran
            reason = f"cannot launch {self.plan.argv[0] if self.plan.argv else 'an empty command'}: {e.strerror or e}"
            self._log.write(f"autotune: {reason}\n".encode())
            self._log.close()
            self._drop_scratch()
            raise EngineStartError(reason) from None
        assert self.proc.stdout is not None
        self._pump = threading.Thread(target=self._log.pump, args=(self.proc.stdout,), daemon=True)
        self._pump.start()

    def wait_healthy(self, on_wait: Callable[[float], None] | None = None) -> float:
        """Blocks until the health endpoint answers 200; returns seconds taken."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        url = self.plan.base_url + self.plan.health_path
        while True:
            elapsed = time.monotonic() - t0
            code = self.proc.poll()
            if code is not None:
                self._drain()
                raise EngineStartError(
                    f"engine exited with status {code} before it was healthy: {reason_from_log(self.log_path)}",
                    "\n".join(tail(self.log_path)),
                )
            if elapsed > self.startup_timeout_s:
                raise EngineStartError(
                    f"engine not healthy after {self.startup_timeout_s:.0f}s (last log line: "
                    f"{reason_from_log(self.log_path)})",
                    "\n".join(tail(self.log_path)),
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        self.startup_s = time.monotonic() - t0
                        return self.startup_s
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if on_wait is not None:
                on_wait(elapsed)
            time.sleep(self.poll_s)

    def alive(self, settle_s: float = 0.0) -> bool:
        """Whether the engine still runs; with ``settle_s``, after waiting that long for it to exit.

        A process killed a moment ago may not have exited yet: tearing down a
        large address space takes a while on a busy machine, and until then the
        process is neither running nor reapable. Callers with evidence of a
        death (requests cut off) give it ``settle_s`` to show.
        """
        if self.proc is not None and settle_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=settle_s)
        if self.proc is None or self.proc.poll() is not None:
            self._drain()  # so that the log holds the engine's last words before anyone reads it
            self._note_signal_death()
            return False
        return True

    def _note_signal_death(self) -> None:
        # A process killed by a signal (the OOM killer, kill -9) writes nothing; say it in its log.
        code = self.proc.returncode if self.proc is not None else None
        if code is not None and code < 0 and self._log is not None and not self._death_noted:
            self._death_noted = True
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown"
            self._log.write(f"autotune: engine exited with signal {-code} ({name}), no error of its own\n".encode())

    def _drain(self, timeout_s: float = 5.0) -> None:
        if self._pump is not None:
            self._pump.join(timeout_s)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the whole group, then SIGKILL after the grace period; then check it is all gone."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id, even once it has exited
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)
        # Children of the group may outlive the leader for a moment.
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        # Orphans that died are reaped by init a moment later; give it that moment.
        deadline = time.monotonic() + 3
        while _signalable(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._drain()
        left = group_members(pgid)
        if left:
            self.teardown_problems.append(f"engine processes still alive after SIGKILL: {left}")
        self.teardown_problems += wait_gpu_memory_baseline(self._gpu_baseline)
        self._drop_scratch()
        if self._log is not None:
            for problem in self.teardown_problems:
                self._log.write(f"autotune teardown: {problem}\n".encode())
            self._log.close()

    def _drop_scratch(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "EngineServer":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def _signalable(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group.

    A zombie is already dead; where PID 1 does not reap (many containers) it
    would otherwise look like a process left behind.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return sorted(members)


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook that has the child SIGTERMed when autotune dies, even by SIGKILL.

    Without it a worker killed with -9 leaves its engine holding the GPUs.
    libc is loaded here, in the parent: the child runs the hook between fork
    and exec, where importing or loading anything could deadlock on a lock
    another thread held at fork time.
    """
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return hook


def _visible_gpus(env: dict[str, str]) -> list[int] | None:
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:  # GPU UUIDs: watch every GPU
        return None


def gpu_memory_used(devices: list[int] | None = None) -> dict[int, int] | None:
    """Bytes used on each NVIDIA GPU (those given, else all), or None without NVML."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: a CPU machine
        return None
    try:
        indices = devices if devices is not None else list(range(pynvml.nvmlDeviceGetCount()))
        return {i: int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used) for i in indices}
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


GPU_MEMORY_SLACK_BYTES = 256 * 2**20


def wait_gpu_memory_baseline(baseline: dict[int, int] | None, timeout_s: float = 60.0) -> list[str]:
    """Waits until the GPUs hold no more than before the launch; the problems left, if any.

    The driver frees an exited process's memory a moment after it is gone, and a
    next engine started too early fails with "not enough free memory".
    """
    if not baseline:
        return []
    deadline = time.monotonic() + timeout_s
    while True:
        now = gpu_memory_used(list(baseline))
        if now is None:
            return []
        over = {i: now[i] - baseline[i] for i in baseline if now[i] - baseline[i] > GPU_MEMORY_SLACK_BYTES}
        if not over:
            return []
        if time.monotonic() > deadline:
            return [
                "GPU memory not back to its baseline after teardown: "
                + ", ".join(f"GPU {i} +{b / 2**30:.1f} GiB" for i, b in over.items())
            ]
        time.sleep(0.5)
