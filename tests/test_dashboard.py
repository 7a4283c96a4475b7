"""``autotune dashboard`` serves optuna-dashboard on loopback, stops cleanly on SIGTERM, and
what it shows of a study is right: named values, SLOs as constraints, sortable figures."""

from __future__ import annotations

import json
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
from tests.test_study_records import record_study


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


def test_dashboard_shows_metric_names_and_the_missed_slo(tmp_path: Path) -> None:
    """optuna-dashboard's own API on a study written by the tuning loop's writers: the
    values carry the figures' names, the trial that missed its SLO is infeasible there,
    and the key figures are sortable attributes."""
    record_study(tmp_path / "run")
    port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        autotune_cmd("dashboard", str(tmp_path / "run"), "--port", str(port)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        studies = None
        deadline = time.monotonic() + 120
        while studies is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                studies = json.loads(_get(f"http://127.0.0.1:{port}/api/studies")[1])
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert studies is not None, proc.stderr.read() if proc.poll() is not None and proc.stderr else "no answer"
        (study,) = studies["study_summaries"]
        detail = json.loads(_get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")[1])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    assert detail["objective_names"] == ["output_throughput", "p99_ttft_ms"]
    met, missed = sorted(detail["trials"], key=lambda t: t["number"])
    assert met["constraints"][0] <= 0 < missed["constraints"][0]  # p99 TTFT 471 ms against 300 ms
    sortable = {a["key"]: a["sortable"] for a in detail["union_user_attrs"]}
    assert sortable["p99_ttft_ms"] and sortable["output_throughput"]
