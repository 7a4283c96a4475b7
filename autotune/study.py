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
import secrets
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from autotune.cost import cost_figures
from autotune.engines import get_engine
from autotune.environment import detect_device, gpus, record
from autotune.feasibility import Capacity, host_memory_gib, load_model_config
from autotune.errors import UserError
from autotune.models.resolve import resolve_model
from autotune.search_space import Knob, SearchSpace
from autotune.slo import Constraint, Objective
from autotune.spec import StudySpec, redact_url
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
    engine = get_engine(spec.engine.name, spec.engine.options)  # options: the adapter's own settings
    hardware = {"gpu_count": float(spec.hardware.gpu_count if device == "cuda" else 1)}
    space = SearchSpace.load(engine.name).for_hardware(device, hardware).with_overrides(spec.space)
    model = resolve_model(spec.model, max_model_len=spec.max_model_len)
    # --- feasibility inputs and GPU binding (begin) ---
    capacity, gpu_env = hardware_capacity(spec, device)
    extra_env = dict(spec.engine.env)
    for key, value in gpu_env.items():
        if extra_env.get(key, value) != value:
            raise UserError(f"engine.env sets {key}={extra_env[key]} but hardware.gpu_ids says {value}")
        extra_env[key] = value
    # --- (end) ---
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
        extra_env=extra_env,
        launch_template=spec.engine.launch_template,
        constraints=spec.constraints,
        goodput=spec.goodput,
        api_key=_api_key(spec),
        repeats=spec.repeats,
        capacity=capacity,
        model_config=load_model_config(model.source),
    )


# --- API key from the environment, never from the spec (begin) ---
def _api_key(spec: StudySpec) -> str | None:
    name = spec.engine.api_key_env
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise UserError(f"engine.api_key_env: environment variable {name} is not set (the API key is read from it)")
    return value
# --- API key (end) ---


# --- feasibility: the hardware a trial may use (begin) ---
def hardware_capacity(spec: StudySpec, device: str) -> tuple[Capacity, dict[str, str]]:
    """GPU count and memory per GPU (the spec's, else NVML's for the GPUs given), and
    the environment that binds the engine to ``hardware.gpu_ids``."""
    hw = spec.hardware
    if device != "cuda":
        return Capacity(device=device, gpu_count=1, host_memory_gib=host_memory_gib()), {}
    memory = hw.gpu_memory_gib
    if memory is None:
        found = {g["index"]: g.get("memory_gib") for g in gpus()}
        ids = hw.gpu_ids if hw.gpu_ids is not None else list(range(hw.gpu_count))
        sizes = [found[i] for i in ids if found.get(i)]
        memory = min(sizes) if sizes and len(sizes) == len(ids) else None
    return Capacity(device="cuda", gpu_count=hw.gpu_count, gpu_memory_gib=memory), hw.engine_env()
# --- (end) ---


