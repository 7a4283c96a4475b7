"""The Optuna loop: sample a configuration, run the trial, report it back.

Objectives are the study's directions; SLOs are Optuna constraints
(``Trial.set_constraint``), so the samplers steer toward feasible
configurations and ``best_trials`` is the feasible Pareto front. Every raw
figure goes into the trial's user attributes. The storage lives in the study
folder, so running the same command again resumes: finished trials stay,
the budget counts them, and the sampler continues from what it has seen.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from autotune.engines import get_engine
from autotune.environment import detect_device, record
from autotune.errors import UserError
from autotune.models.resolve import resolve_model
from autotune.search_space import Knob, SearchSpace
from autotune.slo import Constraint, Objective
from autotune.spec import StudySpec
from autotune.trial import TrialOutcome, TrialSetup, run_trial

SPEC_ATTR = "autotune_spec"


class StudyReporter(Protocol):
    """What the study tells whoever watches it (the CLI draws it with rich)."""

    def study_opened(self, spec: StudySpec, done: int, total: int) -> None: ...
    def trial_started(self, number: int, config: dict[str, Any]) -> None: ...
    def trial_status(self, message: str) -> None: ...
    def requests_progress(self, done: int, total: int) -> None: ...
    def trial_finished(self, number: int, outcome: TrialOutcome, feasible: bool | None) -> None: ...


class _Silent:
    def study_opened(self, spec: StudySpec, done: int, total: int) -> None: ...
    def trial_started(self, number: int, config: dict[str, Any]) -> None: ...
    def trial_status(self, message: str) -> None: ...
    def requests_progress(self, done: int, total: int) -> None: ...
    def trial_finished(self, number: int, outcome: TrialOutcome, feasible: bool | None) -> None: ...


class TrialFailed(Exception):
    """Raised inside the objective so that Optuna records FAIL and the study goes on."""


@dataclass
class StudyRun:
    spec: StudySpec
    setup: TrialSetup
    study: optuna.Study
    constraints: list[Constraint]
    objectives: list[Objective]
    environment: dict[str, Any]


def make_setup(spec: StudySpec) -> TrialSetup:
    device = spec.hardware.device if spec.hardware.device != "auto" else detect_device()
    engine = get_engine(spec.engine.name)
    hardware = {"gpu_count": float(spec.hardware.gpu_count if device == "cuda" else 1)}
    space = SearchSpace.load(engine.name).for_hardware(device, hardware).with_overrides(spec.space)
    model = resolve_model(spec.model, max_model_len=spec.max_model_len)
    return TrialSetup(
        engine=engine,
        space=space,
        model=model,
        workload=spec.workload,
        device=device,
        hardware=hardware,
        host=spec.engine.host,
        startup_timeout_s=spec.engine.startup_timeout_s,
        extra_args=list(spec.engine.extra_args),
        extra_env=dict(spec.engine.env),
        launch_template=spec.engine.launch_template,
        constraints=spec.constraints,
        goodput=spec.goodput,
        api_key=os.environ.get(spec.engine.api_key_env) if spec.engine.api_key_env else None,
    )


def make_sampler(spec: StudySpec, offset: int) -> optuna.samplers.BaseSampler:
    # A resumed study must not replay the first run's draws: shift the seed by what exists.
    seed = spec.seed + offset
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, spec.budget.trials // 3))
    startup = max(3, min(10, spec.budget.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def open_study(spec: StudySpec, *, sampler_offset: int | None = None) -> optuna.Study:
    assert spec.study_dir is not None
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(spec.storage_url, heartbeat_interval=30, grace_period=120)
    directions = [o.direction for o in spec.objective_list]
    existing = _existing_trials(storage, spec.name)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=directions,
        sampler=make_sampler(spec, existing if sampler_offset is None else sampler_offset),
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"study {spec.name!r} exists with other objectives; choose another --name")
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    elif stored.get("objectives") != spec.objectives:
        raise UserError(
            f"study {spec.name!r} exists with objectives {stored.get('objectives')!r}; choose another --name"
        )
    return study


def _existing_trials(storage: optuna.storages.BaseStorage, name: str | None) -> int:
    try:
        study_id = storage.get_study_id_from_name(name or "")
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def counted(trial: FrozenTrial) -> bool:
    """A trial that spent engine time and finished, one way or the other, counts against the budget."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "failed"


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


