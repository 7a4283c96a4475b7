"""Load levels as statistical tests: intervals, verdicts, the stopping rule, the backlog check, incumbent-first search.

Everything here runs on synthesised per-request records, so every verdict is
exact and nothing depends on this machine's speed.  Reference values of the
intervals come from published tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autotune.load.backlog import backlog_verdict, block_trend
from autotune.load.client import RequestRecord
from autotune.load.goodput import GoodputResult, search_goodput
from autotune.load.levels import (
    LevelStopper,
    clopper_pearson,
    design_effect,
    judge_level,
    quantile_interval,
)
from autotune.load.runner import poisson_offsets
from autotune.load.stats import _sustained_ratio, per_request_view
from autotune.spec import parse_slos

P99 = parse_slos("p99(ttft)<300ms")
AT99 = parse_slos("ttft<300ms@99%")
AT95 = parse_slos("ttft<300ms@95%")

# --------------------------------------------------------------------------- intervals


def _timed(misses: set[int], n: int = 160) -> list[dict[str, float]]:
    """n requests a tenth of a second apart, listed latest first; those in ``misses`` take 0.5 s."""
    return [{"start_s": 0.1 * i, "ttft_s": 0.5 if i in misses else 0.1, "e2e_s": 1.0} for i in reversed(range(n))]


def test_design_effect_tells_bursts_of_misses_from_scattered_ones() -> None:
    (slo,) = P99
    scattered = design_effect(slo, _timed(set(range(3, 160, 8))))  # one miss in every run of 8
    burst = design_effect(slo, _timed(set(range(40, 60))))  # the same 20 misses, together in time
    assert scattered is not None and burst is not None
    assert scattered < 1 < burst
    # All 20 in one block of 20 among 8: shares 1, 0 x 7; variance 1/8, against 0.125 * 0.875 / 20.
    assert burst == pytest.approx((1 / 8) / (0.125 * 0.875 / 20))
    # A request that never completed is a miss too.
    failed = _timed(set()) + [{"start_s": 0.05, "ttft_s": None, "e2e_s": None}]
    assert design_effect(slo, failed) is not None
    assert design_effect(slo, _timed(set())) is None  # nothing missed: nothing to tell
    assert design_effect(slo, _timed({1}, n=15)) is None  # under two requests a block
    assert design_effect(parse_slos("mean(ttft)<300ms")[0], _timed({1, 2})) is None  # not a counted SLO


def test_quantile_interval_uses_the_textbook_order_statistics() -> None:
    """95% intervals of the median: X(40)..X(61) for n=100, X(6)..X(15) for n=20 (Conover, Table A3)."""
    assert quantile_interval(list(range(1, 101)), 0.5) == (40, 61)
    assert quantile_interval([float(i) for i in range(1, 21)], 0.5) == (6.0, 15.0)
    assert quantile_interval([5.0, 1.0, 3.0], 0.99) == (3.0, math.inf)  # three samples cannot bound a p99 above


def test_quantile_interval_covers_the_true_quantile() -> None:
    rng = np.random.default_rng(0)
    true = -math.log(0.01)  # p99 of Exp(1)
    trials, misses_below, misses_above = 2000, 0, 0
    for _ in range(trials):
        lo, hi = quantile_interval(rng.exponential(size=500).tolist(), 0.99)
        misses_below += hi < true
        misses_above += lo > true
    # Each side may err at most 2.5% (the interval is conservative: discrete ranks).
    assert misses_below / trials <= 0.035 and misses_above / trials <= 0.035


@pytest.mark.parametrize(
    ("k", "n", "lower", "upper"),
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 5 (exact, Clopper-Pearson).
    [(81, 263, 0.2527, 0.3676), (15, 148, 0.0578, 0.1617), (0, 20, 0.0, 0.1684), (1, 29, 0.0009, 0.1776)],
)
def test_clopper_pearson_matches_published_values(k: int, n: int, lower: float, upper: float) -> None:
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(lower, abs=6e-5) and hi == pytest.approx(upper, abs=6e-5)


def test_zero_misses_need_368_requests_for_a_confident_99_percent() -> None:
    """The figure the levels module quotes: 0.025 ** (1 / n) >= 0.99 from n = 368."""
    assert clopper_pearson(367, 367)[0] < 0.99 <= clopper_pearson(368, 368)[0]


# --------------------------------------------------------------------------- verdicts


def rows(ttfts: Sequence[float | None], starts: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Per-request rows as endpoint_measure returns them; None is a failed request."""
    out = []
    for i, t in enumerate(ttfts):
        row: dict[str, Any] = {"ttft_s": t, "tpot_s": 0.01, "e2e_s": None if t is None else t + 0.5, "itl_s": [0.01]}
        if starts is not None:
            row["start_s"] = starts[i]
        out.append(row)
    return out


