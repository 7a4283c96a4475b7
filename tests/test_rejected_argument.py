"""A trial whose arguments the real engine rejects is a failed trial with the
engine's own error line, and the study goes on to the next configuration."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune.space import SearchSpace
from autotune.spec import load_spec
from autotune.trial import setup_from_spec
from autotune.tuning import make_sampler, run_study, suggest

pytestmark = pytest.mark.engine


def _seed_giving(space: SearchSpace, spec_overrides: dict, wanted: list[int]) -> int:
    """A sampler seed whose first draws of block_size are `wanted` (16 rejected on CPU, then 32)."""
    for seed in range(200):
        spec = load_spec(None, {**spec_overrides, "seed": seed})
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(spec, 0))
        drawn = []
        for _ in wanted:
            trial = study.ask()
            drawn.append(suggest(trial, space)["block_size"])
            study.tell(trial, [0.0, 0.0])
        if drawn == wanted:
            return seed
    raise AssertionError("no seed draws that order")


def test_rejected_block_size_is_recorded_and_study_continues(tmp_path: Path, tiny_model: Path) -> None:
    overrides = {
        "model": "tiny",
        "max_model_len": 256,
        "study_dir": str(tmp_path / "study"),
        "sampler": "random",
        "engine": {"extra_args": ["--enforce-eager"]},  # a fast start: compiling is not what is tested
        "workload": {"prompt_tokens": 16, "output_tokens": 8, "concurrency": 2, "num_requests": 4,
                     "warmup_requests": 1},
        # vLLM's CPU attention needs a block size that is a multiple of 32: 16 is rejected by the engine.
        "space": {"block_size": {"choices": [16, 32]}, "max_num_seqs": 4, "max_num_batched_tokens": 512,
                  "kv_cache_space_gib": 1, "enable_prefix_caching": True},
        "baseline": False, "budget": {"trials": 2},
    }
    # The space as the study will see it on this machine (its CPU decides which KV dtypes are offered),
    # so that the seed found draws the same configurations there.
    space = setup_from_spec(load_spec(None, {**overrides, "hardware.device": "cpu"})).space
    seed = _seed_giving(space, overrides, [16, 32])
    spec = load_spec(None, {**overrides, "seed": seed, "hardware.device": "cpu"})
    run = run_study(spec)
    first, second = run.study.trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.params["block_size"] == 16
    assert "No common block size for 16" in first.user_attrs["reason"]
    assert Path(first.user_attrs["log_path"]).exists()
    assert second.state == optuna.trial.TrialState.COMPLETE
    assert second.params["block_size"] == 32
    assert second.user_attrs["figures"]["completed"] == 4
