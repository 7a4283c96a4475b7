"""Intervals that allow for clustered misses: a design effect widens them by its square root, and only then do
they cover what requests served in bursts measure.

Synthesised samples with a fixed seed: nothing here depends on this machine's speed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotune.load.intervals import clopper_pearson, order_ranks, quantile_interval
from autotune.load.levels import LevelStopper, judge_level
from autotune.spec import StudySpec, parse_slos

P99 = parse_slos("p99(ttft)<300ms")


def test_a_design_effect_of_one_is_the_textbook_interval() -> None:
    for n in (20, 100, 500):
        assert order_ranks(n, 0.99, design_effect=1.0) == order_ranks(n, 0.99)
    assert clopper_pearson(30, 300, design_effect=1.0) == clopper_pearson(30, 300)


def test_a_design_effect_widens_ranks_by_its_square_root_about_the_same_centre() -> None:
    plain = order_ranks(1000, 0.5)
    wide = order_ranks(1000, 0.5, design_effect=4.0)
    assert wide[0] < plain[0] < plain[1] < wide[1]
    assert (wide[1] - wide[0]) / (plain[1] - plain[0]) == pytest.approx(2.0, rel=0.1)
    assert (wide[0] + wide[1]) / 2 == pytest.approx((plain[0] + plain[1]) / 2, abs=6)
    # Too few effective samples to bound a p99 from above, however many requests were sent.
    assert order_ranks(300, 0.99, design_effect=4.0)[1] == 301


def test_clopper_pearson_counts_effective_requests() -> None:
    assert clopper_pearson(30, 300, design_effect=3.0) == pytest.approx(clopper_pearson(10, 100))
    assert clopper_pearson(300, 300, design_effect=3.0)[1] == 1.0
    with pytest.raises(ValueError, match="design_effect"):
        clopper_pearson(1, 10, design_effect=0.5)


def test_only_the_widened_interval_covers_a_quantile_measured_in_bursts() -> None:
    """Requests served five at a time share one latency: 500 requests carry 100 draws' worth of information."""
    rng = np.random.default_rng(7)
    q, true = 0.9, -math.log(0.1)  # the 90th percentile of Exp(1)
    trials, plain, widened = 600, 0, 0
    for _ in range(trials):
        xs = np.repeat(rng.exponential(size=100), 5).tolist()
        lo, hi = quantile_interval(xs, q)
        plain += lo <= true <= hi
        lo, hi = quantile_interval(xs, q, design_effect=5.0)
        widened += lo <= true <= hi
    assert plain / trials < 0.85  # the textbook interval claims 95% and falls far short
    assert widened / trials >= 0.93


def test_a_level_counts_fewer_requests_under_a_design_effect() -> None:
    clean = [{"ttft_s": 0.1, "tpot_s": 0.01, "e2e_s": 0.6} for _ in range(400)]
    figures = {"p99_ttft_ms": 100.0}
    assert judge_level(P99, figures, clean).verdict == "holds"  # 400 clean requests bound a p99 (368 needed)
    level = judge_level(P99, figures, clean, design_effect=3.0)
    assert (level.verdict, level.holds) == ("uncertain", True)  # ~133 effective: the reading decides
    missed = clean[:380] + [{"ttft_s": 0.5, "tpot_s": 0.01, "e2e_s": 1.0}] * 20  # 5% over the bound
    assert judge_level(P99, {"p99_ttft_ms": 500.0}, missed, design_effect=3.0).verdict == "fails"


def test_a_burst_of_early_misses_no_longer_condemns_a_level_outright() -> None:
    """Nine misses in a row at the start: condemning for independent requests (of the first 368, where a
    level planned at 300 is first looked at), not for a design effect of 3 (which cannot confirm a p99
    within 600, so its first look stays at 300)."""
    from autotune.load.client import RequestRecord

    def feed(stopper: LevelStopper) -> int | None:
        for i in range(600):
            ttft = 0.5 if i < 9 else 0.1
            record = RequestRecord(ok=True, error=None, prompt_tokens=8, output_tokens=4, start=0.0,
                                   ttft_s=ttft, e2e_s=ttft + 0.5)
            if stopper(i, record):
                return i + 1
        return None

    plain = LevelStopper(P99, planned=300, cap=600)
    assert feed(plain) == 9 and "fails whatever" in plain.reason
    clustered = LevelStopper(P99, planned=300, cap=600, design_effect=3.0)
    stopped = feed(clustered)
    assert stopped is not None and stopped >= 300 and "fails" not in clustered.reason, clustered.reason


def test_the_spec_takes_a_design_effect_of_at_least_one() -> None:
    spec = StudySpec(objectives="max:goodput", slo="p99(ttft)<300ms", goodput={"design_effect": 3})
    assert spec.goodput is not None and spec.goodput.design_effect == 3.0
    assert StudySpec(objectives="max:goodput", slo="p99(ttft)<300ms").goodput.design_effect == 1.0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="design_effect"):
        StudySpec(objectives="max:goodput", slo="p99(ttft)<300ms", goodput={"design_effect": 0.5})