def spread(n: int, low: float, high: float, misses: int = 0, miss: float = 0.5) -> list[float]:
    """``n`` TTFTs evenly between low and high, the last ``misses`` of them at ``miss``."""
    return [low + (high - low) * i / max(1, n - 1) for i in range(n - misses)] + [miss] * misses


@pytest.mark.parametrize(
    ("slos", "ttfts", "verdict", "holds", "strict"),
    [
        (P99, spread(400, 0.10, 0.20), "holds", True, True),  # 400 clean requests bound p99 below 300 ms
        (P99, spread(400, 0.10, 0.20, misses=20), "fails", False, False),  # 5% over the bound
        (P99, spread(300, 0.10, 0.20, misses=2), "uncertain", True, False),  # 0.7% over, 300 requests
        (P99, spread(300, 0.10, 0.20, misses=5), "uncertain", False, False),  # the point estimate misses too
        (AT95, spread(100, 0.10, 0.20), "holds", True, True),
        (AT95, spread(100, 0.10, 0.20, misses=12), "fails", False, False),
        (AT95, spread(100, 0.10, 0.20, misses=4), "uncertain", True, False),
        (AT99, spread(200, 0.10, 0.20), "uncertain", True, False),  # perfect, but 200 cannot confirm 99%
    ],
)
def test_level_verdicts(slos: list, ttfts: list[float], verdict: str, holds: bool, strict: bool) -> None:
    level = judge_level(slos, {"p99_ttft_ms": 1000 * float(np.percentile(ttfts, 99))}, rows(ttfts))
    assert (level.verdict, level.holds) == (verdict, holds)
    assert judge_level(slos, {"p99_ttft_ms": 0.0}, rows(ttfts), conservative=True).holds is strict
    slo = level.slos[slos[0].text]
    assert slo.n == len(ttfts) == level.requests
    assert slo.lower is not None and slo.upper is not None and slo.lower <= slo.estimate <= slo.upper


def test_percentile_interval_is_reported_in_seconds() -> None:
    ttfts = spread(400, 0.10, 0.20)
    slo = judge_level(P99, {"p99_ttft_ms": 199.0}, rows(ttfts)).slos["p99(ttft)<300ms"]
    assert slo.kind == "percentile" and slo.bound == pytest.approx(0.3)
    assert (slo.lower, slo.upper) == quantile_interval(ttfts, 0.99)
    assert slo.upper < 0.3


def test_failed_requests_are_misses() -> None:
    """A p99 over the requests that succeeded would hide 3% of errors; they count as infinitely slow."""
    ttfts: list[float | None] = [*spread(388, 0.10, 0.20), *[None] * 12]
    level = judge_level(P99, {"p99_ttft_ms": 200.0}, rows(ttfts))
    assert level.verdict == "fails" and not level.holds
    assert level.slos["p99(ttft)<300ms"].estimate == math.inf


def test_aggregate_slos_keep_their_point_judgement() -> None:
    slos = parse_slos("mean(tpot)<20ms, output_tps>100")
    good = judge_level(slos, {"mean_tpot_ms": 10.0, "output_throughput": 150.0}, rows([0.1] * 10))
    assert good.verdict == "holds" and {s.kind for s in good.slos.values()} == {"aggregate"}
    assert judge_level(slos, {"mean_tpot_ms": 30.0, "output_throughput": 150.0}, rows([0.1] * 10)).verdict == "fails"


# --------------------------------------------------------------------------- stopping a level


