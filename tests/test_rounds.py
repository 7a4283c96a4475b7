"""Rounds on a synthetic objective: edges extended, idle knobs frozen, neighbours enqueued.

No engine: the objective is a formula, but the study, its storage (SQLite),
samplers and importances are Optuna's own, as in a real study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from autotune.space import Knob, SearchSpace
from autotune.space.steps import neighbours
from autotune.spec import RoundsOptions
from autotune.tuning import suggest
from autotune.tuning.importance import param_importances
from autotune.tuning.rounds import (
    ENQUEUED_ATTR,
    PLANNED_ATTR,
    ROUNDS_ATTR,
    RoundPlanner,
    compiled_first,
    planner_for,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)

HARD = SearchSpace(
    engine="synthetic",
    knobs={
        "batch": Knob(type="int", low=1, high=256, log=True),
        "chunk": Knob(type="categorical", choices=[512, 1024, 2048]),
        "cache": Knob(type="bool"),
        "util": Knob(type="float", low=0.5, high=0.95),
    },
)
# The spec narrowed batch to [1, 16]: the optimum (batch=100) lies beyond it.
BASE = SearchSpace(engine="synthetic", knobs={**HARD.knobs, "batch": Knob(type="int", low=1, high=16, log=True)})


def value(config: dict[str, Any]) -> float:
    """Grows with batch up to 100, prefers chunk 1024 a little; cache and util do nothing."""
    batch = config["batch"]
    return 10 * math.log(batch) - 0.5 * max(0.0, math.log(batch / 100)) ** 2 * 10 + (1 if config["chunk"] == 1024 else 0)


def run(study: optuna.Study, planner: RoundPlanner, trials: int) -> None:
    for _ in range(trials):
        planner.advance(len(study.get_trials(states=(TrialState.COMPLETE,))))
        space = planner.space()

        def objective(trial: optuna.Trial) -> float:
            config = suggest(trial, space)
            trial.set_user_attr("config", config)
            return value(config)

        study.optimize(objective, n_trials=1)


@pytest.fixture()
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def make(storage: str, options: RoundsOptions, budget: int, seed: int = 0) -> tuple[optuna.Study, RoundPlanner]:
    study = optuna.create_study(
        study_name="rounds", storage=storage, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True),
        load_if_exists=True,
    )
    return study, RoundPlanner(study, BASE, HARD, options, budget)


def test_best_on_an_edge_widens_the_range_within_the_hard_limit(storage: str) -> None:
    study, planner = make(storage, RoundsOptions(size=5, freeze=False, neighbours=0), budget=20)
    run(study, planner, 20)
    log = study.user_attrs[ROUNDS_ATTR]
    extended = [d for d in log if d["decision"] == "extend" and d["knob"] == "batch"]
    assert extended, log
    assert "upper edge" in extended[0]["reason"] and "hard limits [1, 256]" in extended[0]["reason"]
    space = planner.space().knobs["batch"]
    assert space.high is not None and 16 < space.high <= 256
    # Later trials sampled the widened range: Optuna accepted the new bounds.
    assert max(t.params["batch"] for t in study.trials) > 16
    # Only numeric knobs grow: Optuna never lets categorical choices change.
    assert not [d for d in log if d["decision"] == "extend" and d["knob"] == "chunk"]


def test_edge_at_the_hard_limit_is_kept_with_its_reason(storage: str) -> None:
    base = SearchSpace(engine="synthetic", knobs={**HARD.knobs, "batch": Knob(type="int", low=1, high=256, log=True)})
    study = optuna.create_study(storage=storage, direction="maximize")
    study.enqueue_trial({"batch": 256, "chunk": 1024, "cache": True, "util": 0.7})
    study.optimize(lambda t: value(suggest(t, base)), n_trials=1)
    planner = RoundPlanner(study, base, HARD, RoundsOptions(size=1, freeze=False, neighbours=0), budget=5)
    decisions = planner.advance(1)
    assert [d.decision for d in decisions] == ["keep"]
    assert "hard limit (256)" in decisions[0].reason
    assert planner.space().knobs["batch"].high == 256


def test_a_spec_range_past_the_engine_file_is_its_own_limit(storage: str) -> None:
    """A spec that widened batch to 512 (past the file's 256) keeps 512 and names 512, not 256."""
    base = SearchSpace(engine="synthetic", knobs={**HARD.knobs, "batch": Knob(type="int", low=64, high=512, log=True)})
    study = optuna.create_study(storage=storage, direction="maximize")
    study.enqueue_trial({"batch": 512, "chunk": 1024, "cache": True, "util": 0.7})
    study.optimize(lambda t: value(suggest(t, base)), n_trials=1)
    planner = RoundPlanner(study, base, HARD, RoundsOptions(size=1, freeze=False, neighbours=0), budget=5)
    decisions = planner.advance(1)
    assert [d.decision for d in decisions] == ["keep"]
    assert "hard limit (512)" in decisions[0].reason
    assert planner.space().knobs["batch"].high == 512


def test_a_knob_with_no_effect_is_frozen_and_no_longer_sampled(storage: str) -> None:
    options = RoundsOptions(size=10, extend=False, freeze=True, neighbours=0, min_trials_for_importance=8)
    study, planner = make(storage, options, budget=20)
    run(study, planner, 20)
    frozen = {d["knob"]: d for d in study.user_attrs[ROUNDS_ATTR] if d["decision"] == "freeze"}
    assert "cache" in frozen or "util" in frozen, study.user_attrs[ROUNDS_ATTR]
    assert "batch" not in frozen  # the knob that drives the objective stays free
    for name, d in frozen.items():
        assert "importance" in d["reason"]
        pinned = planner.space().knobs[name].fixed
        assert pinned is not None
        late = [t for t in study.trials if t.number >= 10]
        assert all(name not in t.params for t in late)  # not suggested any more
        assert all(t.user_attrs["config"][name] == pinned for t in late)  # but recorded in the config


def test_too_few_trials_freezes_nothing_and_says_why(storage: str) -> None:
    study, planner = make(storage, RoundsOptions(size=3, extend=False, freeze=True, neighbours=0), budget=9)
    run(study, planner, 4)
    log = study.user_attrs[ROUNDS_ATTR]
    assert [d["decision"] for d in log] == ["skip"]
    assert "need 8 completed trials, 3 so far" in log[0]["reason"]
    assert all(k.fixed is None for k in planner.space().knobs.values())


def test_neighbours_of_the_best_are_enqueued_and_run_first(storage: str) -> None:
    study, planner = make(storage, RoundsOptions(size=4, extend=False, freeze=False, neighbours=3), budget=12)
    run(study, planner, 4)
    best = max(study.trials, key=lambda t: t.value)
    decisions = planner.advance(4)
    enqueued = [d for d in decisions if d.decision == "enqueue"]
    assert len(enqueued) == 3
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 3
    for t in waiting:
        params = t.system_attrs["fixed_params"]  # what enqueue_trial stored for the trial to run
        changed = [k for k in params if params[k] != best.params[k]]
        assert len(changed) == 1  # one knob moved one step
        assert t.user_attrs[ENQUEUED_ATTR].startswith(f"neighbour of trial #{best.number}")
    run(study, planner, 3)  # the next three trials are the enqueued ones
    assert all(t.user_attrs.get(ENQUEUED_ATTR) for t in study.trials[4:7])


def test_no_more_neighbours_than_the_budget_has_room_for(storage: str) -> None:
    """A neighbour queued past the budget's last trial would never run: it is not queued."""
    study, planner = make(storage, RoundsOptions(size=2, extend=False, freeze=False, neighbours=4), budget=5)
    run(study, planner, 2)
    enqueued = [d for d in planner.advance(2) if d.decision == "enqueue"]
    assert len(enqueued) == 3  # 5 - 2 done
    run(study, planner, 2)
    assert [d for d in planner.advance(4) if d.decision == "enqueue"] == []  # one enqueued trial still waits
    run(study, planner, 1)
    assert len(study.trials) == 5 and not study.get_trials(states=(TrialState.WAITING,))


def test_rounds_are_planned_once_and_survive_reopening(storage: str) -> None:
    options = RoundsOptions(size=4, neighbours=1)
    study, planner = make(storage, options, budget=12)
    run(study, planner, 5)
    before = list(study.user_attrs[ROUNDS_ATTR])
    assert planner.advance(5) == []  # round 2 is already planned
    again, planner2 = make(storage, options, budget=12)
    assert again.user_attrs[PLANNED_ATTR] == 2
    assert planner2.advance(5) == []
    assert again.user_attrs[ROUNDS_ATTR] == before


def test_importances_survive_a_space_that_changed(storage: str) -> None:
    study, planner = make(storage, RoundsOptions(size=6, neighbours=0, freeze=False), budget=18)
    run(study, planner, 18)
    assert any(d["decision"] == "extend" for d in study.user_attrs[ROUNDS_ATTR])
    # Optuna's own evaluators refuse it; ours gives every knob one distribution.
    importances = param_importances(study)
    assert set(importances) == {"batch", "chunk", "cache", "util"}
    assert max(importances, key=importances.get) == "batch"


def test_neighbour_steps() -> None:
    assert neighbours(Knob(type="bool"), True) == [False]
    assert neighbours(Knob(type="categorical", choices=[1, 2, 4]), 2) == [4, 1]
    assert neighbours(Knob(type="categorical", choices=[1, 2, 4]), 4) == [2]
    up, down = neighbours(Knob(type="int", low=1, high=256, log=True), 16)
    assert (up, down) == (32, 8)  # an eighth of the range in log scale: a factor 2
    assert neighbours(Knob(type="int", low=1, high=4), 4) == [3]


def test_no_planner_when_rounds_are_off_or_one_round_fills_the_budget(storage: str) -> None:
    study = optuna.create_study(storage=storage, direction="maximize")
    args = (study, BASE, "vllm", "cpu", {"gpu_count": 1.0})
    assert planner_for(*args, RoundsOptions(enabled=False), 12) is None
    assert planner_for(*args, RoundsOptions(size=12), 12) is None
    planner = planner_for(*args, RoundsOptions(), 12)
    assert planner is not None and planner.size == 4


def test_neighbours_sharing_the_last_compiled_graph_run_first_and_the_set_is_unchanged(tmp_path: Path) -> None:
    """Moving ``chunk`` recompiles the engine's graph (its compile key is the chunk); the others do not."""
    options = RoundsOptions(size=4, extend=False, freeze=False, neighbours=3)

    def planned(name: str, key: Any) -> tuple[list[dict[str, Any]], Any]:
        storage = f"sqlite:///{tmp_path / f'{name}.db'}"
        study = optuna.create_study(study_name="rounds", storage=storage, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4, multivariate=True))
        planner = RoundPlanner(study, BASE, HARD, options, 12, compile_key=key)

        def objective(trial: optuna.Trial) -> float:
            config = suggest(trial, planner.space())
            trial.set_user_attr("config", config)
            if key is not None:  # what a trial stores: the key of the configuration that ran
                trial.set_user_attr("compile_key", key(config))
            return value(config)

        study.optimize(objective, n_trials=4)
        planner.advance(4)
        waiting = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))]
        return waiting, [t.user_attrs["config"]["chunk"] for t in study.trials[:4]]

    plain, _ = planned("plain", None)
    keyed, chunks = planned("keyed", lambda config: str(config["chunk"]))
    assert sorted(map(str, plain)) == sorted(map(str, keyed))  # the same neighbours: the search is not bent
    assert len(keyed) == 3
    # Those whose graph a trial compiled come first, the last trial's before the others'.
    ranks = [(p["chunk"] in chunks, p["chunk"] == chunks[-1]) for p in keyed]
    assert ranks == sorted(ranks, reverse=True)
    assert len(set(ranks)) > 1, ranks  # more than one kind was there to order


