"""Optimise in rounds: after each round, reshape the search space from what it taught.

A study's budget is cut into rounds (``spec.rounds.size`` trials each, a third
of the budget by default). When a round ends, ``RoundPlanner.advance`` looks
at the trials so far and decides, for the next round:

* **extend** a numeric range whose best value sits on its edge: the optimum
  may lie beyond it. The range grows by half its width (in the knob's own
  scale, so a log knob doubles) but never past the knob's hard limits, the
  range ``search_spaces/<engine>.yaml`` gives for the device.
* **freeze** (off unless ``rounds.freeze`` is set: on the recorded surfaces a
  knob frozen early was often pinned away from the best point) a knob whose
  importance (fANOVA, over the completed trials) is
  negligible: it is pinned to the best trial's value, so the sampler spends
  the remaining trials on knobs that matter. Needs enough completed trials;
  with fewer, nothing is frozen and the decision log says why.
* **enqueue** neighbours of the best trials (one knob moved one step) with
  ``Study.enqueue_trial``, as a warm start: the next round begins by probing
  around what worked instead of waiting for the sampler to find it again.

Every decision is stored with its reason in the study's user attributes
(``rounds``), so ``autotune review`` can show it, and the current shape of
the space (``rounds_space``) lives there too, so a resumed study, or another
worker, continues from it.

How the changes stay compatible with Optuna's samplers: Optuna lets an int
or float parameter change its bounds between trials (not its kind or log
scale), so a widened range is simply suggested with the new bounds. A
categorical parameter's choices may never change within a study, so
categorical knobs are never extended, only frozen or moved to a neighbouring
choice. A frozen knob is no longer suggested at all (its value is in the
trial's ``config`` attribute), which samplers treat as a parameter that left
the search space. Multivariate TPE models jointly only the parameters whose
distribution is the same in every trial, so after a range changes that knob
is sampled on its own (univariate), still from all its past observations.
Importances are computed on a copy of the trials where every knob has one
distribution, the widest it had, because Optuna's evaluators refuse a
space that changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import optuna
from optuna.trial import TrialState

from autotune.space import Knob, SearchSpace
from autotune.space.steps import apply_overrides, edge, neighbours, widened
from autotune.spec import RoundsOptions
from autotune.tuning.importance import param_importances
from autotune.tuning.records import TrialRecord, rank

ROUNDS_ATTR = "rounds"  # the decision log: [{round, decision, knob, reason}, ...]
SPACE_ATTR = "rounds_space"  # per knob: {"low": .., "high": ..} or {"fixed": value}
PLANNED_ATTR = "rounds_planned"  # the highest round planned so far
IMPORTANCE_ATTR = "rounds_importances"  # [{round, trials, importances}]
ENQUEUED_ATTR = "enqueued_by_rounds"  # on an enqueued trial: why it was enqueued

Kind = Literal["extend", "freeze", "enqueue", "keep", "skip"]
T = TypeVar("T")


@dataclass
class Decision:
    """One change to the space (or a reason for not changing it), as the log keeps it."""

    round: int
    decision: Kind
    knob: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def round_size(options: RoundsOptions, budget: int) -> int:
    return options.size or max(1, math.ceil(budget / 3))


class RoundPlanner:
    """Owns the shape of the search space across rounds, stored in the study itself.

    ``base`` is the space the study began with (the engine's space with the
    spec's ranges); ``hard`` the engine's space for this device before the
    spec narrowed it: the limits an extension may reach. ``check`` returns the
    rules a configuration breaks, so no neighbour that cannot run is enqueued.
    """

    def __init__(
        self,
        study: optuna.Study,
        base: SearchSpace,
        hard: SearchSpace,
        options: RoundsOptions,
        budget: int,
        check: Callable[[Mapping[str, Any]], list[str]] | None = None,
        compile_key: Callable[[Mapping[str, Any]], str] | None = None,
    ) -> None:
        self.study = study
        self.base = base
        self.hard = hard
        self.options = options
        self.budget = budget
        self.size = round_size(options, budget)
        self.check = check or (lambda _config: [])
        self.compile_key = compile_key or (lambda _config: "")

    # ----------------------------------------------------------------- state

    def space(self) -> SearchSpace:
        """The space of the current round: the base space with every decision so far applied."""
        return apply_overrides(self.base, self.study.user_attrs.get(SPACE_ATTR, {}))

    def decisions(self) -> list[Decision]:
        return [Decision(**d) for d in self.study.user_attrs.get(ROUNDS_ATTR, [])]

    # ----------------------------------------------------------------- rounds

    def advance(self, done: int) -> list[Decision]:
        """Plans the next round once ``done`` counted trials have closed the current one.

        Idempotent: a round is planned once, whoever (which worker, which
        resumed run) gets there first; later calls return nothing.
        """
        finished = done // self.size
        planned = int(self.study.user_attrs.get(PLANNED_ATTR, 1))
        if finished < planned or done >= self.budget:
            return []
        next_round = finished + 1
        decisions = self._plan(next_round, done)
        self.study.set_user_attr(PLANNED_ATTR, next_round)
        log = self.study.user_attrs.get(ROUNDS_ATTR, [])
        self.study.set_user_attr(ROUNDS_ATTR, log + [d.to_json() for d in decisions])
        return decisions

    def _plan(self, rnd: int, done: int) -> list[Decision]:
        space = self.space()
        overrides: dict[str, dict[str, Any]] = dict(self.study.user_attrs.get(SPACE_ATTR, {}))
        complete = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not complete:
            return [Decision(rnd, "keep", None, f"no completed trial before round {rnd}: nothing to learn from yet")]
        ranked = rank([TrialRecord.of(t) for t in complete], [d.name.lower() for d in self.study.directions])
        best = ranked[0]
        decisions: list[Decision] = []
        active = [name for name, knob in space.knobs.items() if knob.fixed is None]

        if self.options.extend:
            for name in active:
                decision = self._extend(rnd, name, space.knobs[name], best, overrides)
                if decision is not None:
                    decisions.append(decision)
        extended = {d.knob for d in decisions if d.decision == "extend"}

        # Importances order the neighbours too, so they are computed whether or not knobs may be frozen.
        importances: dict[str, float] = {}
        enough = len(complete) >= self.options.min_trials_for_importance
        if len(active) > 1 and enough:
            importances = param_importances(self.study, active)
            if importances:
                self._record_importances(rnd, len(complete), importances)
        if self.options.freeze and len(active) > 1:
            if not enough:
                decisions.append(Decision(
                    rnd, "skip", None,
                    f"importances need {self.options.min_trials_for_importance} completed trials, "
                    f"{len(complete)} so far: nothing frozen",
                ))
            elif importances:
                decisions += self._freeze(rnd, importances, best, extended, overrides)
            else:
                decisions.append(Decision(rnd, "skip", None, "importances could not be computed: nothing frozen"))

        self.study.set_user_attr(SPACE_ATTR, overrides)
        if self.options.neighbours > 0:
            # No more than the budget has room for: a neighbour queued past the last trial never runs.
            queued = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
            room = min(self.options.neighbours, self.budget - done - len(queued))
            if room > 0:
                decisions += self._enqueue_neighbours(rnd, ranked, importances, room)
        if not decisions:
            decisions.append(Decision(rnd, "keep", None, "no range edge reached, nothing to freeze"))
        return decisions

    # ----------------------------------------------------------------- extend

    def _extend(
        self, rnd: int, name: str, knob: Knob, best: TrialRecord, overrides: dict[str, dict[str, Any]]
    ) -> Decision | None:
        if knob.type not in ("int", "float") or knob.low is None or knob.high is None:
            return None
        value = best.config.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        hard = self.hard.knobs.get(name)
        hard_low = hard.low if hard is not None and hard.low is not None else knob.low
        hard_high = hard.high if hard is not None and hard.high is not None else knob.high
        # A spec may reach past the engine file's range: its own bound is then the limit.
        hard_low, hard_high = min(hard_low, knob.low), max(hard_high, knob.high)
        side = edge(knob, float(value))
        if side is None:
            return None
        shown = f"{name}={_fmt(value)}"
        where = f"best trial #{best.number} has {shown} at the {side} edge of [{_fmt(knob.low)}, {_fmt(knob.high)}]"
        low, high = widened(knob, side)
        low, high = max(low, hard_low), min(high, hard_high)
        if knob.type == "int":
            low, high = math.floor(low), math.ceil(high)
        if (side == "upper" and high <= knob.high) or (side == "lower" and low >= knob.low):
            limit = hard_high if side == "upper" else hard_low
            return Decision(rnd, "keep", name, f"{where}, which is the knob's hard limit ({_fmt(limit)})")
        overrides[name] = {"low": low, "high": high}
        return Decision(
            rnd, "extend", name,
            f"{where}; range widened to [{_fmt(low)}, {_fmt(high)}] (hard limits [{_fmt(hard_low)}, {_fmt(hard_high)}])",
        )

    # ----------------------------------------------------------------- freeze

    def _freeze(
        self,
        rnd: int,
        importances: Mapping[str, float],
        best: TrialRecord,
        extended: set[str | None],
        overrides: dict[str, dict[str, Any]],
    ) -> list[Decision]:
        decisions = []
        ordered = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)
        keep_at_least = ordered[0][0]  # never freeze every knob
        for name, share in ordered:
            if share >= self.options.freeze_below or name == keep_at_least or name in extended:
                continue
            value = best.config.get(name)
            if value is None:
                continue
            overrides[name] = {"fixed": value}
            decisions.append(Decision(
                rnd, "freeze", name,
                f"importance {share:.3f} < {self.options.freeze_below:g} (fANOVA over "
                f"{_n_trials(self.study)} completed trials); fixed at best trial #{best.number}'s value {_fmt(value)}",
            ))
        return decisions

    def _record_importances(self, rnd: int, n: int, importances: Mapping[str, float]) -> None:
        log = self.study.user_attrs.get(IMPORTANCE_ATTR, [])
        entry = {"round": rnd, "trials": n, "importances": {k: round(float(v), 4) for k, v in importances.items()}}
        self.study.set_user_attr(IMPORTANCE_ATTR, log + [entry])

    # ----------------------------------------------------------------- enqueue

    def _enqueue_neighbours(
        self, rnd: int, ranked: Sequence[TrialRecord], importances: Mapping[str, float], limit: int
    ) -> list[Decision]:
        space = self.space()
        active = [name for name, knob in space.knobs.items() if knob.fixed is None]
        # The knobs that matter most are moved first.
        active.sort(key=lambda name: importances.get(name, 0.0), reverse=True)
        fixed = {name: knob.fixed for name, knob in space.knobs.items() if knob.fixed is not None}
        seen = {_key(TrialRecord.of(t).config, active) for t in self.study.get_trials(deepcopy=False)}
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        seen |= {_key(t.system_attrs.get("fixed_params", {}), active) for t in waiting}
        chosen: list[tuple[dict[str, Any], str, str]] = []
        sources = list(ranked[: max(1, self.options.neighbours)])
        for source in sources:
            config = source.config
            if any(k not in config for k in active):
                continue
            for name in active:
                if len(chosen) >= limit:
                    break
                for value in neighbours(space.knobs[name], config[name]):
                    params = {k: config[k] for k in active}
                    params[name] = value
                    k = _key(params, active)
                    if k in seen or self.check({**fixed, **params}):
                        continue
                    seen.add(k)
                    reason = f"neighbour of trial #{source.number}: {name} {_fmt(config[name])} -> {_fmt(value)}"
                    chosen.append((params, name, reason))
                    break
        # The same neighbours, in a cheaper order: those whose graph an earlier trial compiled first (the
        # engine loads it from the compile cache instead of compiling anew: on an H100, 25-43 s of compile
        # and 11-20 s of kernel warm-up), the last trial's before the others.
        compiled, last = self._compiled_keys()
        chosen = compiled_first(chosen, lambda c: self.compile_key({**fixed, **c[0]}), compiled, last)
        decisions: list[Decision] = []
        for params, name, reason in chosen:
            self.study.enqueue_trial(params, user_attrs={ENQUEUED_ATTR: reason})
            decisions.append(Decision(rnd, "enqueue", name, reason))
        return decisions

    def _compiled_keys(self) -> tuple[set[str], str | None]:
        """The compile keys of the trials that ran, and the last one's (None before any ran)."""
        ran = sorted((t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("compile_key")),
                     key=lambda t: t.number)
        return {t.user_attrs["compile_key"] for t in ran}, (ran[-1].user_attrs["compile_key"] if ran else None)


def compiled_first(items: Sequence[T], key_of: Callable[[T], str], compiled: set[str], last: str | None) -> list[T]:
    """``items`` whose compile key is in ``compiled`` first, those with ``last`` before the others; else as given."""
    return sorted(items, key=lambda item: ((k := key_of(item)) not in compiled, k != last))


def _key(config: Mapping[str, Any], names: Sequence[str]) -> str:
    return json.dumps([config.get(n) for n in names], default=str)


def _n_trials(study: optuna.Study) -> int:
    return sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def frozen(study: optuna.Study) -> dict[str, Any]:
    """The knobs the rounds froze, at their values: in every later trial's configuration, none of its parameters."""
    return {name: o["fixed"] for name, o in study.user_attrs.get(SPACE_ATTR, {}).items() if "fixed" in o}


def decisions_of(study: optuna.Study) -> list[dict[str, Any]]:
    return list(study.user_attrs.get(ROUNDS_ATTR, []))


def importances_of(study: optuna.Study) -> list[dict[str, Any]]:
    return list(study.user_attrs.get(IMPORTANCE_ATTR, []))


def planner_for(
    study: optuna.Study,
    base: SearchSpace,
    engine: str,
    device: str,
    hardware: Mapping[str, float],
    options: RoundsOptions,
    budget: int,
    check: Callable[[Mapping[str, Any]], list[str]] | None = None,
    compile_key: Callable[[Mapping[str, Any]], str] | None = None,
) -> RoundPlanner | None:
    """The planner a study runs with, or None when rounds are off or the budget is one round."""
    if not options.enabled or round_size(options, budget) >= budget:
        return None
    hard = SearchSpace.load(engine).for_hardware(device, hardware)
    return RoundPlanner(study, base, hard, options, budget, check, compile_key)