def record(ttft: float | None) -> RequestRecord:
    return RequestRecord(ok=ttft is not None, error=None, prompt_tokens=8, output_tokens=4, start=0.0,
                         ttft_s=ttft, e2e_s=None if ttft is None else ttft + 0.5)


def feed(stopper: LevelStopper, ttfts: Sequence[float | None], order: Sequence[int] | None = None) -> int | None:
    """Hand the stopper each finished request; the number handed in when it said stop, or None."""
    for count, index in enumerate(order if order is not None else range(len(ttfts)), start=1):
        if stopper(index, record(ttfts[index])):
            return count
    return None


def test_a_condemned_level_stops_before_its_planned_requests() -> None:
    stopper = LevelStopper(P99, planned=300, cap=600)
    ttfts = [0.5 if i % 10 == 0 else 0.1 for i in range(600)]  # 10% over the bound
    stopped = feed(stopper, ttfts)
    assert stopped is not None and stopped < 100
    assert stopper.decided_at is None and "fails whatever" in stopper.reason
    # Cut short, the level must still fail when judged: no remaining request could have saved it.
    figures = {"stopped_early": 1.0, "cut_short_of": 300}
    assert judge_level(P99, figures, rows(ttfts[:stopped])).verdict == "fails"


def test_it_never_stops_on_requests_beyond_the_look() -> None:
    """Misses among requests sent after the planned ones do not condemn the planned sample."""
    stopper = LevelStopper(P99, planned=400, cap=400)
    ttfts = [0.1] * 400
    assert feed(stopper, ttfts, order=range(399)) is None
    assert stopper(399, record(0.1)) and stopper.decided_at == 400 and stopper.reason == "holds at 400 requests"


def test_a_settled_level_stops_at_its_plan() -> None:
    stopper = LevelStopper(P99, planned=400, cap=800)
    assert feed(stopper, [0.1] * 800) == 400 and stopper.decided_at == 400


def test_a_level_planned_too_short_to_hold_looks_first_where_it_can() -> None:
    """300 clean requests cannot confirm a p99 (368 can): a look at 300 could only extend a level that holds."""
    stopper = LevelStopper(P99, planned=300, cap=600)
    assert stopper.looks == [368, 518, 600]
    assert feed(stopper, [0.1] * 600) == 368 and stopper.decided_at == 368
    assert stopper.reason == "holds at 368 requests"
    # Where even the cap cannot confirm it, the plan stands: the level is left to its point estimates.
    assert LevelStopper(P99, planned=300, cap=360).looks == [300, 360]
    assert LevelStopper(P99, planned=400, cap=800).looks[0] == 400  # planned enough already


def test_an_uncertain_level_is_extended_when_more_requests_can_settle_it() -> None:
    stopper = LevelStopper(P99, planned=300, cap=900)
    ttfts = [0.5 if i == 100 else 0.1 for i in range(900)]  # one miss: uncertain at 368 and 518, holds at 668
    assert feed(stopper, ttfts) == 668
    assert stopper.looks == [368, 518, 668, 818, 900] and stopper.decided_at == 668


def test_an_uncertain_level_is_not_extended_in_vain() -> None:
    stopper = LevelStopper(P99, planned=300, cap=600)
    ttfts = [0.5 if i in (100, 200) else 0.1 for i in range(600)]  # 0.54%: uncertain at 368 and at 600 alike
    assert feed(stopper, ttfts) == 368
    assert stopper.decided_at == 368 and "would not settle" in stopper.reason


def test_the_prefix_decides_not_the_fastest_requests() -> None:
    """Requests finish out of order; the look waits for every one of the first ``planned``."""
    stopper = LevelStopper(AT95, planned=100, cap=100)
    order = [*range(1, 100), 0]
    assert feed(stopper, [0.1] * 100, order) == 100


# --------------------------------------------------------------------------- backlog


def timed_rows(
    sends: Sequence[float], ttft: Callable[[float, int], float], e2e: Callable[[float, int], float]
) -> tuple[list[dict[str, Any]], list[RequestRecord]]:
    records = [
        RequestRecord(ok=True, error=None, prompt_tokens=1024, output_tokens=256, start=t, ttft_s=ttft(t, i),
                      e2e_s=e2e(t, i), tpot_s=0.01)
        for i, t in enumerate(sends)
    ]
    view = per_request_view(records)
    for row, r in zip(view, records, strict=True):
        row["start_s"] = r.start
    return view, records


