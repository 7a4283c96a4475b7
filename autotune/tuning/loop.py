"""The Optuna loop: sample a configuration, run the trial, report it back.

Objectives are the study's directions; SLOs are Optuna constraints
(``Trial.set_constraint``), so the samplers steer toward feasible
configurations and ``best_trials`` is the feasible Pareto front. Every raw
figure goes into the trial's user attributes (``autotune.tuning.records``).
The storage lives in the study folder, so running the same command again
resumes: finished trials stay, the budget counts them, and the sampler
continues from what it has seen.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Protocol

import optuna
from optuna.trial import Trial

from autotune.cost import cost_figures
from autotune.engines.device_lock import devices_of, holding
from autotune.environment import record
from autotune.errors import UserError, one_line, root_cause_line
from autotune.folders import check_folder, make_folder
from autotune.spec import Constraint, Objective, StudySpec
from autotune.trial import TrialOutcome, TrialSetup, check, run_trial, setup_from_spec
from autotune.trial.setup import check_values, require_launchable
from autotune.tuning.baseline import goodput_reference, incumbent_violation, measure_baseline
from autotune.tuning.bill import over_gpu_budget, over_wall_time
from autotune.tuning.budget import BudgetState, budget_state, done, over_budget, worker_id
from autotune.tuning.failfast import StartFailures
from autotune.tuning.no_repeat import REDRAWN_ATTR
from autotune.tuning.quality_cache import quality_hook
from autotune.tuning.records import mark_started, mark_status, record_outcome, record_slo
from autotune.tuning.rounds import planner_for
from autotune.tuning.sampler import make_sampler, suggest
from autotune.tuning.storage import (
    SPEC_ATTR, existing_trials, fail_stale, make_storage, opening, retry_of, spec_for_storage, wait_for_storage,
)

__all__ = ["StudyReporter", "StudyRun", "open_study", "run_study"]


class StudyReporter(Protocol):
    """What the study tells whoever watches it (the CLI draws it with rich)."""

    def study_opened(self, spec: StudySpec, done: int, total: int) -> None: ...
    def trial_started(self, number: int, config: dict[str, Any]) -> None: ...
    def trial_status(self, message: str) -> None: ...
    def requests_progress(self, done: int, total: int) -> None: ...
    def trial_finished(self, number: int, outcome: TrialOutcome, feasible: bool | None) -> None: ...


class _Silent:
    """A reporter that tells no one: every method of ``StudyReporter`` does nothing."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *_args, **_kwargs: None


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


def open_study(
    spec: StudySpec, *, sampler_offset: int | None = None, distributed: bool = False, setup: TrialSetup | None = None
) -> optuna.Study:
    """Creates the study, or opens it to resume; refuses one that exists with other objectives."""
    assert spec.study_dir is not None
    check_folder(spec.study_dir, "study folder")
    if spec.enqueue:  # a bad entry is refused before anything is written
        space = (setup or setup_from_spec(spec)).space
        for i, config in enumerate(spec.enqueue):
            check_values(space, config, f"enqueue[{i}]", strict=True)
    with opening(spec) as shared:  # SQLite: one process creates, the others find it made
        storage = make_storage(spec)
        make_folder(spec.study_dir, "study folder")  # a server's study keeps its logs here
        directions = [o.direction for o in spec.objective_list]
        existing = existing_trials(storage, spec.name)
        if sampler_offset is None:
            sampler_offset = existing + (secrets.randbelow(2**20) * 1000 if shared else 0)
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            directions=directions,
            sampler=make_sampler(spec, sampler_offset, distributed=distributed),
            load_if_exists=True,
        )
        if [d.name.lower() for d in study.directions] != directions:
            raise UserError(f"study {spec.name!r} exists with other objectives; choose another --name")
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored is None:
            study.set_user_attr(SPEC_ATTR, spec_for_storage(spec))
        elif stored.get("objectives") != spec.objectives:
            raise UserError(
                f"study {spec.name!r} exists with objectives {stored.get('objectives')!r}; choose another --name"
            )
        # On every open, not only the first: a configuration added to the spec's
        # enqueue list between runs is measured next; one already there is skipped.
        for config in spec.enqueue:
            study.enqueue_trial(dict(config), user_attrs={"enqueued_by": "spec"}, skip_if_exists=True)
    return study


