"""The budget of a study, counted across every worker that shares it.

A trial that spent engine time and finished counts; one refused before launch
is free, and so is one that failed for the machine (``autotune.tuning.failfast``). Workers race between looking at the budget and asking for a trial,
and a lost trial is retried in its own slot, so the counting lives in one place.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.tuning.failfast import excused

__all__ = ["BudgetState", "budget_state", "counted", "over_budget", "worker_id"]


@dataclass
class BudgetState:
    done: int
    running: int
    waiting: int
    awaiting_retry: int = 0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def counted(trial: FrozenTrial, excused: Collection[int] = ()) -> bool:
    """A trial that spent engine time and finished, one way or the other, counts against the budget;
    one that failed for the machine, not its configuration (``excused``), does not."""
    if trial.state == TrialState.COMPLETE:
        return True
    return (trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "failed"
            and trial.number not in excused)


def done(study: optuna.Study) -> int:
    free = excused(study)
    return sum(counted(t, free) for t in study.get_trials(deepcopy=False))


def _root(t: FrozenTrial) -> int:
    """The trial a retry stands for: it takes that trial's place in the budget."""
    history = t.system_attrs.get("retry_history")
    return int(history[0]) if history else t.number


def _will_retry(t: FrozenTrial, max_retry: int | None) -> bool:
    return max_retry is None or len(t.system_attrs.get("retry_history", [])) + 1 <= max_retry


def _slots(trials: list[FrozenTrial], max_retry: int | None, free: Collection[int] = ()) -> tuple[set[int], set[int]]:
    """Budget slots by root trial: those taken, and those held by a lost trial until its retry is queued.

    A trial whose worker died keeps its slot, so that a fresh trial asked in the
    moment before its retry is queued cannot push the retry out of the budget.
    """
    lineages: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        lineages.setdefault(_root(t), []).append(t)
    taken, held = set(), set()
    for root, lineage in lineages.items():
        if any(counted(t, free) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in lineage):
            taken.add(root)
            continue
        last = max(lineage, key=lambda t: t.number)
        if last.user_attrs.get("status") == "lost" and _will_retry(last, max_retry):
            taken.add(root)
            held.add(root)
    return taken, held


def budget_state(study: optuna.Study, max_retry: int | None = None) -> BudgetState:
    trials = study.get_trials(deepcopy=False)
    free = excused(study)
    _, held = _slots(trials, max_retry, free)
    return BudgetState(
        done=sum(counted(t, free) for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
        awaiting_retry=len(held),
    )


def over_budget(study: optuna.Study, number: int, budget: int, max_retry: int | None) -> bool:
    """Whether the trials before this one, finished, running or to be retried, already fill the budget.

    Trial numbers are handed out in one order by the storage, so the later
    trial of a race is the one that stands down and none is run beyond the
    budget. A retry ranks as the trial it replaces.
    """
    trials = study.get_trials(deepcopy=False)
    mine = _root(next(t for t in trials if t.number == number))
    taken, _ = _slots([t for t in trials if t.number != number], max_retry, excused(study))
    return sum(1 for root in taken if root < mine) >= budget
