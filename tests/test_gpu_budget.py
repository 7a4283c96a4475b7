"""A study's GPU-minute budget, read from what the study stored: an H100 study as it ran
(``benchmarks/data/h100/cost-after``: the defaults and 8 trials of Llama-3.1-8B's shape on vLLM)."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna

from autotune.tuning.bill import engine_time, over_gpu_budget, over_wall_time
from tests.conftest import REPO

STUDY = REPO / "benchmarks" / "data" / "h100" / "cost-after" / "study.db"


def load(tmp_path: Path) -> optuna.Study:
    shutil.copy(STUDY, tmp_path / "study.db")
    return optuna.load_study(study_name="h200-llama8b-chat", storage=f"sqlite:///{tmp_path / 'study.db'}")


def test_a_trial_starts_only_while_the_slowest_so_far_still_fits(tmp_path: Path) -> None:
    study = load(tmp_path)
    spent = engine_time(study)["total"]
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials if t.datetime_complete]
    defaults = study.user_attrs["baseline"]
    slowest = max(*walls, defaults["startup_s"] + defaults["measure_s"])  # the defaults' search went all the way
    assert 0 < slowest < spent
    assert over_gpu_budget(study, (spent + slowest) / 60) is None
    why = over_gpu_budget(study, (spent + slowest - 1) / 60)
    assert why is not None and f"{spent / 60:,.1f} of" in why and f"took {slowest / 60:,.1f}" in why
    # Two GPUs a trial: twice the GPU time, spent and to come alike.
    assert over_gpu_budget(study, 2 * (spent + slowest) / 60, gpus=2) is None
    assert over_gpu_budget(study, (spent + slowest) / 60, gpus=2) is not None


def test_before_any_trial_the_first_one_runs_and_the_defaults_count(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'new.db'}", study_name="new")
    assert over_gpu_budget(study, 0.01) is None  # nothing measured: the cost of a trial is unknown
    study.set_user_attr("baseline", {"startup_s": 100.0, "measure_s": 50.0})
    assert engine_time(study)["total"] == 150.0
    assert over_gpu_budget(study, 5.0) is None  # 150 s spent, the slowest 150 s: 300 s of 300
    assert over_gpu_budget(study, 4.9) is not None


def test_a_run_starts_no_trial_that_the_slowest_so_far_says_would_end_past_its_wall_time(tmp_path: Path) -> None:
    study = load(tmp_path)
    slowest = max(c for c in (
        *((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials if t.datetime_complete),
        study.user_attrs["baseline"]["startup_s"] + study.user_attrs["baseline"]["measure_s"]))
    assert over_wall_time(study, slowest) is None
    why = over_wall_time(study, slowest - 1)
    assert why is not None and f"took {slowest:,.0f} s" in why
    assert over_wall_time(study, -5) is not None  # past the deadline: nothing starts
    empty = optuna.create_study(storage=f"sqlite:///{tmp_path / 'new.db'}", study_name="new")
    assert over_wall_time(empty, 1.0) is None and over_wall_time(empty, 0.0) is not None
