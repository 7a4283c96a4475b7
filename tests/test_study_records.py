"""What a trial stores, for autotune's reports and for Optuna's own tools.

A real SQLite study is filled through the tuning loop's own writers
(``mark_started``, ``record_outcome``, ``record_slo``) with outcomes recorded on
the real engine (``tests/data/studies/tiny-vllm-cpu.json``): trial 0 meets
``p99(ttft)<300ms`` (68 ms), trial 1 misses it (471 ms).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autotune.spec import load_spec
from autotune.trial import TrialOutcome
from autotune.tuning import SPEC_ATTR, StudyResults, TrialRecord
from autotune.tuning.records import mark_started, record_outcome, record_slo
from autotune.tuning.storage import spec_for_storage
from tests.test_report_html import RECORDED

SLO = "p99(ttft)<300ms"


def recorded_outcome(index: int) -> tuple[dict, TrialOutcome]:
    attrs = json.loads(RECORDED.read_text())["trials"][index]["user_attrs"]
    fields = ("command", "config_file", "env", "log_path", "startup_s", "measure_s", "telemetry", "feasibility")
    return attrs, TrialOutcome("ok", figures=dict(attrs["figures"]), **{k: attrs[k] for k in fields})


def record_study(study_dir: Path, *, slo: str = SLO, name: str = "recorded") -> optuna.Study:
    """A study written the way the tuning loop writes one, from the recorded outcomes."""
    spec = load_spec(None, {"model": "tiny", "slo": slo, "name": name, "study_dir": str(study_dir)})
    study_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{(study_dir / 'study.db').resolve()}",
                                directions=[o.direction for o in spec.objective_list])
    study.set_user_attr(SPEC_ATTR, spec_for_storage(spec))

    def objective(trial: optuna.Trial) -> list[float]:
        attrs, outcome = recorded_outcome(trial.number)
        mark_started(trial, attrs["config"], attrs["environment"], attrs["model_source"], "test")
        record_outcome(trial, outcome, study_dir / "trials" / f"{trial.number:04d}")
        record_slo(trial, {c.text: c.violation(outcome.figures) for c in spec.constraints})
        return [o.value(outcome.figures) for o in spec.objective_list]

    study.optimize(objective, n_trials=2)
    return study


@pytest.fixture()
def study(tmp_path: Path) -> optuna.Study:
    return record_study(tmp_path / "run")


def test_values_are_named_by_their_figures(study: optuna.Study) -> None:
    assert study.metric_names == ["output_throughput", "p99_ttft_ms"]


def test_the_slo_is_a_constraint_in_both_of_optunas_forms(study: optuna.Study) -> None:
    met, missed = study.trials
    # the list optuna-dashboard 0.21 reads, and Optuna 5's named key
    assert met.system_attrs["constraints"][0] < 0 < missed.system_attrs["constraints"][0]
    assert missed.system_attrs[f"constraints:{SLO}"] == pytest.approx(missed.system_attrs["constraints"][0])
    assert missed.user_attrs["slo_met"] is False and missed.user_attrs["slo_missed"] == SLO
    assert met.user_attrs["slo_met"] is True and met.user_attrs["slo_missed"] == ""
    # Optuna's own front leaves out the trial that missed
    assert [t.number for t in study.best_trials] == [0]


def test_key_figures_are_flat_numbers(study: optuna.Study) -> None:
    attrs = study.trials[1].user_attrs
    assert attrs["p99_ttft_ms"] == pytest.approx(attrs["figures"]["p99_ttft_ms"])
    assert attrs["output_throughput"] == pytest.approx(attrs["figures"]["output_throughput"])
    assert attrs["kv_cache_usage_peak"] == pytest.approx(attrs["telemetry"]["kv_cache_usage_peak"])
    assert "request_goodput" not in attrs  # no goodput measured: nothing invented


def test_trials_dataframe_has_a_column_per_figure(study: optuna.Study) -> None:
    pytest.importorskip("pandas", reason="pandas comes with the report extra")
    frame = study.trials_dataframe()
    assert list(frame["values_output_throughput"].round(1)) == [1992.7, 445.2]
    assert list(frame["user_attrs_p99_ttft_ms"].round(0)) == [68.0, 471.0]
    assert list(frame["user_attrs_slo_met"]) == [True, False]


def test_a_study_begun_with_named_constraints_keeps_them(tmp_path: Path) -> None:
    """Optuna's GP sampler wants one set of constraint names across a study's trials."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'old.db'}", directions=["maximize"])
    study.add_trial(optuna.trial.create_trial(value=1.0, system_attrs={"constraints:p99(ttft)<1s": -0.5}))

    def objective(trial: optuna.Trial) -> float:
        record_slo(trial, {"p99(ttft)<1s": 0.25})
        return 2.0

    study.optimize(objective, n_trials=1)
    newest = study.trials[-1]
    assert "constraints" not in newest.system_attrs
    assert newest.system_attrs["constraints:p99(ttft)<1s"] == 0.25
    assert TrialRecord.of(newest).feasible is False


def test_verdicts_say_what_became_of_each_trial(study: optuna.Study) -> None:
    records = [TrialRecord.of(t) for t in study.trials]
    assert [r.verdict_text for r in records] == ["met every SLO", "missed an SLO"]
    failed = TrialRecord(3, "fail", None, {}, {"status": "failed", "reason": "engine exited"})
    measuring = TrialRecord(4, "fail", None, {}, {"status": "failed", "startup_s": 20.0})
    refused = TrialRecord(5, "pruned", None, {}, {"status": "infeasible"})
    assert (failed.verdict_text, measuring.verdict_text, refused.verdict_text) == (
        "failed to start", "failed while measuring", "refused before launch")


def test_baseline_is_read_from_the_study(study: optuna.Study, tmp_path: Path) -> None:
    results = StudyResults.load(tmp_path / "run")
    assert results.baseline() is None
    attrs, _ = recorded_outcome(1)
    study.set_user_attr("baseline", {**attrs, "config": {}, "values": [445.2, 470.6], "feasible": False})
    base = StudyResults.load(tmp_path / "run").baseline()
    assert base is not None and base.values == (445.2, 470.6)
    assert base.figures["output_throughput"] == pytest.approx(445.21, abs=0.01)
    assert base.config == {} and base.verdict_text == "missed an SLO"
    data = StudyResults.load(tmp_path / "run").to_json()
    assert data["baseline"]["values"] == [445.2, 470.6]
    assert [p["number"] for p in data["front"]] == [0]
