"""One configuration, start to finish: its launch, its measurement, its outcome.

Knows nothing of Optuna: the tuning loop, ``measure``, ``verify`` and
``compare`` all run configurations through here.
"""

from autotune.trial.measurement import Measurement, combine_repeats, measure, measure_repeated, read_levels
from autotune.trial.run import QualityHook, TrialOutcome, run_quality_only, run_trial
from autotune.trial.setup import (
    TrialSetup,
    apply_template,
    check,
    feasibility,
    plan,
    setup_from_spec,
    with_workload,
)

__all__ = [
    "Measurement",
    "QualityHook",
    "TrialOutcome",
    "TrialSetup",
    "apply_template",
    "check",
    "combine_repeats",
    "feasibility",
    "measure",
    "measure_repeated",
    "plan",
    "read_levels",
    "run_quality_only",
    "run_trial",
    "setup_from_spec",
    "with_workload",
]
