"""What a trial stores: the one reader and writer of a trial's Optuna attributes.

Every other part of autotune sees a trial as a ``TrialRecord``; the attribute
names under which Optuna keeps figures, configurations and verdicts are known
here alone (a study's own attributes: ``autotune.tuning.results``).

What is stored is also meant for Optuna's own tools: the key figures sit beside
the nested ones as flat numbers (optuna-dashboard sorts and filters by them,
``trials_dataframe()`` gives them a column each), each SLO is a constraint in
the form optuna-dashboard 0.21 reads as well as Optuna 5's named form, and the
study's values carry the objectives' figure names (``study.metric_names``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, Trial, TrialState

from autotune.environment import missing
from autotune.json_safe import json_safe
from autotune.trial import TrialOutcome

__all__ = [
    "FLAT_FIGURES", "VERDICTS", "TrialRecord", "mark_started", "mark_status", "name_metrics", "rank", "record_outcome",
    "record_slo",
]

_STATE = {
    TrialState.COMPLETE: "complete", TrialState.FAIL: "fail", TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
}
# Outcome fields kept as trial attributes under their own names, when set.
_OUTCOME_FIELDS = ("command", "config_file", "env", "log_path", "startup_s", "measure_s", "goodput", "feasibility",
                   "repeats", "quality", "startup", "compile_key")
#: Figures also stored as flat user attributes, under vllm bench serve's names (the
#: goodput figure as ``request_goodput``: ``goodput`` holds the search's levels).
FLAT_FIGURES = {
    "output_throughput": "output_throughput", "request_throughput": "request_throughput",
    "total_token_throughput": "total_token_throughput", "goodput": "request_goodput",
    "median_ttft_ms": "median_ttft_ms", "p99_ttft_ms": "p99_ttft_ms", "mean_tpot_ms": "mean_tpot_ms",
    "p99_tpot_ms": "p99_tpot_ms", "p99_itl_ms": "p99_itl_ms", "p99_e2el_ms": "p99_e2el_ms",
    "completed": "completed", "failed": "failed", "cost_per_1k_tokens": "cost_per_1k_tokens",
    "ppl": "ppl",
}
#: Telemetry figures stored flat beside them.
FLAT_TELEMETRY = ("kv_cache_usage_peak", "preemptions", "queue_time_mean_ms")
#: Optuna's own key for a trial's constraints as a list (read by optuna-dashboard and Optuna 4);
#: Optuna 5 also reads ``constraints:<name>`` keys, one per named constraint.
_CONSTRAINTS = "constraints"
#: Every verdict a trial can have, in the words every report uses.
VERDICTS = {
    "met": "met every SLO",
    "measured": "measured",  # a study with no SLO
    "missed": "missed an SLO",
    "refused": "refused before launch",
    "failed_to_start": "failed to start",
    "failed": "failed while measuring",
    "interrupted": "interrupted",
    "lost": "lost (its worker stopped)",
    "surplus": "not run (budget taken by other workers)",
    "running": "running",
    "waiting": "waiting",
}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as stored: its configuration, figures and verdicts, read by name."""

    number: int
    state: str  # complete, fail, pruned, running or waiting (Optuna's states)
    values: tuple[float, ...] | None
    params: Mapping[str, Any]
    attrs: Mapping[str, Any]
    constraints: tuple[float, ...] | None = None
    fixed_params: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def of(cls, t: FrozenTrial) -> "TrialRecord":
        return cls(
            number=t.number,
            state=_STATE.get(t.state, t.state.name.lower()),
            values=tuple(t.values) if t.values else None,
            params=dict(t.params),
            attrs=dict(t.user_attrs),
            constraints=_constraints_of(t.system_attrs),
            fixed_params=dict(t.system_attrs.get("fixed_params") or {}),
            started_at=t.datetime_start,
            finished_at=t.datetime_complete,
        )

    @property
    def config(self) -> dict[str, Any]:
        """The whole configuration as it ran: knobs the rounds pinned are no params, but they ran."""
        return {**self.params, **(self.attrs.get("config") or {})}

    @property
    def figures(self) -> dict[str, Any]:
        return dict(self.attrs.get("figures") or {})

    @property
    def telemetry(self) -> dict[str, Any]:
        return dict(self.attrs.get("telemetry") or {})

    @property
    def environment(self) -> dict[str, Any]:
        return dict(self.attrs.get("environment") or {})

    @property
    def status(self) -> str | None:
        return self.attrs.get("status")

    @property
    def reason(self) -> str | None:
        return self.attrs.get("reason")

    @property
    def measured(self) -> bool:
        return self.state == "complete"

    @property
    def feasible(self) -> bool:
        """Every SLO held (a measured trial that broke one is complete in Optuna's terms, infeasible in ours)."""
        if "feasible" in self.attrs:
            return bool(self.attrs["feasible"])
        return self.constraints is None or all(c <= 0 for c in self.constraints)

    @property
    def reported(self) -> bool:
        """A figure that cannot say where it was measured is not reported."""
        return not missing(self.attrs.get("environment"))

    @property
    def slo(self) -> dict[str, dict[str, Any]]:
        return dict(self.attrs.get("slo") or {})

    @property
    def quality(self) -> dict[str, Any] | None:
        return self.attrs.get("quality")

    @property
    def verdict(self) -> str:
        """One key of ``VERDICTS``: what became of the trial, in the same words everywhere."""
        if self.state == "complete":
            if not self.slo and self.constraints is None and "feasible" not in self.attrs:
                return "measured"
            return "met" if self.feasible else "missed"
        if self.state == "pruned":
            return "surplus" if self.status == "surplus" else "refused"
        if self.state == "fail":
            if self.status in ("interrupted", "lost"):
                return str(self.status)
            return "failed" if self.attrs.get("startup_s") is not None else "failed_to_start"
        return self.state if self.state in VERDICTS else "running"

    @property
    def verdict_text(self) -> str:
        return VERDICTS[self.verdict]

    def get(self, key: str, default: Any = None) -> Any:
        """Any other stored attribute (command, config_file, env, model_source, goodput, ...)."""
        return self.attrs.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return json_safe({
            "number": self.number, "state": self.state, "verdict": self.verdict_text,
            "values": list(self.values) if self.values else None,
            "feasible": self.feasible if self.measured else None, "config": self.config, **{
                k: v for k, v in self.attrs.items() if k != "config"},
        })