def test_a_level_with_margin_is_not_failed_by_the_sustained_check() -> None:
    """H200, Llama-3.1-8B shape: 15.36 req/s held p99 TTFT 141 ms against 300 ms, yet its
    sustained ratio of 0.78 failed it.  Requests of ~100-141 ms whose latency steps up 30 ms
    two thirds into the level: the old ratio reads that as a backlog, a slope does not."""
    rate = 15.36
    sends = poisson_offsets(round(rate * 15), rate, 0)
    jitter = np.random.default_rng(3).uniform(0.0, 0.006, len(sends))

    def latency(t: float, i: int) -> float:
        return (0.100 if t < 10.0 else 0.135) + float(jitter[i])

    view, records = timed_rows(sends, latency, lambda t, i: latency(t, i) + 0.002)
    old = _sustained_ratio(records, rate)
    assert old == pytest.approx(0.78, abs=0.03)  # what failed the level
    p99 = 1000 * float(np.percentile([r["ttft_s"] for r in view], 99))
    assert 135 < p99 < 145
    level = judge_level(P99, {"offered_rate": rate, "p99_ttft_ms": p99, "sustained_ratio": old}, view)
    assert level.holds and level.verdict == "uncertain"  # 230 requests cannot confirm a p99, the point estimate holds
    assert level.backlog["verdict"] == "holds" and level.backlog["source"] == "client latency"
    assert level.backlog["served_upper"] > 0.99 and level.violations["sustained"] < 0
    assert level.backlog["rising"]["p99(ttft)<300ms"]["projected"] < 0.3  # rising a little, with margin


def _in_system(rows: Sequence[dict[str, Any]], step: float = 0.26) -> dict[str, list[float]]:
    """Requests sent and not yet finished, every ``step`` s: the engine's waiting + running as its client sees it."""
    starts = np.array([r["start_s"] for r in rows])
    ends = starts + np.array([r["e2e_s"] for r in rows])
    t = np.arange(0.0, float(starts.max()), step)
    return {"t": t.tolist(), "waiting": [float(((starts <= x) & (ends > x)).sum()) for x in t],
            "running": [0.0] * len(t)}


def _recorded(name: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any]]:
    """A level recorded on a GPU (tests/data/levels): the file, its requests as rows, its SLOs."""
    rec = json.loads((Path(__file__).parent / "data" / "levels" / f"{name}.json").read_text())
    rows = [{"start_s": s, "ttft_s": a, "tpot_s": b, "e2e_s": c}
            for s, a, b, c in zip(rec["start_s"], rec["ttft_s"], rec["tpot_s"], rec["e2e_s"], strict=True)]
    return rec, rows, parse_slos(rec["slo"])


def test_a_batch_still_filling_is_no_backlog() -> None:
    """H100, recorded: 24.5 req/s held p99 TTFT 154 ms and p99 TPOT 23.6 ms against 25, with at most one
    request ever waiting in the engine, yet the old ramp (1.5 latencies of the first requests, 2.8 s)
    judged from 4.2 s, while each request still joined a fuller batch, and read the climb as serving 62%
    of arrivals. Judged after the latency has settled, the level holds, from either source."""
    rec, rows, slos = _recorded("h100_filling_batch")
    early = [r["e2e_s"] for r in rows if r["start_s"] < rows[-1]["start_s"] / 3]
    assert float(np.median(early)) < 0.6 * float(np.median([r["e2e_s"] for r in rows]))  # the latency kept rising
    for queue in (None, _in_system(rows)):
        level = judge_level(slos, {"offered_rate": rec["rate"]}, rows, queue=queue)
        assert {s.verdict for s in level.slos.values()} == {"holds"}
        assert level.backlog["verdict"] == "holds", level.backlog.get("reason")
        assert level.verdict == "holds" and level.holds
        assert level.backlog["window_s"][0] > 1.5 * float(np.median(early))  # judged after the fill, not from 4.2 s


