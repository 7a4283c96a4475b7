"""A broken machine told apart from bad configurations, before it burns the budget.

When the engine cannot start for a reason that has nothing to do with the
configuration (an engine argument the engine rejects, a library the machine
cannot load, an environment that breaks Python), every trial fails the same
way in seconds and a study reports its whole budget as failed configurations.
Configurations fail differently; a machine fails identically. So when
consecutive trials of different configurations fail to start with the same
error line, the study stops, and those trials are not charged to the budget:
fixed, the same command resumes with the budget whole.

The streak is this run's alone: a resumed study starts with none.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import optuna

from autotune.errors import RunFailed

__all__ = ["MACHINE_ATTR", "StartFailures", "excused"]

#: Study attribute: the trials that failed for the machine, and why; the budget does not count them.
MACHINE_ATTR = "autotune_machine_failures"


class StartFailures:
    """This run's trials, seen in order; stops the study on a streak of identical start failures."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reason: str | None = None
        self.streak: list[tuple[int, str]] = []  # (trial number, configuration)

    def see(self, number: int, config: Mapping[str, Any], failed_to_start: bool, reason: str | None) -> bool:
        """Records one finished trial; True when the streak now blames the machine.

        A trial refused before launch neither extends nor breaks the streak: it
        never met the machine.
        """
        if not failed_to_start or not reason:
            self.reason, self.streak = None, []
            return False
        if reason != self.reason:
            self.reason, self.streak = reason, []
        self.streak.append((number, json.dumps(dict(config), sort_keys=True, default=str)))
        return self.limit > 0 and len({c for _, c in self.streak}) >= self.limit

    def stop(self, study: optuna.Study) -> RunFailed:
        """Excuses the streak's trials from the budget; the error that ends the study."""
        numbers = [n for n, _ in self.streak]
        before = study.user_attrs.get(MACHINE_ATTR) or {}
        kept = sorted(set(before.get("trials", [])) | set(numbers))
        study.set_user_attr(MACHINE_ATTR, {"trials": kept, "reason": self.reason})
        return RunFailed(
            f"stopped: {len(numbers)} trials of different configurations failed to start with the same error, "
            f"so it looks like the machine, not the configurations: {self.reason} "
            f"(trials {', '.join(map(str, numbers))} are not counted; fix it and run the same command to resume)"
        )


def excused(study: optuna.Study) -> set[int]:
    """Trials that failed for the machine: kept, with their reasons, but free."""
    found = study.user_attrs.get(MACHINE_ATTR) or {}
    return {int(n) for n in found.get("trials", [])}