def _constraints_of(system_attrs: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The constraint values, from the list (``constraints``) or from Optuna 5's named keys."""
    listed = system_attrs.get(_CONSTRAINTS)
    if listed is not None:
        return tuple(float(v) for v in listed)
    named = [float(v) for k, v in system_attrs.items() if k.startswith(_CONSTRAINTS + ":")]
    return tuple(named) if named else None


def rank(records: Sequence[TrialRecord], directions: Sequence[str]) -> list[TrialRecord]:
    """Best first: feasible before infeasible, then by the first objective, then by trial number."""
    sign = -1.0 if directions[0] == "maximize" else 1.0
    return sorted(records, key=lambda r: (not r.feasible, sign * (r.values[0] if r.values else math.inf), r.number))


def mark_started(trial: Trial, config: Mapping[str, Any], environment: Mapping[str, Any], model_source: str,
                 worker: str, retry_of: Any = None) -> None:
    """What a trial is known to be before it runs: a retry's copy carries the lost trial's reason, cleared here."""
    trial.set_user_attr("status", "running")
    trial.set_user_attr("worker", worker)
    if retry_of is not None:
        trial.set_user_attr("retry_of", retry_of)
        trial.set_user_attr("reason", None)
    trial.set_user_attr("config", dict(config))
    trial.set_user_attr("environment", dict(environment))
    trial.set_user_attr("model_source", model_source)
    if trial.study.metric_names is None:
        _name_from_stored_spec(trial.study)


def name_metrics(study: Any, objectives: Sequence[Any]) -> None:
    """The study's values named by the figures they are (``output_throughput``, ``p99_ttft_ms``):
    optuna-dashboard and ``trials_dataframe()`` show these names, not "Objective 0"."""
    names = [o.metric for o in objectives]
    if len(names) == len(study.directions) and study.metric_names != names:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(names)


def _name_from_stored_spec(study: Any) -> None:
    # The study's stored spec says what its objectives are; a study opened by any
    # autotune (a worker's included) is named before its first value is stored.
    from autotune.spec import parse_objectives
    from autotune.tuning.storage import SPEC_ATTR

    stored = study.user_attrs.get(SPEC_ATTR) or {}
    if isinstance(stored.get("objectives"), str):
        name_metrics(study, parse_objectives(stored["objectives"]))

def mark_status(trial: Trial, status: str | None, reason: str | None = None) -> None:
    if status is not None:
        trial.set_user_attr("status", status)
    if reason is not None:
        trial.set_user_attr("reason", reason)


def record_outcome(trial: Trial, outcome: TrialOutcome, trial_dir: Path) -> None:
    mark_status(trial, outcome.status, outcome.reason)
    trial.set_user_attr("trial_dir", str(trial_dir.resolve()))
    if outcome.figures:
        trial.set_user_attr("figures", json_safe(outcome.figures))
    for key in _OUTCOME_FIELDS:
        value = getattr(outcome, key)
        if value is not None:
            trial.set_user_attr(key, value)
    if outcome.telemetry:
        trial.set_user_attr("telemetry", json_safe(outcome.telemetry))
    for key, value in _flat(outcome.figures, outcome.telemetry or {}).items():
        trial.set_user_attr(key, value)


def _flat(figures: Mapping[str, Any], telemetry: Mapping[str, Any]) -> dict[str, float]:
    """The key figures as plain numbers, for tools that cannot look inside a nested attribute."""
    out: dict[str, float] = {}
    for key, name in FLAT_FIGURES.items():
        value = figures.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    for key in FLAT_TELEMETRY:
        value = telemetry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def record_slo(trial: Trial, violations: Mapping[str, float]) -> bool:
    """Each SLO as an Optuna constraint (<= 0 holds) and as a readable verdict; whether all held.

    The constraints are stored twice over: by name (Optuna 5's ``set_constraint``) and
    as the list optuna-dashboard 0.21 reads, or a study that missed its SLO would show
    every trial as feasible there. A study begun before the list was written keeps
    to the named form alone: Optuna's GP sampler wants one set of constraint names
    across a study's trials.
    """
    for text, violation in violations.items():
        trial.set_constraint(text, violation)
    if violations and not _named_only(trial):
        trial.storage.set_trial_system_attr(trial._trial_id, _CONSTRAINTS, [float(v) for v in violations.values()])
    trial.set_user_attr("slo", {text: {"violation": v, "holds": v <= 0} for text, v in violations.items()})
    feasible = all(v <= 0 for v in violations.values())
    trial.set_user_attr("feasible", feasible)
    trial.set_user_attr("slo_met", feasible)
    trial.set_user_attr("slo_missed", ", ".join(text for text, v in violations.items() if v > 0))
    return feasible


def _named_only(trial: Trial) -> bool:
    """Whether an earlier trial of the study stored its constraints by name only."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = other.system_attrs
        if _CONSTRAINTS not in attrs and any(k.startswith(_CONSTRAINTS + ":") for k in attrs):
            return True
    return False
