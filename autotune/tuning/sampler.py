"""Which sampler proposes the next configuration, and how a configuration is asked of it."""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import optuna
from optuna.trial import Trial

from autotune.space import Knob, SearchSpace
from autotune.spec import StudySpec
from autotune.tuning.no_repeat import NoRepeatSampler
from autotune.tuning.rounds import frozen

__all__ = ["make_sampler", "optuna_sampler", "suggest"]


def make_sampler(
    spec: StudySpec,
    offset: int,
    *,
    distributed: bool = False,
    key: Callable[[Mapping[str, Any]], Hashable] | None = None,
) -> optuna.samplers.BaseSampler:
    """The study's sampler: Optuna's, and for GP and TPE a proposal that repeats a trial is drawn again.

    GP and TPE propose from a model, which brings them back to the incumbent
    (``autotune.tuning.no_repeat``). Random search proposes nothing to judge:
    each parameter is drawn on its own, a repeat is chance and rare. NSGA-II
    mutates most children after proposing them (a mutated parameter is drawn
    on its own), so its proposals are seldom whole configurations; it runs as
    Optuna publishes it. ``key``: what makes two configurations the same, for
    a space coarser than its parameters (the replay's grid).
    """
    seed = _seed(spec, offset, distributed)
    sampler = _configured(spec, seed, distributed)
    if spec.sampler in ("random", "nsga2"):
        return sampler
    # Another stream than the inner sampler's own random draws, which start from the same seed.
    return NoRepeatSampler(sampler, seed=seed + 1, key=key, pinned=frozen)


def optuna_sampler(spec: StudySpec, offset: int, *, distributed: bool = False) -> optuna.samplers.BaseSampler:
    """Optuna's sampler as the study configures it, repeats allowed: what the benchmarks compare against."""
    return _configured(spec, _seed(spec, offset, distributed), distributed)


def _seed(spec: StudySpec, offset: int, distributed: bool) -> int:
    """A resumed study must not replay the first run's draws: the seed is shifted by the trials that exist.

    Workers that start together see the same count, so each adds its own salt.
    """
    return spec.seed + offset + (secrets.randbelow(2**20) * 1000 if distributed else 0)


def _configured(spec: StudySpec, seed: int, distributed: bool) -> optuna.samplers.BaseSampler:
    """GP by default (chosen on benchmarks/search_efficiency.py); TPE with a constant liar for workers."""
    startup = max(3, min(10, spec.budget.trials // 3))
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, spec.budget.trials // 3))
    # Workers sharing a study need TPE's constant liar, which GPSampler lacks: they would all sample one spot.
    if spec.sampler == "gp" and not distributed and _gp_available():
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=distributed)


def _gp_available() -> bool:
    """GPSampler needs torch and scipy; without them (an endpoint-only install) TPE stands in."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "scipy"))


def suggest(trial: Trial, space: SearchSpace) -> dict[str, Any]:
    return {name: _suggest_one(trial, name, knob) for name, knob in space.knobs.items()}


def _suggest_one(trial: Trial, name: str, knob: Knob) -> Any:
    if knob.fixed is not None:
        return knob.fixed
    if knob.type == "bool":
        return trial.suggest_categorical(name, [False, True])
    if knob.type == "categorical":
        return trial.suggest_categorical(name, list(knob.choices or []))
    if knob.type == "int":
        step = int(knob.step or 1)
        return trial.suggest_int(name, int(knob.low or 0), int(knob.high or 0), step=step, log=knob.log)
    return trial.suggest_float(name, float(knob.low or 0), float(knob.high or 0), step=knob.step, log=knob.log)
