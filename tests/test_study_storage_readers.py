"""Every command that reads a study opens one in PostgreSQL (``--storage URL --study NAME``)
as it opens a folder, and a storage holding several studies is never read by guess."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import autotune_cmd
from tests.test_report_html import build_recorded_study


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(autotune_cmd(*args), capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture()
def two_studies(pg_url: str, tmp_path: Path) -> str:
    """One PostgreSQL database holding two recorded studies, the second with a baseline."""
    build_recorded_study(tmp_path / "a", storage=pg_url, name="first")
    build_recorded_study(tmp_path / "b", storage=pg_url, name="second", baseline_from=1)
    return pg_url


def test_a_storage_with_several_studies_needs_a_name(two_studies: str, tmp_path: Path) -> None:
    out = _run("review", "--storage", two_studies, cwd=tmp_path)
    assert out.returncode == 2
    assert "holds 2 studies (first, second): name one with --study" in out.stderr
    missing = _run("review", "--storage", two_studies, "--study", "third", cwd=tmp_path)
    assert missing.returncode == 2 and "no study 'third'" in missing.stderr


def test_review_report_export_and_locate_read_a_postgresql_study(two_studies: str, tmp_path: Path) -> None:
    where = ["--storage", two_studies, "--study", "second"]
    review = _run("review", *where, "--json", cwd=tmp_path)
    assert review.returncode == 0, review.stderr
    data = json.loads(review.stdout)
    assert data["study"] == "second" and [p["number"] for p in data["front"]] == [0]
    assert data["baseline"]["figures"]["output_throughput"] == pytest.approx(445.2, abs=0.1)
    # files go to the folder the study's spec names, as it exists on this machine, by absolute paths
    config = tmp_path / "b" / "configs" / "trial-0.yaml"
    assert data["front"][0]["config_path"] == str(config.resolve()) and config.exists()

    report = _run("report", *where, cwd=tmp_path)  # a folder given with --storage is where files go
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "b" / "report.html").exists()
    elsewhere = _run("report", str(tmp_path / "out"), *where, cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "plotly.min.js").exists()

    export = _run("export", *where, "--format", "csv", "--out", str(tmp_path / "second.csv"), cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    rows = (tmp_path / "second.csv").read_text().splitlines()
    assert rows[1].startswith("engine defaults,") and len(rows) == 4  # header, baseline, two trials

    locate = _run("locate", *where, "0", "--json", cwd=tmp_path)
    assert locate.returncode == 0, locate.stderr
    assert [t["trial"] for t in json.loads(locate.stdout)["trials"]] == [0]


def test_a_study_file_with_several_studies_takes_study(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'run' / 'study.db').resolve()}"
    build_recorded_study(tmp_path / "run", name="first")
    build_recorded_study(tmp_path / "run", storage=url, name="second")
    guess = _run("review", str(tmp_path / "run"), cwd=tmp_path)
    assert guess.returncode == 2 and "name one with --study" in guess.stderr
    named = _run("review", str(tmp_path / "run"), "--study", "second", "--json", cwd=tmp_path)
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["study"] == "second"