def test_a_growing_batch_fails_however_good_its_ttft() -> None:
    """20 req/s at a capacity of 14: every request takes longer than the one before, TTFT stays low."""
    rate = 20.0
    sends = poisson_offsets(400, rate, 1)
    view, records = timed_rows(sends, lambda t, i: 0.08, lambda t, i: 2.0 + (rate / 14 - 1) * t)
    level = judge_level(P99, {"offered_rate": rate, "p99_ttft_ms": 80.0}, view)
    assert level.slos["p99(ttft)<300ms"].verdict == "holds"
    assert level.verdict == "fails" and not level.holds
    assert level.backlog["served"] == pytest.approx(14 / 20, abs=0.02)
    assert "served at most" in level.backlog["reason"]


def test_the_engine_queue_judges_where_it_is_known() -> None:
    rate = 20.0
    sends = poisson_offsets(400, rate, 2)
    view, _ = timed_rows(sends, lambda t, i: 0.08, lambda t, i: 2.0)  # the client sees nothing wrong
    t = [0.25 * i for i in range(85)]
    noise = np.random.default_rng(4).normal(0, 3, len(t))
    steady = {"t": t, "waiting": [0.0] * len(t), "running": [40 + float(x) for x in noise]}
    growing = {"t": t, "waiting": [max(0.0, 6 * (s - 4)) for s in t], "running": [40.0] * len(t)}
    held = judge_level(P99, {"offered_rate": rate}, view, queue=steady)
    assert held.backlog["source"] == "engine queue" and held.backlog["verdict"] == "holds"
    failed = judge_level(P99, {"offered_rate": rate}, view, queue=growing)
    assert failed.backlog["source"] == "engine queue" and failed.verdict == "fails"
    assert failed.backlog["served"] == pytest.approx(1 - 6 / rate, abs=0.03)


def test_ttft_rising_through_a_short_level_fails_it() -> None:
    """It only holds because the run stopped first: at this pace p99 crosses 300 ms one level-length later."""
    rate = 16.0
    sends = poisson_offsets(240, rate, 5)
    view, _ = timed_rows(sends, lambda t, i: 0.05 + 0.014 * t, lambda t, i: 2.05 + 0.014 * t)
    p99 = 1000 * float(np.percentile([r["ttft_s"] for r in view], 99))
    assert p99 < 300
    level = judge_level(P99, {"offered_rate": rate, "p99_ttft_ms": p99}, view)
    assert level.verdict == "fails" and "rising" in level.backlog["reason"]
    assert level.backlog["served"] > 0.95  # not a shortfall of service: the trend of the SLO's own metric


def test_a_level_too_short_for_a_trend_is_left_to_its_slos() -> None:
    sends = poisson_offsets(40, 16.0, 6)
    view, _ = timed_rows(sends, lambda t, i: 0.08, lambda t, i: 3.0 + 0.5 * t)
    verdict = backlog_verdict(view, 16.0, P99)
    assert verdict["verdict"] == "not judged" and verdict["served"] is None
    assert block_trend([0.0, 1.0], [1.0, 2.0], 0.0, 2.0, 0.5) is None


# --------------------------------------------------------------------------- incumbent-first search


