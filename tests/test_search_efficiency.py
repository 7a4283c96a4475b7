"""The search-efficiency benchmark on a small slice of the recorded surface (no engine),
and ``autotune review`` on a study made with the replay objective and real SQLite storage."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import REPO, autotune_cmd

BENCH = REPO / "benchmarks" / "search_efficiency.py"
SURFACE = REPO / "benchmarks" / "data" / "surface_cpu.json"

sys.path.insert(0, str(REPO / "benchmarks"))
import search_efficiency as se  # noqa: E402


# A sub-grid recorded first (record_surface.py's --later), so it is complete even in a partial file.
SUB_GRID = {"max_num_seqs": [1, 2, 4, 8, 16]}


def small_surface(path: Path) -> Path:
    """The recorded surface cut to the first and last value of each knob: still real measurements."""
    data = json.loads(SURFACE.read_text())
    keep = {name: [spec["values"][0], spec["values"][-1]] for name, spec in data["space"].items()}
    data["space"] = {name: {**spec, "values": keep[name]} for name, spec in data["space"].items()}
    data["points"] = [p for p in data["points"] if all(p["config"][k] in keep[k] for k in keep)]
    path.write_text(json.dumps(data))
    return path


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_table_and_json_on_a_small_surface(tmp_path: Path) -> None:
    surface = small_surface(tmp_path / "small.json")
    out = tmp_path / "result.json"
    done = run_bench(
        "--surface", str(surface), "--seeds", "3", "--methods", "grid,random,tpe,rounds+tpe",
        "--target", "1.0", "--json", str(out),
    )
    assert done.returncode == 0, done.stderr
    for header in ("method", "reached", "trials to target", "engine-min to target", "trials / grid",
                   "engine-min / grid", "median"):
        assert header in done.stdout
    for method in ("grid", "random", "tpe", "rounds+tpe"):
        assert f"│ {method} " in done.stdout
    result = json.loads(out.read_text())
    n = result["grid_points"]
    assert n == 8
    grid = result["methods"]["grid"]
    # The grid walks every point, so by its last trial it has found its own best.
    assert grid["reached"] == 1 and 1 <= grid["trials"][0] <= n
    assert result["threshold"] == pytest.approx(result["best_goodput"])
    for method in ("random", "tpe", "rounds+tpe"):
        m = result["methods"][method]
        assert m["runs"] == 3 and len(m["per_seed_trials"]) == 3
        assert all(1 <= t <= n for t in m["per_seed_trials"])
        # The median column: half the seeds spent at most that share of the grid's engine time.
        share = statistics.median(m["per_seed_engine_min"]) / result["grid_engine_min"]
        assert re.search(rf"^│ {re.escape(method)} .*│ +{share:.0%} │$", done.stdout, re.M)


def test_grid_order_is_auto_tunes_and_costs_are_recorded(tmp_path: Path) -> None:
    surface = se.Surface.load(small_surface(tmp_path / "small.json"))
    order = surface.grid_order()
    first, second = surface.order[0], surface.order[1]
    # max_num_seqs outermost, then max_num_batched_tokens, as vLLM's auto_tune loops.
    assert (first, second) == ("max_num_seqs", "max_num_batched_tokens")
    assert [c[first] for c in order] == sorted([c[first] for c in order], key=surface.values[first].index)
    grid = se.run_grid(surface)
    assert grid.reached(surface.best) is not None
    assert all(c > 0 for c in grid.costs_s)


def test_incomplete_or_foreign_files_are_refused(tmp_path: Path) -> None:
    data = json.loads(small_surface(tmp_path / "small.json").read_text())
    data["points"] = data["points"][:-1]
    (tmp_path / "holed.json").write_text(json.dumps(data))
    done = run_bench("--surface", str(tmp_path / "holed.json"), "--seeds", "1")
    assert done.returncode != 0 and "not a complete grid" in done.stderr
    (tmp_path / "other.json").write_text(json.dumps({"config": {}}))
    done = run_bench("--surface", str(tmp_path / "other.json"), "--seeds", "1")
    assert done.returncode != 0 and "not a recorded grid" in done.stderr


def test_review_shows_round_decisions_and_importances(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A study on the real SQLite storage, driven by the replay objective with rounds, then `review`."""
    from autotune.environment import record
    from autotune.tuning.rounds import RoundPlanner
    from autotune.spec import RoundsOptions, StudySpec
    from autotune.tuning import open_study

    surface = se.Surface.load(SURFACE, restrict=SUB_GRID)
    study_dir = tmp_path / "replayed"
    spec = StudySpec.model_validate({
        "name": "replayed", "study_dir": str(study_dir), "slo": surface.data["slo"], "objectives": "max:goodput",
        "budget": {"trials": 12}, "hardware": {"device": "cpu"},
    })
    study = open_study(spec)
    env = record("vllm", surface.data["environment"].get("engine_version"), "cpu")
    run = se.Run("rounds+tpe", 0, [], [])
    objective = se.replay_objective(surface, run)
    planner = RoundPlanner(study, surface.space(), surface.space(), RoundsOptions(size=6, min_trials_for_importance=6, neighbours=3), 12)

    def trial_fn(trial: optuna.Trial, space: Any) -> float:
        trial.set_user_attr("environment", env)
        value = objective(trial, space)
        trial.set_user_attr("figures", {"goodput": value})
        trial.set_user_attr("slo", {spec.slo: {"violation": -1 if value > 0 else 1, "holds": value > 0}})
        return value

    for _ in range(12):
        planner.advance(len(study.trials))
        space = planner.space()
        study.optimize(lambda t: trial_fn(t, space), n_trials=1, catch=(se.ReplayFailed,))

    done = subprocess.run(
        autotune_cmd("review", str(study_dir)), capture_output=True, text=True, env=cli_env, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Round decisions" in done.stdout
    assert "Parameter importances" in done.stdout
    assert "enqueue" in done.stdout and "neighbour of trial #" in done.stdout
    for knob in surface.order:
        assert knob in done.stdout


def test_autotune_stops_a_point_below_the_incumbent_and_pays_its_start_and_one_level(tmp_path: Path) -> None:
    """autotune's own search as the study runs it: a point below the best so far fails at the incumbent's
    level and stops; Optuna sees the bound with the stopped trial's constraint, under the names every
    trial carries, so the GP sampler's next draw works."""
    from autotune.tuning.baseline import INCUMBENT_CONSTRAINT

    surface = se.Surface.load(small_surface(tmp_path / "small.json"), {})
    ranked = sorted(surface.grid_order(), key=surface.goodput)
    best, worse = ranked[-1], ranked[0]
    assert surface.goodput(worse) < surface.goodput(best)
    assert surface.stopped_cost_s(worse) < surface.cost_s(worse)
    run = se.Run("autotune", 0, [], [])
    objective = se.replay_objective(surface, run, from_incumbent=True)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GPSampler(seed=0, n_startup_trials=2))
    for config in (best, worse):
        study.enqueue_trial(config)
    space = surface.space()
    study.optimize(lambda t: objective(t, space), n_trials=3, catch=(se.ReplayFailed,))
    first, stopped = study.trials[0], study.trials[1]
    assert run.costs_s[:2] == [surface.cost_s(best), surface.stopped_cost_s(worse)]
    assert stopped.value == surface.goodput(best) and run.goodputs[1] == 0.0  # a bound, never a figure
    assert first.constraints[INCUMBENT_CONSTRAINT] < 0 < stopped.constraints[INCUMBENT_CONSTRAINT]
    assert study.trials[2].state.is_finished()  # the GP's own draw, past its startup trials
    # Without the incumbent (the other methods), every point is paid in full.
    plain = se.Run("gp", 0, [], [])
    full = se.replay_objective(surface, plain)
    other = optuna.create_study(direction="maximize")
    for config in (best, worse):
        other.enqueue_trial(config)
    other.optimize(lambda t: full(t, space), n_trials=2, catch=(se.ReplayFailed,))
    assert plain.costs_s == [surface.cost_s(best), surface.cost_s(worse)]


def test_the_table_is_the_same_on_one_core_and_on_several(tmp_path: Path) -> None:
    """The searches are seeded: spread over processes, each gives what it gives in one."""
    surface = small_surface(tmp_path / "small.json")
    results = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}.json"
        done = run_bench("--surface", str(surface), "--seeds", "2", "--methods", "tpe,gp,autotune",
                         "--target", "1.0", "--jobs", jobs, "--json", str(out))
        assert done.returncode == 0, done.stderr
        results.append(json.loads(out.read_text())["methods"])
    assert results[0] == results[1]
