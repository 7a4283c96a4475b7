"""A study as the reports read it: its trials, and what is computed from them once.

What a report draws (the front, the best trial, the importances) is computed
here once, so the console, the HTML page and the PNG show the same thing; the
study attributes under which verifications are kept are known here alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna

from autotune.environment import missing
from autotune.json_safe import json_safe
from autotune.spec import StudySpec
from autotune.tuning.importance import DEFAULT_EVALUATOR, FEW_TRIALS, param_importances
from autotune.tuning.records import TrialRecord, rank
from autotune.tuning.rounds import decisions_of, importances_of
from autotune.tuning.storage import load_study

__all__ = ["StudyResults"]

VERIFY_PREFIX = "verify:"  # study attribute of one trial's verification
BASELINE_ATTR = "baseline"  # study attribute: the engine's defaults, measured first, as a trial's attributes


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
        study, spec = load_study(study_dir, storage=storage, name=name)
        return cls(study, spec)

    def reload(self) -> "StudyResults":
        """The same study read again from its storage (after a verification stored its starts)."""
        return StudyResults(self._study, self.spec)

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

    def machine_failures(self) -> set[int]:
        """Trials that failed to start the same way as their neighbours: the machine's failure, not theirs."""
        from autotune.tuning.failfast import MACHINE_ATTR

        return {int(n) for n in (self._study.user_attrs.get(MACHINE_ATTR) or {}).get("trials", [])}

    def engine_time_line(self) -> str | None:
        """Where the study's engine time went: starting engines, under load, other."""
        from autotune.tuning.bill import engine_time_line

        device = next((r.environment.get("device") for r in self.trials if r.environment.get("device")), "cpu")
        return engine_time_line(self._study, device)

    def baseline(self) -> TrialRecord | None:
        """The engine's defaults as measured for this study, when it measured them: the
        point every recommendation is read against ("1.3x the defaults' goodput").

        Kept as a study attribute holding what a trial keeps (config, figures,
        environment, values, feasible, ...), so it is never a point Optuna samples from.
        """
        data = self._study.user_attrs.get(BASELINE_ATTR)
        if not isinstance(data, Mapping):
            return None
        values = data.get("values")
        attrs = {k: v for k, v in data.items() if k not in ("values", "number", "state", "params")}
        return TrialRecord(
            number=int(data.get("number", -1)),
            state=str(data.get("state", "complete" if data.get("figures") else "fail")),
            values=tuple(float(v) for v in values) if isinstance(values, (list, tuple)) and values else None,
            params=dict(data.get("params") or {}),
            attrs=attrs,
        )

    def counts(self) -> dict[str, int]:
        """Measured (and how many of those missed an SLO), failed (to start, or while
        measuring), and refused before launch: each trial in one of these, by its verdict."""
        verdicts = [r.verdict for r in self.trials]
        return {
            "measured": sum(r.measured for r in self.trials),
            "missed_slo": verdicts.count("missed"),
            "failed": sum(r.state == "fail" for r in self.trials),
            "failed_to_start": verdicts.count("failed_to_start"),
            "refused": verdicts.count("refused"),
        }

    def slo_texts(self) -> list[str]:
        """The study's SLOs, in the order their constraints are stored."""
        return [c.text for c in self.spec.constraints] if self.spec is not None else []

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
        return decisions_of(self._study)

    def round_importances(self) -> list[dict[str, Any]]:
        return importances_of(self._study)

    @cached_property
    def importances(self) -> dict[str, float]:
        """Each knob's importance for the first objective over every measured trial (fANOVA,
        the one method every report shows; below ``FEW_TRIALS`` trials it is a hint)."""
        return param_importances(self._study)

    def importance_note(self) -> str | None:
        """Why the importances should be read as a hint, when they should."""
        n = len(self.measured())
        if n < FEW_TRIALS:
            return (f"{n} measured trials are few: read the importances as a hint "
                    f"(below {FEW_TRIALS} trials their ranking is unstable)")
        return None

    def importances_by(self, evaluator: str, objective: int) -> dict[str, float]:
        return param_importances(self._study, evaluator=evaluator, objective=objective)

    def to_json(self, price: float | None = None) -> dict[str, Any]:
        """The study as ``review --json`` prints it: what was asked, the front, the
        baseline, every trial's verdict, the importances and the verifications."""
        spec = self.spec
        baseline = self.baseline()
        return json_safe({
            "study": self.name,
            "model": spec.model if spec else None,
            "engine": spec.engine.name if spec else None,
            "objectives": [{"text": o.text, "metric": o.metric, "direction": o.direction}
                           for o in spec.objective_list] if spec else [],
            "slo": self.slo_texts(),
            "workload": spec.workload.model_dump(mode="json") if spec else None,
            "counts": self.counts(),
            "front": [_summary(r) for r in self.front()],
            "best": _summary(self.best()) if self.best() else None,
            "baseline": _summary(baseline) if baseline else None,
            "trials": [{"number": r.number, "verdict": r.verdict_text, "reason": r.reason} for r in self.trials],
            "importances": {"method": DEFAULT_EVALUATOR, "objective": spec.objective_list[0].text if spec else None,
                            "values": self.importances, "note": self.importance_note()},
            "verifications": self.verifications(),
            "notes": self.unreported(),
        })


def _summary(r: TrialRecord) -> dict[str, Any]:
    """One point as a script reads it: its configuration, values, figures and verdicts."""
    return {
        "number": r.number, "verdict": r.verdict_text, "config": r.config,
        "values": list(r.values) if r.values else None, "feasible": r.feasible, "slo": r.slo,
        "figures": r.figures, "command": r.get("command"), "config_file": r.get("config_file"),
        "env": r.get("env"), "environment": r.environment, "log_path": r.get("log_path"),
    }