class Server:
    """400 requests per level; TTFT ~ base / (1 - load / capacity), spread by +-20%."""

    def __init__(self, capacity: float = 30.0, base_s: float = 0.05) -> None:
        self.capacity, self.base_s = capacity, base_s
        self.calls: list[float] = []

    def __call__(self, load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        self.calls.append(load)
        busy = load / self.capacity
        center = self.base_s / (1 - busy) if busy < 1 else 1e3
        ttfts = [center * (0.8 + 0.4 * i / 399) for i in range(400)]
        return {"p99_ttft_ms": 1000 * float(np.percentile(ttfts, 99))}, rows(ttfts)


def test_a_trial_below_the_incumbent_costs_one_level() -> None:
    server = Server()  # holds below ~24 req/s
    result = search_goodput(server, P99, unit="req/s", start=4.0, growth=1.25, incumbent=27.0)
    assert server.calls == [27.0]
    assert result.stopped == "below incumbent" and result.goodput_upper_bound == 27.0
    assert result.goodput == 0.0 and result.best is None
    doc = result.to_json()
    assert doc["incumbent"] == {"load": 27.0, "verdict": "fails", "outcome": "below incumbent"}
    assert doc["stopped"] == "below incumbent" and doc["goodput_upper_bound"] == 27.0


def test_a_trial_above_the_incumbent_is_searched_up() -> None:
    server = Server()
    result = search_goodput(server, P99, unit="req/s", start=4.0, growth=1.25, incumbent=16.0, max_levels=6)
    assert server.calls[0] == 16.0 and len(server.calls) > 1 and server.calls[1] == 20.0
    assert result.stopped is None and result.goodput_upper_bound is None
    assert result.goodput >= 20.0
    assert result.incumbent == {"load": 16.0, "verdict": "holds", "outcome": "searched up from the incumbent"}


def test_an_uncertain_incumbent_level_is_searched_as_usual() -> None:
    calls: list[float] = []

    def measure(load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        calls.append(load)
        misses = 5 if load >= 20 else 0  # 5 of 300 over the bound: uncertain at 20
        ttfts = spread(300, 0.1, 0.2, misses=misses)
        return {}, rows(ttfts)

    result = search_goodput(measure, P99, unit="req/s", start=4.0, incumbent=20.0, growth=1.25, max_levels=4)
    assert calls[0] == 20.0 and len(calls) > 1 and calls[1] == 16.0  # the point estimate failed: down as usual
    assert result.stopped is None and result.incumbent is not None
    assert result.incumbent["verdict"] == "uncertain" and result.levels[0].verdict == "uncertain"


def test_without_incumbent_the_search_is_unchanged() -> None:
    a, b = Server(), Server()
    plain: GoodputResult = search_goodput(a, P99, unit="req/s", start=8.0)
    again = search_goodput(b, P99, unit="req/s", start=8.0, incumbent=None)
    assert a.calls == b.calls and a.calls[:3] == [8.0, 16.0, 32.0]
    assert plain.goodput == again.goodput and plain.incumbent is None and plain.to_json()["stopped"] is None


def test_a_late_burst_with_a_flat_engine_count_is_no_backlog() -> None:
    """H100, recorded: fp8 at 25 req/s met both SLOs (p99 TPOT 22.6 ms against 25) with the count in the engine
    flat through the level, yet a TPOT slope fitted through a burst in its last two seconds of sends projected
    27 ms and failed it. The engine's count judges where it is known; the client's latencies alone still fail it."""
    rec, rows, slos = _recorded("h100_late_burst")
    assert rec["recorded"]["verdict"] == "fails" and "rising" in rec["recorded"]["backlog"]
    level = judge_level(slos, {"offered_rate": rec["rate"]}, rows, queue=rec["engine_queue"])
    assert {s.verdict for s in level.slos.values()} == {"holds"}
    assert level.backlog["source"] == "engine queue" and level.backlog["served_upper"] >= 1.0
    assert level.backlog["rising"]["p99(tpot)<25ms"]["projected"] >= 0.025  # the trend is still read and kept
    assert level.verdict == "holds" and level.holds, level.backlog.get("reason")
    blind = judge_level(slos, {"offered_rate": rec["rate"]}, rows)
    assert blind.backlog["source"] == "client latency" and blind.verdict == "fails"


def test_a_rising_latency_with_a_growing_engine_count_still_fails() -> None:
    """The count in the engine grows a little (served 90%, over the 85% bar) while TTFT climbs to cross its
    bound one level-length later: the rising test stands, because the engine saw the backlog too."""
    rate = 16.0
    sends = poisson_offsets(240, rate, 5)
    view, _ = timed_rows(sends, lambda t, i: 0.05 + 0.014 * t, lambda t, i: 2.05 + 0.014 * t)
    t = [0.25 * i for i in range(64)]
    growing = {"t": t, "waiting": [max(0.0, 1.6 * (s - 2)) for s in t], "running": [30.0] * len(t)}
    level = judge_level(P99, {"offered_rate": rate}, view, queue=growing)
    assert level.backlog["source"] == "engine queue" and level.backlog["served_upper"] < 1.0
    assert level.backlog["served"] > 0.85
    assert level.verdict == "fails" and "rising" in level.backlog["reason"]
