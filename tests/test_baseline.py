"""The engine's defaults as the study's reference: the incumbent a goodput search starts from,
the reading that is measured again, and the study's last word against the defaults."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from autotune.spec import load_spec
from autotune.tuning.baseline import BASELINE_ATTR, goodput_reference, incumbent_violation, versus_defaults
from autotune.tuning.records import TrialRecord, record_slo

DIST = {"max_num_seqs": IntDistribution(1, 64)}
LEVELS = lambda good, bad: {"levels": [{"load": good, "holds": True}, {"load": bad, "holds": False}]}  # noqa: E731


def _study(objectives: list[str], tmp_path: Path, name: str = "s") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name=name, directions=objectives)


def _add(study: optuna.Study, mns: int, goodput: float, feasible: bool = True) -> None:
    study.add_trial(create_trial(
        params={"max_num_seqs": mns}, distributions=DIST, values=[goodput] * len(study.directions),
        user_attrs={"feasible": feasible, "config": {"max_num_seqs": mns}, "figures": {"goodput": goodput}},
    ))


def _spec(objectives: str, **goodput: object):  # type: ignore[no-untyped-def]
    return load_spec(None, {"slo": "p99(ttft)<300ms", "objectives": objectives, "goodput": {"start": 4, **goodput}})


def test_the_incumbent_is_the_best_feasible_goodput_the_defaults_included(tmp_path: Path) -> None:
    study = _study(["maximize"], tmp_path)
    study.set_user_attr(BASELINE_ATTR, {"status": "ok", "feasible": True, "figures": {"goodput": 12.0}})
    _add(study, 8, 10.0)
    _add(study, 16, 30.0, feasible=False)  # missed an SLO: it is no incumbent
    incumbent, _ = goodput_reference(study, _spec("max:goodput"), {"max_num_seqs": 32})
    assert incumbent == 12.0
    _add(study, 24, 14.0)
    assert goodput_reference(study, _spec("max:goodput"), {"max_num_seqs": 32})[0] == 14.0
    # Switched off, or a study with another objective beside goodput: every trial is searched in full.
    assert goodput_reference(study, _spec("max:goodput", from_incumbent=False), {})[0] is None
    multi = _study(["maximize", "minimize"], tmp_path, name="multi")
    _add(multi, 8, 10.0)
    assert goodput_reference(multi, _spec("max:goodput, min:p99(ttft)"), {"max_num_seqs": 9})[0] is None


def test_stopped_and_searched_trials_carry_one_set_of_constraints_for_the_gp_sampler(tmp_path: Path) -> None:
    # Optuna's GP sampler models every constraint across all trials and refuses trials whose
    # constraint names differ: a constraint on the stopped trials alone ended the study at its first GP draw.
    spec = _spec("max:goodput")
    sampler = optuna.samplers.GPSampler(seed=0, n_startup_trials=3)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'gp.db'}", direction="maximize", sampler=sampler)
    for bound, goodput in ((None, 12.0), (12.0, 12.0), (None, 14.0), (14.0, 14.0)):  # searched, stopped, ...
        trial = study.ask()
        trial.suggest_int("max_num_seqs", 1, 64, log=True)
        record_slo(trial, {"p99(ttft)<300ms": -0.1, **incumbent_violation(spec, bound)})
        study.tell(trial, goodput)
    assert len({tuple(sorted(t.constraints)) for t in study.trials}) == 1
    assert [t.user_attrs["feasible"] for t in study.trials] == [True, False, True, False]
    drawn = study.ask()  # past the startup trials: the GP's own draw, from the values and the constraints
    assert 1 <= drawn.suggest_int("max_num_seqs", 1, 64, log=True) <= 64
    # With several objectives, or the incumbent-first search switched off, no trial is stopped at it.
    assert incumbent_violation(_spec("max:goodput, min:p99(ttft)"), None) == {}
    assert incumbent_violation(_spec("max:goodput", from_incumbent=False), 12.0) == {}


def test_a_reading_far_below_a_one_knob_neighbour_is_measured_again(tmp_path: Path) -> None:
    study = _study(["maximize"], tmp_path)
    _add(study, 8, 20.0)
    _, recheck = goodput_reference(study, _spec("max:goodput"), {"max_num_seqs": 9})
    assert recheck == 0.85 * 20.0
    # Two knobs away is no neighbour; with nothing one knob away, nor defaults, nothing to compare with.
    _, none = goodput_reference(study, _spec("max:goodput"), {"max_num_seqs": 9, "block_size": 32})
    assert none is None
    study.set_user_attr(BASELINE_ATTR, {"status": "ok", "feasible": False, "figures": {"goodput": 40.0}})
    assert goodput_reference(study, _spec("max:goodput"), {"max_num_seqs": 9, "block_size": 32})[1] == 0.85 * 40.0


def _record(number: int, goodput: float, good: float, bad: float) -> TrialRecord:
    return TrialRecord(number, "complete", (goodput,), {}, {"figures": {"goodput": goodput}, "goodput": LEVELS(good, bad)})


def _base(**attrs: object) -> TrialRecord:
    return TrialRecord(-1, "complete", None, {}, {"status": "ok", **attrs})


def test_versus_defaults_gives_the_interval_of_the_goodput_brackets() -> None:
    base = _base(figures={"goodput": 10.0}, goodput=LEVELS(10.0, 12.0))
    beat = versus_defaults(_record(3, 15.0, 15.0, 16.0), base, "goodput", maximize=True)
    # The best lies in [15, 16), the defaults in [10, 12): the ratio in (15/12, 16/10).
    assert beat == "best: trial 3, 1.50x the defaults' goodput (95% CI 1.25..1.60)"
    close = versus_defaults(_record(4, 11.0, 11.0, 13.0), base, "goodput", maximize=True)
    assert close.startswith("nothing beat the defaults beyond the measurement's noise (best: trial 4, 1.10x")


def test_versus_defaults_says_when_there_is_no_interval() -> None:
    base = _base(figures={"output_throughput": 100.0})
    best = TrialRecord(2, "complete", (130.0,), {}, {"figures": {"output_throughput": 130.0}})
    line = versus_defaults(best, base, "output_throughput", maximize=True)
    assert "1.30x" in line and "no interval" in line
    repeated = TrialRecord(2, "complete", (130.0,), {}, {
        "figures": {"output_throughput": 130.0},
        "repeats": {"summary": {"output_throughput": {"ci95": [120.0, 140.0]}}},
    })
    base_rep = _base(figures={"output_throughput": 100.0},
                     repeats={"summary": {"output_throughput": {"ci95": [95.0, 105.0]}}})
    assert versus_defaults(repeated, base_rep, "output_throughput", maximize=True) == (
        f"best: trial 2, 1.30x the defaults' out tok/s (95% CI {120 / 105:.2f}..{140 / 95:.2f})")
    assert "not measured" in versus_defaults(best, None, "output_throughput", True)
    # Below the defaults on one reading each: plainly no win, whatever an interval would say.
    worse = TrialRecord(0, "complete", (86.0,), {}, {"figures": {"output_throughput": 86.0}})
    assert versus_defaults(worse, base, "output_throughput", maximize=True) == (
        "nothing beat the defaults (best: trial 0, 0.86x the defaults' out tok/s, one reading each)")


def test_verify_can_take_the_defaults_as_a_candidate(tmp_path: Path) -> None:
    from autotune.errors import UserError
    from autotune.tuning import StudyResults
    from autotune.verify import candidates

    env = {"engine": "vllm", "engine_version": "0.32.0", "autotune": "0.1.0", "python": "3.11", "host": "h",
           "device": "cpu"}
    study = _study(["maximize"], tmp_path)
    results = StudyResults(study, _spec("max:goodput"))
    with pytest.raises(UserError, match="did not measure the engine's defaults"):
        candidates(results, defaults=True)
    study.set_user_attr(BASELINE_ATTR, {"status": "ok", "config": {}, "feasible": True, "values": [9.0],
                                        "figures": {"goodput": 9.0}, "environment": env})
    chosen, notes = candidates(StudyResults(study, _spec("max:goodput")), defaults=True)
    assert [c.number for c in chosen] == [-1] and chosen[0].config == {} and notes == []
