"""The study: Optuna's loop, samplers, storage and heartbeats, rounds, workers and importances.

The only package that imports Optuna. Everything else reads a study through
``StudyResults`` and ``TrialRecord`` and runs configurations through
``autotune.trial``, which knows nothing of Optuna.
"""

from autotune.tuning.budget import BudgetState, budget_state, counted, over_budget, worker_id
from autotune.tuning.importance import EVALUATORS, FEW_TRIALS, param_importances
from autotune.tuning.loop import StudyReporter, StudyRun, TrialFailed, open_study, run_study
from autotune.tuning.quality_cache import QUALITY_ATTR
from autotune.tuning.records import TrialRecord, rank
from autotune.tuning.results import StudyResults
from autotune.tuning.rounds import RoundPlanner, planner_for
from autotune.tuning.sampler import make_sampler, suggest
from autotune.tuning.storage import SPEC_ATTR, fail_stale, load_study, make_storage, quiet_optuna, read_stored_spec
from autotune.tuning.worker import parse_gpus, worker_spec

__all__ = [
    "EVALUATORS",
    "FEW_TRIALS",
    "QUALITY_ATTR",
    "SPEC_ATTR",
    "BudgetState",
    "RoundPlanner",
    "StudyReporter",
    "StudyResults",
    "StudyRun",
    "TrialFailed",
    "TrialRecord",
    "budget_state",
    "counted",
    "fail_stale",
    "load_study",
    "make_sampler",
    "make_storage",
    "open_study",
    "over_budget",
    "param_importances",
    "parse_gpus",
    "quiet_optuna",
    "planner_for",
    "rank",
    "read_stored_spec",
    "run_study",
    "suggest",
    "worker_id",
    "worker_spec",
]
