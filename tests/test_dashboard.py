"""``autotune dashboard`` serves optuna-dashboard on loopback and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from autotune.engines.launcher import free_port
from tests.conftest import autotune_cmd
from tests.test_report_html import build_recorded_study


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def test_dashboard_serves_on_loopback_and_stops_on_sigterm(tmp_path: Path) -> None:
    study_dir = build_recorded_study(tmp_path / "run")
    port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        autotune_cmd("dashboard", str(study_dir), "--port", str(port)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        status, body = 0, b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert status == 200, proc.stderr.read() if proc.poll() is not None and proc.stderr else "no answer"
        assert b"<html" in body.lower()
        api_status, api = _get(f"http://127.0.0.1:{port}/api/studies")
        assert api_status == 200 and b"tiny-verify" in api  # it reads this study's storage
        # Bound to loopback only: the host's other addresses do not answer.
        outside = _non_loopback_address()
        if outside is not None:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((outside, port)) != 0
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "dashboard stopped" in out
    with socket.socket() as s:  # the port is free again: nothing was left behind
        assert s.connect_ex(("127.0.0.1", port)) != 0
    leftover = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address
