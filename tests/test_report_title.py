"""The Pareto table's title counts what happened to every trial."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial
from optuna.distributions import IntDistribution

from autotune.report import pareto_table
from autotune.spec import StudySpec
from autotune.tuning import StudyResults

ENV = {"engine": "vllm", "engine_version": "0.32.0", "device": "cpu", "host": "h", "cpu": "x", "python": "3.11"}


def test_title_counts_slo_misses_and_refusals_apart() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    dist = {"max_num_seqs": IntDistribution(1, 64)}
    for value, feasible in ((10.0, True), (12.0, False), (11.0, False)):
        study.add_trial(create_trial(params={"max_num_seqs": 8}, distributions=dist, value=value,
                                     user_attrs={"feasible": feasible, "environment": ENV, "figures": {}}))
    study.add_trial(create_trial(params={"max_num_seqs": 64}, distributions=dist, state=TrialState.PRUNED))
    spec = StudySpec(name="t", model="tiny", slo="ppl<+5%", objectives="max:output_tps")
    title = str(pareto_table(StudyResults(study, spec)).title)
    assert "from 3 measured (2 missed an SLO)" in title, title
    assert "1 refused before launch" in title and "0 failed" in title
