"""Measure no configuration twice: a sampler's proposal that repeats a trial is replaced by a random one.

A trial costs an engine start and a goodput search, and measuring a
configuration again teaches the study little. The GP sampler goes back to
its incumbent nonetheless: a trial stopped below the incumbent reads as the
incumbent's value with a violated constraint, so the only region its
feasibility model trusts is the incumbent's own (in one replay, 29 of 36
trials were one configuration). The guard sits between Optuna and the
sampler, so the sampler still sees every trial; only a repeated proposal is
replaced, by a random draw from the same space that repeats nothing, the
exploration the repeat would have cost.

Enqueued trials (``Study.enqueue_trial``: the rounds' neighbours, the spec's
list, retries) are left alone: their parameters are deliberate, and a
partly enqueued trial keeps the sampler's proposal for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

__all__ = ["REDRAWN_ATTR", "NoRepeatSampler", "same_value"]

REDRAWN_ATTR = "redrawn"  # on a trial whose proposal repeated an earlier one: which one, and by whom
MEASURED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


class NoRepeatSampler(optuna.samplers.BaseSampler):
    """``inner`` with its repeated proposals drawn again at random.

    ``key`` maps a configuration's parameters to what makes two of them the
    same (the replay snaps them to its grid); without it, categorical and
    integer values must be equal and floats within ``tolerance`` of their
    range (in log scale for a log range), since a float a hair away from a
    measured one measures the same thing. ``pinned`` gives the values the
    study fixes outside Optuna's parameters (knobs the rounds froze): later
    trials lack them, earlier ones may have had other values, and the space
    Optuna infers may still hold them, so a proposal's own value is not used.
    """

    def __init__(
        self,
        inner: optuna.samplers.BaseSampler,
        *,
        seed: int | None = None,
        key: Callable[[Mapping[str, Any]], Hashable] | None = None,
        pinned: Callable[[Study], Mapping[str, Any]] | None = None,
        tolerance: float = 0.01,
        tries: int = 100,
    ) -> None:
        self.inner = inner
        self.key = key
        self.pinned = pinned
        self.tolerance = tolerance
        self.tries = tries
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        proposal = self.inner.sample_relative(study, trial, search_space)
        # An empty or partial proposal leaves the rest to independent draws: there is no whole configuration to judge.
        if not proposal or proposal.keys() != search_space.keys() or "fixed_params" in trial.system_attrs:
            return proposal
        pinned = dict(self.pinned(study)) if self.pinned is not None else {}
        measured = [(t.number, {**pinned, **t.params}, t.distributions)
                    for t in study.get_trials(deepcopy=False, states=MEASURED) if t.number != trial.number]
        # A pinned knob takes its pinned value: the space Optuna infers may still hold it as a parameter.
        repeated = self._repeated({**proposal, **pinned}, measured, search_space)
        if repeated is None:
            return proposal
        for _ in range(self.tries):
            draw = {name: self._random.sample_independent(study, trial, name, dist)
                    for name, dist in search_space.items()}
            if self._repeated({**draw, **pinned}, measured, search_space) is None:
                note = (f"{type(self.inner).__name__} proposed trial #{repeated}'s configuration again; "
                        "drawn at random instead")
                study._storage.set_trial_user_attr(trial._trial_id, REDRAWN_ATTR, note)
                trial.user_attrs[REDRAWN_ATTR] = note  # the running Trial reads its attributes from this copy
                return draw
        return proposal  # every draw repeats: the space is spent, and a repeat is all there is left

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
        self._random.reseed_rng()

    def _repeated(
        self,
        candidate: Mapping[str, Any],
        measured: Sequence[tuple[int, Mapping[str, Any], Mapping[str, BaseDistribution]]],
        search_space: Mapping[str, BaseDistribution],
    ) -> int | None:
        """The number of the first trial ``candidate`` repeats, or None."""
        key = self.key(candidate) if self.key is not None else None
        for number, params, dists in measured:
            if params.keys() != candidate.keys():
                continue  # another set of knobs is another configuration
            if self.key is not None:
                same = self.key(params) == key
            else:
                same = all(same_value(candidate[n], params[n], search_space.get(n) or dists.get(n), self.tolerance)
                           for n in candidate)
            if same:
                return number
        return None


def same_value(a: Any, b: Any, dist: BaseDistribution | None, tolerance: float) -> bool:
    """Floats within ``tolerance`` of their range (log scale for a log one); anything else equal."""
    if isinstance(dist, FloatDistribution) and not isinstance(a, bool) and not isinstance(b, bool):
        scale = math.log if dist.log else float
        return abs(scale(a) - scale(b)) <= tolerance * (scale(dist.high) - scale(dist.low))
    return bool(a == b)
