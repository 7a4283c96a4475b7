"""A study's verification as its record and its review give it: under way, no ratio as the result.

benchmarks/study_record.py and `autotune review` read a copy of the H100
unseeded study kept in the repository (its verify was measured over several
short runs), so the starts are real ones.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autotune.tuning import StudyResults, load_study
from autotune.verify import save, stored
from tests.conftest import REPO, autotune_cmd

sys.path.insert(0, str(REPO / "benchmarks"))

import study_record  # noqa: E402

KEPT = REPO / "benchmarks" / "data" / "h100" / "study"


def _copy_wanting(tmp_path: Path, extra_starts: int) -> Path:
    """The kept study with each verification wanting ``extra_starts`` more starts than it has."""
    folder = tmp_path / "study"
    shutil.copytree(KEPT, folder)
    study, spec = load_study(folder)
    results = StudyResults(study, spec)
    kept = stored(results)
    if -1 not in kept or not any(n >= 0 for n in kept):
        pytest.skip("the kept study has no verification of both the defaults and a recommendation")
    for v in kept.values():
        v.repeats_wanted = len(v.starts) + extra_starts
        save(results, v)
    return folder


def test_a_verification_still_missing_starts_gives_an_interim_ratio_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy_wanting(tmp_path, extra_starts=2)
    out = tmp_path / "record.json"
    assert study_record.main(["--study-dir", str(folder), "--label", "unseeded", "--out", str(out)]) == 0
    record = json.loads(out.read_text())["unseeded"]
    assert record["ratio"] is None
    assert record["interim_ratio"]["ratio"] > 0
    assert record["ratio_missing"].startswith("verification under way: the defaults has ")
    assert "verification under way" in capsys.readouterr().out


def test_queued_trials_are_not_counted_as_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A study that stops with trials enqueued (the rounds' neighbours) has measured only the others."""
    folder = _copy_wanting(tmp_path, extra_starts=0)
    study, _ = load_study(folder)
    before = study.trials
    already_queued = sum(t.state == optuna.trial.TrialState.WAITING for t in before)
    study.enqueue_trial(dict(before[0].params))
    measured, queued = len(before) - already_queued, already_queued + 1
    out = tmp_path / "record.json"
    assert study_record.main(["--study-dir", str(folder), "--label", "unseeded", "--out", str(out)]) == 0
    trials = json.loads(out.read_text())["unseeded"]["trials"]
    assert [t["state"] for t in trials].count("waiting") == queued
    assert f"unseeded: {measured} trials ({queued} more queued)" in capsys.readouterr().out


def test_a_complete_verification_gives_the_ratio(tmp_path: Path) -> None:
    folder = _copy_wanting(tmp_path, extra_starts=0)
    out = tmp_path / "record.json"
    assert study_record.main(["--study-dir", str(folder), "--label", "unseeded", "--out", str(out)]) == 0
    record = json.loads(out.read_text())["unseeded"]
    assert record["ratio"]["ratio"] > 0 and record["interim_ratio"] is None and record["ratio_missing"] is None


def _review(folder: Path) -> str:
    out = subprocess.run(autotune_cmd("review", str(folder)), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_review_gives_the_verified_ratio_beside_the_studys_own_reading(tmp_path: Path) -> None:
    folder = _copy_wanting(tmp_path, extra_starts=0)
    results = StudyResults.load(folder)
    kept = stored(results)
    best = next(n for n in kept if n >= 0)
    text = _review(folder)
    assert f"best: trial {best}, " in text  # the study's one reading ...
    line = next(ln for ln in text.splitlines() if ln.startswith("verified: "))
    starts = f"Welch over {len(kept[best].starts)} and {len(kept[-1].starts)} fresh starts"
    assert line.startswith(f"verified: trial {best}: ") and starts in line  # ... and what the fresh starts say
    from autotune.report import write_report

    html_path, _ = write_report(results, folder)
    assert html.escape(line) in html_path.read_text()  # the report says it too


def test_review_says_a_verification_missing_starts_is_under_way(tmp_path: Path) -> None:
    folder = _copy_wanting(tmp_path, extra_starts=2)
    text = _review(folder)
    assert not any(ln.startswith("verified: ") for ln in text.splitlines())
    assert "verification under way (" in text and " of " in text