def make_sampler(spec: StudySpec, offset: int, *, distributed: bool = False) -> optuna.samplers.BaseSampler:
    # A resumed study must not replay the first run's draws: shift the seed by what exists.
    # Workers that start together see the same count, so each adds its own salt.
    seed = spec.seed + offset + (secrets.randbelow(2**20) * 1000 if distributed else 0)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, spec.budget.trials // 3))
    # --- GP sampler: the default, chosen on benchmarks/search_efficiency.py (begin) ---
    # Workers sharing a study need TPE's constant liar, which GPSampler lacks: they would all sample one spot.
    if spec.sampler == "gp" and not distributed and _gp_available():
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(3, min(10, spec.budget.trials // 3)))
    # --- GP sampler (end) ---
    startup = max(3, min(10, spec.budget.trials // 3))
    # constant_liar: a worker treats the others' running trials as bad, so they do not all sample one spot.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=distributed
    )


# --- GP sampler (begin) ---
def _gp_available() -> bool:
    """GPSampler needs torch and scipy; without them (an endpoint-only install) TPE stands in."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "scipy"))
# --- GP sampler (end) ---


def open_study(
    spec: StudySpec, *, sampler_offset: int | None = None, distributed: bool = False
) -> optuna.Study:
    assert spec.study_dir is not None
    if spec.storage is None:
        spec.study_dir.mkdir(parents=True, exist_ok=True)  # SQLite needs the folder; a server does not
    storage = make_storage(spec)
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    directions = [o.direction for o in spec.objective_list]
    existing = _existing_trials(storage, spec.name)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=directions,
        sampler=make_sampler(spec, existing if sampler_offset is None else sampler_offset, distributed=distributed),
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"study {spec.name!r} exists with other objectives; choose another --name")
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, stored_spec(spec))
    elif stored.get("objectives") != spec.objectives:
        raise UserError(
            f"study {spec.name!r} exists with objectives {stored.get('objectives')!r}; choose another --name"
        )
    # On every open, not only the first: a configuration added to the spec's
    # enqueue list between runs is measured next; one already there is skipped.
    _enqueue_from_spec(study, spec)
    return study


def _enqueue_from_spec(study: optuna.Study, spec: StudySpec) -> None:
    """The spec's ``enqueue`` configurations, measured before the sampler's own picks."""
    if not spec.enqueue:
        return
    knobs = make_setup(spec).space.knobs
    for config in spec.enqueue:
        unknown = sorted(set(config) - set(knobs))
        if unknown:
            raise UserError(f"enqueue: unknown knob(s) {', '.join(unknown)} (known: {', '.join(sorted(knobs))})")
        study.enqueue_trial(dict(config), user_attrs={"enqueued_by": "spec"}, skip_if_exists=True)


# --- storage, heartbeats and workers (begin) ---
def make_storage(spec: StudySpec) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker dies is failed and retried.

    SQLite in the study folder serves one machine; PostgreSQL (or MySQL) lets
    workers on many machines share the study. A server that cannot be reached
    is bad input: one line, nothing written.
    """
    url = spec.storage_url
    hb = spec.heartbeat
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    kwargs: dict[str, Any] = {"heartbeat_interval": hb.interval_s, "grace_period": hb.grace_s}
    if retry is None:  # Optuna < 4.9
        kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=hb.max_retry)
    engine_kwargs: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        # A restarted database server leaves dead connections in the pool; test each before use.
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if retry is not None:
                    kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=hb.max_retry)
                return _BeatingStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError as e:
            raise UserError(f"storage {redact_url(url)}: driver missing ({e}); pip install 'psycopg[binary]'") from None
        except Exception as e:  # sqlalchemy's OperationalError and kin: server down, bad credentials
            why = _first_line(e)
            # Workers started together on an empty database race to create Optuna's tables.
            if attempt < 4 and ("duplicate key" in why or "already exists" in why):
                time.sleep(0.5 + secrets.randbelow(1000) / 1000)
                continue
            raise UserError(f"cannot open storage {redact_url(url)}: {why}") from None
    raise AssertionError("unreachable")


class _BeatingStorage(optuna.storages.RDBStorage):
    """RDB storage whose heartbeat outlives a database restart.

    Optuna beats from a thread that ends at its first error; one missed beat
    during a restart would then fail a trial that is running fine.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except optuna.exceptions.StorageInternalError:
            pass  # the next beat, a few seconds on, reaches the server again

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna fails these next, and a finished trial can no longer be annotated:
        # the reason is written now, while the trial still runs.
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            try:
                worker = self.get_trial(trial_id).user_attrs.get("worker", "a worker")
                self.set_trial_user_attr(trial_id, "status", "lost")
                self.set_trial_user_attr(
                    trial_id, "reason",
                    f"{worker} sent no heartbeat for {self.grace_period}s (killed or cut off); retried as a new trial",
                )
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first
        return stale


def _first_line(e: BaseException) -> str:
    """The root cause's first line: the driver's words, not the wrappers' (Optuna, SQLAlchemy)."""
    while e.__cause__ is not None or getattr(e, "orig", None) is not None:
        e = getattr(e, "orig", None) or e.__cause__  # type: ignore[assignment]
    text = " ".join(str(e).strip().split("\n")[0].split())
    return text[:300] or type(e).__name__


def stored_spec(spec: StudySpec) -> dict[str, Any]:
    """The spec as kept in the study, so a worker needs only --storage and --study.

    The storage URL's password stays out: it would otherwise sit in the database it opens.
    """
    data = spec.model_dump(mode="json")
    if data.get("storage"):
        data["storage"] = redact_url(data["storage"])
    return data


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale(study: optuna.Study, spec: StudySpec) -> None:
    """Fails the trials whose worker stopped beating and queues their retries (Optuna's machinery).

    Optuna runs the same check at the start of every trial; this one also runs
    while a worker waits for the last trials of the budget.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@dataclass
class BudgetState:
    done: int
    running: int
    waiting: int
    awaiting_retry: int = 0


def _root(t: FrozenTrial) -> int:
    """The trial a retry stands for: it takes that trial's place in the budget."""
    history = t.system_attrs.get("retry_history")
    return int(history[0]) if history else t.number


def _will_retry(t: FrozenTrial, max_retry: int | None) -> bool:
    return max_retry is None or len(t.system_attrs.get("retry_history", [])) + 1 <= max_retry


def _slots(trials: list[FrozenTrial], max_retry: int | None) -> tuple[set[int], set[int]]:
    """Budget slots by root trial: those taken, and those held by a lost trial until its retry is queued.

    A trial whose worker died keeps its slot, so that a fresh trial asked in the
    moment before its retry is queued cannot push the retry out of the budget.
    """
    lineages: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        lineages.setdefault(_root(t), []).append(t)
    taken, held = set(), set()
    for root, lineage in lineages.items():
        if any(counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in lineage):
            taken.add(root)
            continue
        last = max(lineage, key=lambda t: t.number)
        if last.user_attrs.get("status") == "lost" and _will_retry(last, max_retry):
            taken.add(root)
            held.add(root)
    return taken, held


def budget_state(study: optuna.Study, max_retry: int | None = None) -> BudgetState:
    trials = study.get_trials(deepcopy=False)
    _, held = _slots(trials, max_retry)
    return BudgetState(
        done=sum(counted(t) for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
        awaiting_retry=len(held),
    )


def over_budget(study: optuna.Study, trial: Trial, budget: int, max_retry: int | None) -> bool:
    """Whether the trials before this one, finished, running or to be retried, already fill the budget.

    Workers race between looking at the budget and asking for a trial; trial
    numbers are handed out in one order by the storage, so the later trial of
    a race is the one that stands down and none is run beyond the budget. A
    retry ranks as the trial it replaces.
    """
    trials = study.get_trials(deepcopy=False)
    mine = _root(next(t for t in trials if t.number == trial.number))
    taken, _ = _slots([t for t in trials if t.number != trial.number], max_retry)
    return sum(1 for root in taken if root < mine) >= budget


def wait_for_storage(study: optuna.Study, say: Any, timeout_s: float = 300.0) -> None:
    """Blocks while the database is unreachable (a restart), up to a limit."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            study.get_trials(deepcopy=False)
            return
        except Exception as e:
            if time.monotonic() > deadline:
                raise UserError(f"storage unreachable for {timeout_s:.0f}s: {_first_line(e)}") from None
            say(f"storage unreachable, retrying: {_first_line(e)}")
            time.sleep(2.0)


def generator_limited(figures: dict[str, Any], requests_path: Path) -> str | None:
    """Why figures measured the client rather than the engine, if they did.

    At an open-loop rate the client itself cannot produce, the requests go out
    later than their Poisson schedule while the client's CPU is busy (a slow
    server that fills the in-flight cap delays the sends too, but leaves the
    client idle). Such a trial says nothing about the engine.
    """
    from autotune.load.runner import poisson_offsets

    offered, cpu = figures.get("offered_rate"), figures.get("client_cpu_util")
    if not isinstance(offered, (int, float)) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu):
        return None
    try:
        starts = [json.loads(line)["start"] for line in requests_path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError):
        return None
    if len(starts) < 20:
        return None
    scheduled = poisson_offsets(len(starts), float(offered), 0)[-1]
    sent = max(starts) - min(starts)
    if scheduled > 0 and sent > 1.5 * scheduled and cpu >= 0.5:
        return (
            f"the load generator could not keep the offered rate: {len(starts)} requests due in "
            f"{scheduled:.2f}s went out over {sent:.2f}s with the client at {cpu:.0%} CPU; "
            "lower the rate or run the client on more cores"
        )
    return None


# --- storage, heartbeats and workers (end) ---


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


def run_study(spec: StudySpec, reporter: StudyReporter | None = None, *, distributed: bool = False) -> StudyRun:
    """Runs trials until the budget is spent, counting every worker's trials.

    ``distributed``: other workers may share the study (``autotune worker``),
    so the sampler is salted and a worker waits while the rest of the budget
    is running elsewhere, in case one of those trials is lost and retried.
    """
    reporter = reporter or _Silent()
    setup = make_setup(spec)
    study = open_study(spec, distributed=distributed)
    env = record(setup.engine.name, setup.engine.version(), setup.device)
    run = StudyRun(spec, setup, study, spec.constraints, spec.objective_list, env)
    assert spec.study_dir is not None
    budget, deadline = spec.budget.trials, _deadline(spec)
    attempts = 0
    reporter.study_opened(spec, _done(study), budget)
    # --- rounds: reshape the space between rounds (begin) ---
    from autotune.rounds import planner_for
    from autotune.trial import check as check_config

    planner = planner_for(
        study, setup.space, setup.engine.name, setup.device, setup.hardware, spec.rounds, budget,
        check=lambda config: check_config(run.setup, config),
    )
    # --- rounds (end) ---
    # --- budget counted across workers (begin) ---
    poll_s = min(5.0, spec.heartbeat.interval_s)
    waited = False
    while attempts < budget * 10:
        if deadline is not None and time.monotonic() > deadline:
            break
        wait_for_storage(study, reporter.trial_status)
        fail_stale(study, spec)
        state = budget_state(study, spec.heartbeat.max_retry)
        if state.done >= budget:
            break
        if not state.waiting and state.done + state.running + state.awaiting_retry >= budget:
            # The rest of the budget is running elsewhere; one of those may yet be lost and retried.
            if not waited:
                reporter.trial_status(f"waiting for {state.running} trial(s) running on other workers")
                waited = True
            time.sleep(poll_s)
            continue
        attempts += 1
        # --- rounds (begin) ---
        if planner is not None:
            for d in planner.advance(state.done):
                reporter.trial_status(f"round {d.round}: {d.decision} {d.knob or ''} - {d.reason}")
            run.setup.space = planner.space()
        # --- rounds (end) ---
        try:
            study.optimize(lambda t: _objective(run, t, reporter), n_trials=1, catch=(TrialFailed,))
        except optuna.exceptions.StorageInternalError as e:
            # The database went away mid-trial (a restart): the trial is failed by its
            # missing heartbeat and retried; this worker carries on once it is back.
            reporter.trial_status(f"storage error, the trial will be retried: {_first_line(e)}")
    # --- budget counted across workers (end) ---
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
    # --- worker bookkeeping (begin) ---
    if over_budget(run.study, trial, run.spec.budget.trials, run.spec.heartbeat.max_retry):
        trial.set_user_attr("status", "surplus")
        trial.set_user_attr("reason", "not run: the budget was taken by other workers' trials")
        raise optuna.TrialPruned("budget reached")
    trial.set_user_attr("status", "running")
    trial.set_user_attr("worker", worker_id())
    retry_of = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
    if retry_of is not None:
        trial.set_user_attr("retry_of", retry_of)
        trial.set_user_attr("reason", None)  # the copy carries the lost trial's reason
    # --- worker bookkeeping (end) ---
    trial_dir = run.spec.study_dir / "trials" / f"{trial.number:04d}"
    trial.set_user_attr("config", config)
    trial.set_user_attr("environment", run.environment)
    trial.set_user_attr("model_source", run.setup.model.source)
    reporter.trial_started(trial.number, config)
    try:
        outcome = run_trial(
            run.setup, config, trial_dir, status=reporter.trial_status, progress=reporter.requests_progress,
            quality=quality_hook(run, trial.number, config, trial_dir, reporter.trial_status),
        )
    except KeyboardInterrupt:
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("reason", "interrupted by the user")
        raise
    # --- cost per 1K tokens beside the throughput, so min:cost can be an objective (begin) ---
    if outcome.status == "ok":
        outcome.figures.update(cost_figures(
            outcome.figures, config, gpu_count=run.spec.hardware.gpu_count, device=run.setup.device,
            price_per_gpu_hour=run.spec.hardware.price_per_gpu_hour,
        ))
    # --- cost (end) ---
    # --- the load generator as the bottleneck (begin) ---
    limited = generator_limited(outcome.figures, trial_dir / "requests.jsonl") if outcome.status == "ok" else None
    if limited:
        outcome.status, outcome.reason = "failed", limited
        (trial_dir / "outcome.json").write_text(json.dumps(outcome.to_json(), indent=2, default=str))
    # --- the load generator as the bottleneck (end) ---
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


# --- quality: measured once per quality-relevant setting, reused from the storage (begin) ---
#: Study attribute prefix of a stored quality measurement; the rest is the setting's key.
QUALITY_ATTR = "quality:"


def quality_hook(
    run: StudyRun, number: int, config: dict[str, Any], trial_dir: Path, say: Any
) -> Any:
    """What ``run_trial`` calls on the running server for the quality figures, or None
    when no SLO or objective reads one.

    Perplexity and pass-key accuracy depend only on the quality knobs (quantization,
    KV-cache dtype ...), so each setting is measured once and kept in the study's
    storage (study attribute ``quality:<setting>``), where every later trial, on any
    worker, finds it. The baseline (every quality knob at its neutral value: no
    quantization, the KV cache in the model's dtype) is measured once per study: by
    the trial that runs it, or, when a trial of another setting comes first, on a start
    of its own before that trial.
    """
    from autotune import quality as q
    from autotune.trial import run_quality_only

    plan = q.plan_for(run.constraints, run.objectives)
    if not plan.needed:
        return None
    full = SearchSpace.load(run.setup.engine.name).for_hardware(run.setup.device, run.setup.hardware)
    knobs = [k for k in q.quality_knobs(full) if k in run.setup.space.knobs]
    key = q.setting_key(config, knobs)
    base_config = q.baseline_config(config, full)
    base_key = q.setting_key(base_config, knobs)

    def measure(url: str) -> dict[str, Any]:
        return _measure_quality(run, plan, config, url).to_json()

    launches = run.setup.engine.capabilities.launches  # an endpoint autotune does not start has no baseline start
    if plan.perplexity and launches and key != base_key and _stored_quality(run.study, base_key) is None:
        try:
            result = run_quality_only(
                run.setup, base_config, trial_dir / "quality-baseline",
                lambda url: _measure_quality(run, plan, base_config, url).to_json(), status=say,
            )
            _store_quality(run.study, base_key, dict(result), number)
        except Exception as e:  # the trial goes on; its relative perplexity is then unknown
            say(f"quality baseline not measured: {e}")

    def hook(url: str) -> dict[str, Any]:
        stored = _stored_quality(run.study, key)
        measured_here = stored is None
        if stored is None:
            stored = _store_quality(run.study, key, measure(url), number)
        figures = dict(stored["figures"])
        if plan.perplexity:
            base = stored if key == base_key else _stored_quality(run.study, base_key)
            rel = q.relative_to_baseline(figures, base["figures"]) if base else {}
            figures.update(rel or {"ppl_rel_change": math.nan})  # unknown: breaks a relative bound
        return {
            "figures": figures,
            "setting": json.loads(key),
            "baseline": json.loads(base_key),
            "measured_here": measured_here,
            "measured_in_trial": stored.get("trial"),
            **stored.get("info", {}),
        }

    return hook


def _measure_quality(run: StudyRun, plan: Any, config: dict[str, Any], url: str) -> Any:
    from autotune import quality as q

    setup = run.setup
    model_dir = setup.model.tokenizer_dir or setup.model.source
    if not Path(model_dir).is_dir():
        raise q.QualityError(f"quality needs the model's files on this machine ({model_dir} is not a folder)")
    max_len = setup.model.max_model_len or int((setup.model_config or {}).get("max_position_embeddings") or 2048)
    caps = setup.engine.capabilities
    result = q.measure_quality(
        url, setup.engine.request_model(setup.model), model_dir, plan, max_model_len=max_len,
        prompt_logprobs=caps.prompt_logprobs, token_ids=caps.token_id_prompts,
        dtype=config.get("dtype"), api_key=setup.api_key,
    )
    return result


def _stored_quality(study: optuna.Study, key: str) -> dict[str, Any] | None:
    stored = study.user_attrs.get(QUALITY_ATTR + key)  # read from the storage: other workers' too
    if stored is None:
        return None
    figures = {k: (math.nan if v is None else v) for k, v in stored.get("figures", {}).items()}
    return {**stored, "figures": figures}


def _store_quality(study: optuna.Study, key: str, result: dict[str, Any], number: int) -> dict[str, Any]:
    stored = {**result, "figures": _finite(result["figures"]), "trial": number, "measured_at": time.time()}
    study.set_user_attr(QUALITY_ATTR + key, stored)
    return {**stored, "figures": dict(result["figures"])}
# --- quality (end) ---


def _record(trial: Trial, outcome: TrialOutcome, trial_dir: Path) -> None:
    trial.set_user_attr("status", outcome.status)
    trial.set_user_attr("trial_dir", str(trial_dir.resolve()))
    if outcome.reason:
        trial.set_user_attr("reason", outcome.reason)
    if outcome.figures:
        trial.set_user_attr("figures", _finite(outcome.figures))
    for key in ("command", "config_file", "env", "log_path", "startup_s", "measure_s", "goodput", "feasibility", "repeats",
                "quality"):
        value = getattr(outcome, key)
        if value is not None:
            trial.set_user_attr(key, value)
    # --- telemetry: GPU and engine-metrics figures of the measured window (begin) ---
    telemetry = getattr(outcome, "telemetry", None)
    if telemetry:
        trial.set_user_attr("telemetry", _finite(telemetry))
    # --- telemetry (end) ---


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
