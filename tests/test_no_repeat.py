"""The sampler measures no configuration twice: on a replayed surface, with enqueued trials, with floats."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from autotune.spec import StudySpec
from autotune.tuning.no_repeat import REDRAWN_ATTR, NoRepeatSampler
from autotune.tuning.rounds import SPACE_ATTR, frozen
from autotune.tuning.sampler import make_sampler, optuna_sampler
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import search_efficiency as se  # noqa: E402

SURFACE = REPO / "benchmarks" / "data" / "surface_cpu.json"


class Proposes(optuna.samplers.BaseSampler):
    """Proposes the same parameters every time: the GP's habit at its incumbent, without the GP."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False))

    def sample_relative(self, study: Study, trial: FrozenTrial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {name: self.params[name] for name in space}

    def sample_independent(self, study: Study, trial: FrozenTrial, name: str, dist: BaseDistribution) -> Any:
        return self.params[name]


def _study(sampler: optuna.samplers.BaseSampler, *enqueued: Mapping[str, Any]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in enqueued:
        study.enqueue_trial(dict(params))
    return study


def _xy(trial: optuna.Trial, x: FloatDistribution = FloatDistribution(0.0, 1.0)) -> float:
    trial.suggest_float("x", x.low, x.high, log=x.log)
    return trial.suggest_float("y", 0.0, 1.0)


def test_on_a_replayed_surface_the_gp_repeats_a_configuration_and_the_study_sampler_does_not() -> None:
    """autotune's own search: points below the incumbent stop there and read as the incumbent's bound."""
    surface = se.Surface.load(SURFACE)
    spec = StudySpec.model_validate({"sampler": "gp", "seed": 3, "budget": {"trials": 12}})
    startup = 4  # make_sampler's for 12 trials: the random draws before the GP's, not the GP's proposals

    def repeats(sampler: optuna.samplers.BaseSampler) -> tuple[int, optuna.Study]:
        objective = se.replay_objective(surface, se.Run("autotune", 3, [], []), from_incumbent=True)
        study = _study(sampler)
        space = surface.space()
        study.optimize(lambda t: objective(t, space), n_trials=12, catch=(se.ReplayFailed,))
        points = [surface.point_key(t.params) for t in study.trials]
        return sum(p in points[:i] for i, p in enumerate(points) if i >= startup), study

    plain, _ = repeats(optuna_sampler(spec, 0))
    guarded, study = repeats(make_sampler(spec, 0, key=surface.point_key))
    assert plain > 0
    assert guarded == 0
    redrawn = [t for t in study.trials if REDRAWN_ATTR in t.user_attrs]
    assert redrawn and all("GPSampler proposed trial #" in t.user_attrs[REDRAWN_ATTR] for t in redrawn)


def test_enqueued_trials_keep_their_parameters_even_when_they_repeat() -> None:
    seen = {"x": 0.5, "y": 0.5}
    study = _study(NoRepeatSampler(Proposes(seen), seed=0), seen, {"x": 0.5}, seen)
    study.optimize(_xy, n_trials=4)
    first, partly, fully, sampled = study.trials
    # Enqueued in part or in whole: the configuration runs as enqueued, the sampler's proposal fills the rest.
    assert partly.params == fully.params == first.params == seen
    assert REDRAWN_ATTR not in partly.user_attrs and REDRAWN_ATTR not in fully.user_attrs
    # The sampler's own trial, proposing the same again, is drawn elsewhere.
    assert sampled.params != seen and "trial #0" in sampled.user_attrs[REDRAWN_ATTR]


@pytest.mark.parametrize("log, measured, near, far", [
    (False, 0.5, 0.5 + 0.004, 0.5 + 0.02),  # within 1% of the range [0, 1], and two
    (True, 100.0, 105.0, 110.0),  # log scale over [1, 1000]: 0.7% and 1.4% of log(1000)
])
def test_a_float_within_a_hundredth_of_its_range_is_the_same_configuration(
    log: bool, measured: float, near: float, far: float
) -> None:
    x = FloatDistribution(1.0, 1000.0, log=True) if log else FloatDistribution(0.0, 1.0)
    for proposed, repeat in ((near, True), (far, False)):
        study = _study(NoRepeatSampler(Proposes({"x": proposed, "y": 0.5}), seed=0), {"x": measured, "y": 0.5})
        study.optimize(lambda t: _xy(t, x), n_trials=2)
        second = study.trials[1]
        assert (REDRAWN_ATTR in second.user_attrs) is repeat
        assert (second.params["x"] != proposed) is repeat


def test_a_knob_the_rounds_froze_is_part_of_the_configuration() -> None:
    """A frozen knob is no parameter of later trials: a proposal is judged with its frozen value, and so
    is a trial run after the freeze."""

    def only_y(trial: optuna.Trial) -> float:
        return trial.suggest_float("y", 0.0, 1.0)

    for frozen_x, repeat in ((0.5, True), (0.9, False)):
        # The first trial after the freeze still has x in the space Optuna infers: the proposal's x is not used.
        study = _study(NoRepeatSampler(Proposes({"x": 0.7, "y": 0.5}), seed=0, pinned=frozen), {"x": 0.5, "y": 0.5})
        study.optimize(_xy, n_trials=1)
        study.set_user_attr(SPACE_ATTR, {"x": {"fixed": frozen_x}})
        study.optimize(only_y, n_trials=2)
        first, second = study.trials[1:]
        assert (REDRAWN_ATTR in first.user_attrs) is repeat
        # Then the proposal repeats trial #0 (x 0.5) or trial #1 (x 0.9 and the proposal's y).
        assert f"trial #{0 if repeat else 1}'s" in second.user_attrs[REDRAWN_ATTR]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