def run_study(spec: StudySpec, reporter: StudyReporter | None = None, *, distributed: bool = False) -> StudyRun:
    """Runs trials until the budget is spent, counting every worker's trials.

    ``distributed``: other workers may share the study (``autotune worker``),
    so the sampler is salted and a worker waits while the rest of the budget
    is running elsewhere, in case one of those trials is lost and retried.
    Each trial holds its devices (``autotune.engines.device_lock``), so two
    studies on one machine take turns; trials that fail to start the same way
    for different configurations stop the study (``autotune.tuning.failfast``).
    """
    reporter = reporter or _Silent()
    setup = setup_from_spec(spec)
    require_launchable(setup)
    study = open_study(spec, distributed=distributed, setup=setup)
    env = record(setup.engine.name, setup.engine.version(), setup.device)
    run = StudyRun(spec, setup, study, spec.constraints, spec.objective_list, env)
    assert spec.study_dir is not None
    budget = spec.budget.trials
    deadline = time.monotonic() + spec.budget.wall_time_s if spec.budget.wall_time_s else None
    attempts = 0
    reporter.study_opened(spec, done(study), budget)
    measure_baseline(study, spec, setup, env, reporter, worker_id())
    planner = planner_for(
        study, setup.space, setup.engine.name, setup.device, setup.hardware, spec.rounds, budget,
        check=lambda config: check(run.setup, config), compile_key=setup.engine.compile_key,
    )
    poll_s = min(5.0, spec.heartbeat.interval_s)
    note: Callable[[str], None] = getattr(reporter, "note", reporter.trial_status)
    starts = StartFailures(spec.budget.stop_after_start_failures)
    waited = False
    while attempts < budget * 10:
        wait_for_storage(study, reporter.trial_status)
        fail_stale(study)
        # Both budgets are read from the storage, once it answers.
        why = None
        if deadline is not None:
            why = over_wall_time(study, deadline - time.monotonic())
        if why is None and spec.budget.gpu_minutes is not None:
            why = over_gpu_budget(study, spec.budget.gpu_minutes, spec.hardware.gpu_count)
        if why:
            note(why)
            break
        state = budget_state(study, spec.heartbeat.max_retry)
        if state.done >= budget:
            break
        if _rest_runs_elsewhere(state, budget):
            # The rest of the budget is running elsewhere; one of those may yet be lost and retried.
            if not waited:
                note(f"waiting for {state.running} trial(s) running on other workers")
                waited = True
            time.sleep(poll_s)
            continue
        attempts += 1
        # A whole trial holds its devices: another study on them waits, and its trials' times never overlap.
        with _devices(setup, spec, note):
            state = budget_state(study, spec.heartbeat.max_retry)  # the wait may have let others finish it
            if state.done >= budget or _rest_runs_elsewhere(state, budget):
                continue
            if planner is not None:
                for d in planner.advance(state.done):
                    reporter.trial_status(f"round {d.round}: {d.decision} {d.knob or ''} - {d.reason}")
                run.setup.space = planner.space()
            try:
                study.optimize(lambda t: _objective(run, t, reporter, starts), n_trials=1, catch=(TrialFailed,))
            except optuna.exceptions.StorageInternalError as e:
                # The database went away mid-trial (a restart): the trial is failed by its
                # missing heartbeat and retried; this worker carries on once it is back.
                reporter.trial_status(f"storage error, the trial will be retried: {root_cause_line(e)}")
    return run


def _rest_runs_elsewhere(state: BudgetState, budget: int) -> bool:
    return not state.waiting and state.done + state.running + state.awaiting_retry >= budget


