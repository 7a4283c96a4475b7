"""What a trial stores, and what a study holds: the one reader and writer of Optuna's attributes.

Every other part of autotune sees a trial as a ``TrialRecord`` and a study as
``StudyResults``; the attribute names under which Optuna keeps figures,
configurations, verdicts and verifications are known here alone. What a
report draws (the front, the best trial, the importances) is computed here
once, so the console, the HTML page and the PNG show the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from autotune.environment import missing
from autotune.json_safe import json_safe
from autotune.spec import StudySpec
from autotune.trial import TrialOutcome

__all__ = ["StudyResults", "TrialRecord", "rank"]

VERIFY_PREFIX = "verify:"  # study attribute of one trial's verification
_STATE = {
    TrialState.COMPLETE: "complete", TrialState.FAIL: "fail", TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
}
# Outcome fields kept as trial attributes under their own names, when set.
_OUTCOME_FIELDS = ("command", "config_file", "env", "log_path", "startup_s", "measure_s", "goodput", "feasibility",
                   "repeats", "quality")


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


class StudyResults:
    """A study as the reports read it: its spec, its trials, and what is computed from them once.

    ``spec`` is None only for a study autotune did not create (the figures still read).
    """

    def __init__(self, study: optuna.Study, spec: StudySpec | None = None) -> None:
        self._study = study
        self.spec: StudySpec = spec  # type: ignore[assignment]
        self.name = study.study_name
        self.directions = [d.name.lower() for d in study.directions]
        self.trials = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False)]
        try:
            self._best_numbers = {t.number for t in study.best_trials}
        except ValueError:  # a single-objective study with no feasible trial has no best
            self._best_numbers = set()

    @classmethod
    def load(cls, study_dir: Path | None = None, *, storage: str | None = None, name: str | None = None) -> "StudyResults":
        from autotune.tuning.storage import load_study

        study, spec = load_study(study_dir, storage=storage, name=name)
        return cls(study, spec)

    def measured(self) -> list[TrialRecord]:
        return [r for r in self.trials if r.measured]

    def front(self) -> list[TrialRecord]:
        """Feasible, non-dominated trials that carry their environment, best first by the first objective."""
        front = [r for r in self.trials if r.number in self._best_numbers and r.feasible and r.reported]
        reverse = self.directions[0] == "maximize"
        return sorted(front, key=lambda r: r.values[0] if r.values else 0.0, reverse=reverse)

    def ranked(self, records: Sequence[TrialRecord] | None = None) -> list[TrialRecord]:
        return rank([r for r in (self.measured() if records is None else records) if r.values], self.directions)

    def best(self) -> TrialRecord | None:
        """What a user would deploy: the front's best point by the first objective."""
        front = self.front()
        return front[0] if front else None

    def trial(self, number: int) -> TrialRecord | None:
        return next((r for r in self.trials if r.number == number), None)

    def counts(self) -> dict[str, int]:
        """Measured (and how many of those broke an SLO), failed, and refused before launch."""
        return {
            "measured": sum(r.measured for r in self.trials),
            "missed_slo": sum(r.measured and not r.feasible for r in self.trials),
            "failed": sum(r.state == "fail" for r in self.trials),
            "refused": sum(r.state == "pruned" for r in self.trials),
        }

    def unreported(self) -> list[str]:
        """Notes on measured trials left out of every report for want of an environment record."""
        notes = []
        for r in self.measured():
            lacking = missing(r.attrs.get("environment"))
            if lacking:
                notes.append(f"trial {r.number} is not reported: its result has no environment record ({', '.join(lacking)})")
        return notes

    def searched_knobs(self) -> list[str]:
        """Every knob any trial searched (one the rounds froze later ran at a value all the same)."""
        return sorted({k for r in self.trials for k in r.params})

    def verifications(self) -> dict[int, dict[str, Any]]:
        """Stored verifications by trial number, as their JSON (``autotune.verify.Verification.from_json``)."""
        out = {}
        for key, value in self._study.user_attrs.items():
            if key.startswith(VERIFY_PREFIX) and isinstance(value, dict):
                try:
                    out[int(key[len(VERIFY_PREFIX):])] = value
                except ValueError:
                    continue
        return dict(sorted(out.items()))

    def save_verification(self, trial: int, data: Mapping[str, Any]) -> None:
        self._study.set_user_attr(f"{VERIFY_PREFIX}{trial}", json_safe(dict(data)))

    def round_decisions(self) -> list[dict[str, Any]]:
        from autotune.tuning.rounds import decisions_of

        return decisions_of(self._study)

    def round_importances(self) -> list[dict[str, Any]]:
        from autotune.tuning.rounds import importances_of

        return importances_of(self._study)

    @cached_property
    def importances(self) -> dict[str, float]:
        """Each knob's importance for the first objective over every measured trial (fANOVA)."""
        from autotune.tuning.importance import param_importances

        return param_importances(self._study)

    def importances_by(self, evaluator: str, objective: int) -> dict[str, float]:
        from autotune.tuning.importance import param_importances

        return param_importances(self._study, evaluator=evaluator, objective=objective)


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