def test_a_graph_any_earlier_trial_compiled_counts_not_only_the_last() -> None:
    """The compile cache keeps every graph a trial compiled on the machine, not only the last one's."""
    keys = ["new", "early", "last", "new2", "early"]
    order = compiled_first(list(range(5)), lambda i: keys[i], {"early", "last"}, "last")
    assert [keys[i] for i in order] == ["last", "early", "early", "new", "new2"]
    assert order == [2, 1, 4, 0, 3]  # otherwise in the order given
    assert compiled_first([0, 1], lambda i: keys[i], set(), None) == [0, 1]  # nothing compiled yet


def test_losers_stopped_at_the_incumbent_rank_below_the_trials_that_held_it() -> None:
    """A goodput study: every trial that held the incumbent's rate read it and no more, and the trials
    with few sequences were stopped there with the incumbent's rate as their bound. The knob that made
    them lose is the one that matters, not nothing."""
    study = optuna.create_study(direction="maximize")
    dists = {"max_num_seqs": optuna.distributions.IntDistribution(1, 256),
             "block_size": optuna.distributions.CategoricalDistribution([16, 32])}
    held = [(128, 16), (200, 32), (256, 16), (160, 32), (224, 16), (96, 32)]
    stopped = [(2, 16), (4, 32), (8, 16)]
    for (seqs, block), feasible in [*((p, True) for p in held), *((p, False) for p in stopped)]:
        study.add_trial(optuna.trial.create_trial(
            params={"max_num_seqs": seqs, "block_size": block}, distributions=dists, value=19.0,
            user_attrs={"feasible": feasible}))
    importances = param_importances(study)
    assert max(importances, key=importances.get) == "max_num_seqs"
    assert importances["max_num_seqs"] > importances["block_size"]