def run_study(spec: StudySpec, reporter: StudyReporter | None = None) -> StudyRun:
    reporter = reporter or _Silent()
    setup = make_setup(spec)
    study = open_study(spec)
    env = record(setup.engine.name, setup.engine.version(), setup.device)
    run = StudyRun(spec, setup, study, spec.constraints, spec.objective_list, env)
    assert spec.study_dir is not None
    budget, deadline = spec.budget.trials, _deadline(spec)
    attempts = 0
    reporter.study_opened(spec, _done(study), budget)
    while _done(study) < budget and attempts < budget * 10:
        if deadline is not None and time.monotonic() > deadline:
            break
        attempts += 1
        study.optimize(lambda t: _objective(run, t, reporter), n_trials=1, catch=(TrialFailed,))
    return run


def _done(study: optuna.Study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def _deadline(spec: StudySpec) -> float | None:
    return time.monotonic() + spec.budget.wall_time_s if spec.budget.wall_time_s else None


def _objective(run: StudyRun, trial: Trial, reporter: StudyReporter) -> list[float]:
    try:
        config = suggest(trial, run.setup.space)
    except ValueError as e:  # Optuna refuses a knob whose range changed within one study
        trial.set_user_attr("reason", f"search space changed: {e}")
        raise UserError(
            f"the search space changed since study {run.spec.name!r} began ({e}); start a new one with --name"
        ) from None
    assert run.spec.study_dir is not None
    trial_dir = run.spec.study_dir / "trials" / f"{trial.number:04d}"
    trial.set_user_attr("config", config)
    trial.set_user_attr("environment", run.environment)
    trial.set_user_attr("model_source", run.setup.model.source)
    reporter.trial_started(trial.number, config)
    try:
        outcome = run_trial(
            run.setup, config, trial_dir, status=reporter.trial_status, progress=reporter.requests_progress
        )
    except KeyboardInterrupt:
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("reason", "interrupted by the user")
        raise
    _record(trial, outcome, trial_dir)
    if outcome.status == "infeasible":
        reporter.trial_finished(trial.number, outcome, None)
        raise optuna.TrialPruned(outcome.reason)
    if outcome.status != "ok":
        reporter.trial_finished(trial.number, outcome, None)
        raise TrialFailed(outcome.reason)
    values = [o.value(outcome.figures) for o in run.objectives]
    if any(math.isnan(v) for v in values):
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("reason", "an objective could not be computed (no completed request)")
        reporter.trial_finished(trial.number, outcome, None)
        raise TrialFailed("objective is NaN")
    violations = {c.text: c.violation(outcome.figures, outcome.per_request) for c in run.constraints}
    for text, violation in violations.items():
        trial.set_constraint(text, violation)
    trial.set_user_attr("slo", {text: {"violation": v, "holds": v <= 0} for text, v in violations.items()})
    feasible = all(v <= 0 for v in violations.values())
    trial.set_user_attr("feasible", feasible)
    reporter.trial_finished(trial.number, outcome, feasible)
    return values


def _record(trial: Trial, outcome: TrialOutcome, trial_dir: Path) -> None:
    trial.set_user_attr("status", outcome.status)
    trial.set_user_attr("trial_dir", str(trial_dir.resolve()))
    if outcome.reason:
        trial.set_user_attr("reason", outcome.reason)
    if outcome.figures:
        trial.set_user_attr("figures", _finite(outcome.figures))
    for key in ("command", "config_file", "env", "log_path", "startup_s", "measure_s", "goodput"):
        value = getattr(outcome, key)
        if value is not None:
            trial.set_user_attr(key, value)


def _finite(figures: dict[str, float]) -> dict[str, float | None]:
    # Optuna stores user attributes as JSON; NaN is not JSON.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in figures.items()}


def load_study(study_dir: Path) -> tuple[optuna.Study, StudySpec]:
    """Opens a finished or running study from its folder, for review and reports."""
    db = study_dir / "study.db"
    if not db.exists():
        raise UserError(f"no study in {study_dir} (no study.db)")
    url = f"sqlite:///{db.resolve()}"
    names = optuna.get_all_study_names(url)
    if not names:
        raise UserError(f"no study in {db}")
    study = optuna.load_study(study_name=names[0], storage=url)
    spec = StudySpec.model_validate(study.user_attrs[SPEC_ATTR])
    return study, spec


def trial_summary(trial: FrozenTrial) -> dict[str, Any]:
    return json.loads(json.dumps(dict(trial.user_attrs), default=str))
