"""benchmarks/study_record.py: a study whose verification is under way gives no ratio as its result.

Reads a copy of the H100 unseeded study kept in the repository (its verify was
measured over several short runs), so the starts are real ones.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from autotune.tuning import StudyResults, load_study
from autotune.verify import save, stored
from tests.conftest import REPO

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


def test_a_complete_verification_gives_the_ratio(tmp_path: Path) -> None:
    folder = _copy_wanting(tmp_path, extra_starts=0)
    out = tmp_path / "record.json"
    assert study_record.main(["--study-dir", str(folder), "--label", "unseeded", "--out", str(out)]) == 0
    record = json.loads(out.read_text())["unseeded"]
    assert record["ratio"]["ratio"] > 0 and record["interim_ratio"] is None and record["ratio_missing"] is None
