"""Repeated measurements of one trial: means as the figures, spread and a
Student-t interval beside them, the worst load-generator verdict kept."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from scipy import stats

from autotune.trial import Measurement, combine_repeats


def _run(tps: float, ttft: float, saturated: float, goodput: float | None = None) -> Measurement:
    figures = {
        "output_throughput": tps, "p99_ttft_ms": ttft, "completed": 10, "loadgen_saturated": saturated,
        "mean_tpot_ms": math.nan, "first_error": "HTTP 500: boom",
    }
    summary = None
    if goodput is not None:
        figures["goodput"] = goodput
        summary = {"goodput": goodput, "unit": "req/s", "best": {"load": goodput},
                   "levels": [{"load": goodput, "holds": True}, {"load": 2 * goodput, "holds": False}]}
    per_request = [{"ttft_s": ttft / 1000, "tpot_s": None, "e2e_s": 1.0, "itl_s": []}] * 2
    return Measurement(figures, per_request, summary, telemetry={"notes": ["none"]})


def test_means_spread_and_student_t_interval() -> None:
    tps = [100.0, 110.0, 96.0, 104.0]
    runs = [_run(t, 50.0 + i, 0.0) for i, t in enumerate(tps)]
    combined = combine_repeats(runs)
    figures, per_request, goodput, repeats = combined.figures, combined.per_request, combined.goodput, combined.repeats
    assert figures["output_throughput"] == pytest.approx(statistics.fmean(tps))
    summary = repeats["summary"]["output_throughput"]
    assert summary["n"] == 4 and summary["std"] == pytest.approx(statistics.stdev(tps))
    half = stats.t.ppf(0.975, df=3) * statistics.stdev(tps) / 2
    assert summary["ci95"] == pytest.approx([statistics.fmean(tps) - half, statistics.fmean(tps) + half], rel=1e-3)
    assert [r["output_throughput"] for r in repeats["runs"]] == tps
    assert repeats["n"] == 4
    assert len(per_request) == 8  # attainment is judged on every request measured
    assert goodput is None
    assert figures["first_error"] == "HTTP 500: boom"  # text figures are carried, not averaged
    assert combined.telemetry is not None
    json.dumps(repeats, allow_nan=False)  # NaN figures are stored as null


def test_one_saturated_run_flags_the_trial() -> None:
    combined = combine_repeats([_run(100, 50, 0.0), _run(90, 80, 1.0), _run(95, 60, 0.0)])
    assert combined.figures["loadgen_saturated"] == 1.0
    assert combined.repeats["summary"]["loadgen_saturated"]["mean"] == pytest.approx(1 / 3)


def test_goodput_repeats_keep_every_level() -> None:
    combined = combine_repeats([_run(100, 50, 0.0, goodput=4.0), _run(100, 50, 0.0, goodput=6.0)])
    figures, goodput = combined.figures, combined.goodput
    assert figures["goodput"] == 5.0
    assert goodput is not None and goodput["goodput"] == 5.0 and goodput["unit"] == "req/s"
    assert [g["goodput"] for g in goodput["repeats"]] == [4.0, 6.0]
    assert [(lv["repeat"], lv["load"]) for lv in goodput["levels"]] == [(1, 4.0), (1, 8.0), (2, 6.0), (2, 12.0)]
