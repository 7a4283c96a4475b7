"""What a trial stores: the one reader and writer of a trial's Optuna attributes.

Every other part of autotune sees a trial as a ``TrialRecord``; the attribute
names under which Optuna keeps figures, configurations and verdicts are known
here alone (a study's own attributes: ``autotune.tuning.results``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, Trial, TrialState

from autotune.environment import missing
from autotune.json_safe import json_safe
from autotune.trial import TrialOutcome

__all__ = ["TrialRecord", "mark_started", "mark_status", "rank", "record_outcome", "record_slo"]

_STATE = {
    TrialState.COMPLETE: "complete", TrialState.FAIL: "fail", TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
}
# Outcome fields kept as trial attributes under their own names, when set.
_OUTCOME_FIELDS = ("command", "config_file", "env", "log_path", "startup_s", "measure_s", "goodput", "feasibility",
                   "repeats", "quality", "startup", "compile_key")


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

    @classmethod
    def of(cls, t: FrozenTrial) -> "TrialRecord":
        constraints = t.system_attrs.get("constraints")
        return cls(
            number=t.number,
            state=_STATE.get(t.state, t.state.name.lower()),
            values=tuple(t.values) if t.values else None,
            params=dict(t.params),
            attrs=dict(t.user_attrs),
            constraints=tuple(constraints) if constraints is not None else None,
            fixed_params=dict(t.system_attrs.get("fixed_params") or {}),
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

    def get(self, key: str, default: Any = None) -> Any:
        """Any other stored attribute (command, config_file, env, model_source, goodput, ...)."""
        return self.attrs.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return json_safe({
            "number": self.number, "state": self.state, "values": list(self.values) if self.values else None,
            "feasible": self.feasible if self.measured else None, **self.attrs,
        })


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


def record_slo(trial: Trial, violations: Mapping[str, float]) -> bool:
    """Each SLO as an Optuna constraint (<= 0 holds) and as a readable verdict; whether all held."""
    for text, violation in violations.items():
        trial.set_constraint(text, violation)
    trial.set_user_attr("slo", {text: {"violation": v, "holds": v <= 0} for text, v in violations.items()})
    feasible = all(v <= 0 for v in violations.values())
    trial.set_user_attr("feasible", feasible)
    return feasible