def _devices(setup: TrialSetup, spec: StudySpec, note: Callable[[str], None]) -> ContextManager[None]:
    """The device lock for one trial; none for an endpoint autotune does not start."""
    if not setup.engine.capabilities.launches:
        return contextlib.nullcontext()
    return holding(devices_of({**os.environ, **setup.extra_env}), holder=f"study {spec.name}", say=note)


def _objective(run: StudyRun, trial: Trial, reporter: StudyReporter, starts: StartFailures) -> list[float]:
    try:
        config = suggest(trial, run.setup.space)
    except ValueError as e:  # Optuna refuses a knob whose range changed within one study
        mark_status(trial, "error", f"search space changed: {e}")
        if not any(t.state.is_finished() for t in run.study.get_trials(deepcopy=False)):
            raise UserError(f"cannot ask for a configuration: {e}") from None
        raise UserError(
            f"the search space changed since study {run.spec.name!r} began ({e}); start a new one with --name"
        ) from None
    assert run.spec.study_dir is not None
    if over_budget(run.study, trial.number, run.spec.budget.trials, run.spec.heartbeat.max_retry):
        mark_status(trial, "surplus", "not run: the budget was taken by other workers' trials")
        raise optuna.TrialPruned("budget reached")
    trial_dir = run.spec.study_dir / "trials" / f"{trial.number:04d}"
    mark_started(trial, config, run.environment, run.setup.model.source, worker_id(),
                 retry_of(run.study, trial.number))
    reporter.trial_started(trial.number, config)
    if redrawn := trial.user_attrs.get(REDRAWN_ATTR):
        reporter.trial_status(redrawn)
    incumbent, recheck_below = goodput_reference(run.study, run.spec, config)
    try:
        outcome = run_trial(
            run.setup, config, trial_dir, status=reporter.trial_status, progress=reporter.requests_progress,
            quality=quality_hook(run.study, run.setup, run.constraints, run.objectives, trial.number, config,
                                 trial_dir, reporter.trial_status),
            incumbent=incumbent, recheck_below=recheck_below,
        )
    except KeyboardInterrupt:
        mark_status(trial, "interrupted", "interrupted by the user")
        raise
    except Exception as e:  # autotune's own failure (a full disk, a bug): the trial says so, never "running"
        with contextlib.suppress(Exception):
            mark_status(trial, "error", f"autotune could not run the trial: {type(e).__name__}: {one_line(e)}")
        raise
    if outcome.status == "ok":
        outcome.figures.update(cost_figures(
            outcome.figures, config, gpu_count=run.spec.hardware.gpu_count, device=run.setup.device,
            price_per_gpu_hour=run.spec.hardware.price_per_gpu_hour,
        ))
    record_outcome(trial, outcome, trial_dir)
    if outcome.status == "infeasible":
        reporter.trial_finished(trial.number, outcome, None)
        raise optuna.TrialPruned(outcome.reason)
    machine = starts.see(trial.number, config, outcome.failed_to_start, outcome.reason)
    if outcome.status != "ok":
        reporter.trial_finished(trial.number, outcome, None)
        if machine:
            raise starts.stop(run.study)
        raise TrialFailed(outcome.reason)
    bound = outcome.figures.get("goodput_upper_bound")
    # Below the incumbent, goodput is a bound, not a measurement: Optuna sees the bound (never better than the
    # best so far) with a violated constraint, so the samplers steer away without taking it for a figure.
    judged = {**outcome.figures, "goodput": bound} if bound is not None else outcome.figures
    values = [o.value(judged) for o in run.objectives]
    if any(math.isnan(v) for v in values):
        mark_status(trial, "failed", "an objective could not be computed (no completed request)")
        reporter.trial_finished(trial.number, outcome, None)
        raise TrialFailed("objective is NaN")
    violations = {c.text: c.violation(judged, outcome.per_request) for c in run.constraints}
    violations.update(incumbent_violation(run.spec, bound))
    feasible = record_slo(trial, violations)
    reporter.trial_finished(trial.number, outcome, feasible)
    return values
