"""A verified recommendation against the verified defaults: the ratio, its interval, and whether it is beyond noise.

No engine: starts are written as a verification stores them. The goodputs of
the defaults are those ``benchmarks/data/h100/verdicts.json`` measured for
vLLM's defaults on an H100 (the spread a GPU gives between fresh starts).
"""

from __future__ import annotations

import json
import math

import pytest

from autotune.report import versus_line
from autotune.spec.slo import Objective
from autotune.verify import Start, Verification
from autotune.versus import versus_defaults
from tests.conftest import REPO

GOODPUT = Objective("max:goodput", "maximize", "goodput")
TTFT = Objective("min:p99(ttft)", "minimize", "p99_ttft_ms")
H100_DEFAULTS = json.loads((REPO / "benchmarks/data/h100/verdicts.json").read_text())["defaults"]["goodput"]


def _verified(trial: int, goodputs: list[float], p99: float = 200.0) -> Verification:
    v = Verification(trial=trial, config={}, command=None, repeats_wanted=len(goodputs))
    v.starts = [Start("ok", figures={"goodput": g, "p99_ttft_ms": p99 * (1 + 0.01 * i)}) for i, g in enumerate(goodputs)]
    return v


def test_a_recommendation_well_above_the_defaults_has_its_ratio_inside_an_interval_clear_of_one() -> None:
    defaults = H100_DEFAULTS[:5]
    better = [1.4 * g for g in reversed(H100_DEFAULTS[5:])]
    [v] = versus_defaults([_verified(-1, defaults), _verified(4, better)], GOODPUT)
    geometric = math.exp(sum(map(math.log, better)) / 5 - sum(map(math.log, defaults)) / 5)
    assert v.trial == 4 and v.starts == (5, 5) and v.ratio == pytest.approx(geometric)
    assert 1 < v.low < v.ratio < v.high and v.apart
    line = versus_line(v)
    assert line.startswith(f"trial 4: {v.ratio:.2f}x the defaults' goodput (95% CI ")
    assert "the two 95% intervals are apart" in line


def test_a_recommendation_within_the_noise_is_said_to_be_so() -> None:
    # The same configuration on both sides: ten fresh starts of the defaults, split in two.
    [v] = versus_defaults([_verified(-1, H100_DEFAULTS[::2]), _verified(2, H100_DEFAULTS[1::2])], GOODPUT)
    assert v.low < 1 < v.high and not v.apart
    assert "overlap: not better beyond the noise" in versus_line(v)


def test_a_figure_to_minimise_is_compared_the_other_way_round() -> None:
    base, rec = _verified(-1, [10.0] * 4, p99=300.0), _verified(1, [10.0] * 4, p99=200.0)
    [v] = versus_defaults([base, rec], TTFT)
    assert v.ratio == pytest.approx(1.5) and v.apart and v.low > 1
    assert versus_line(v).startswith("trial 1: 1.50x lower p99 TTFT ms than the defaults")


def test_no_defaults_no_ratio_and_too_few_starts_no_interval() -> None:
    assert versus_defaults([_verified(3, [20.0, 21.0])], GOODPUT) == []
    [v] = versus_defaults([_verified(-1, [20.0]), _verified(3, [26.0, 27.0])], GOODPUT)
    assert v.low is None and v.high is None and not v.apart and v.note
    assert "no interval" in versus_line(v)
    [zero] = versus_defaults([_verified(-1, [0.0, 19.0]), _verified(3, [26.0, 27.0])], GOODPUT)
    assert zero.low is None and "measured 0" in (zero.note or "")


def test_starts_that_all_read_alike_give_an_exact_ratio() -> None:
    # A goodput search reads in steps, so few starts of a steady configuration can all read the same.
    [v] = versus_defaults([_verified(-1, [18.0, 18.0, 18.0]), _verified(5, [27.0, 27.0])], GOODPUT)
    assert v.ratio == pytest.approx(1.5) and v.low == v.high == v.ratio and v.apart
