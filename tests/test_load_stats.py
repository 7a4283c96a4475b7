"""Summary figures from hand-built records, checked against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from autotune.load.client import RequestRecord
from autotune.load.runner import LoadResult
from autotune.load.stats import LATENCY_METRICS, per_request_view, summarize


def _ok(ttft: float, itl: list[float], prompt_tokens: int = 10, start: float = 0.0) -> RequestRecord:
    """A completed request with one token per chunk, timed exactly as the client times it."""
    output_tokens = len(itl) + 1
    e2e = ttft + sum(itl)
    tpot = (e2e - ttft) / (output_tokens - 1) if output_tokens > 1 else None
    return RequestRecord(
        ok=True,
        error=None,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        start=start,
        ttft_s=ttft,
        itl_s=itl,
        e2e_s=e2e,
        tpot_s=tpot,
    )


def _failed(prompt_tokens: int = 10) -> RequestRecord:
    return RequestRecord(
        ok=False,
        error="HTTP 500: boom",
        prompt_tokens=prompt_tokens,
        output_tokens=1,
        start=0.0,
        ttft_s=0.05,  # partial timings of a failed request must not count
        itl_s=[9.0],
        e2e_s=None,
        tpot_s=None,
    )


@pytest.fixture
def result() -> LoadResult:
    records = [
        _ok(0.100, [0.010, 0.030], prompt_tokens=10),  # 3 out, e2e 0.140, tpot 0.020
        _ok(0.200, [0.020], prompt_tokens=20),  # 2 out, e2e 0.220, tpot 0.020
        _ok(0.400, [0.040, 0.040, 0.040], prompt_tokens=30),  # 4 out, e2e 0.520, tpot 0.040
        _failed(prompt_tokens=1000),
    ]
    return LoadResult(records=records, duration_s=2.0, client_cpu_s=0.5, offered_rate=None, achieved_rate=2.0)


def test_counts_and_throughputs(result: LoadResult) -> None:
    s = summarize(result)
    assert s["completed"] == 3
    assert s["failed"] == 1
    assert s["duration"] == 2.0
    assert s["total_input_tokens"] == 60  # the failed request's 1000 are not counted
    assert s["total_output_tokens"] == 9
    assert s["request_throughput"] == pytest.approx(1.5)
    assert s["output_throughput"] == pytest.approx(4.5)
    assert s["total_token_throughput"] == pytest.approx(34.5)
    assert s["client_cpu_s"] == 0.5
    assert s["client_cpu_util"] == pytest.approx(0.25)
    assert s["achieved_rate"] == 2.0
    assert "offered_rate" not in s


def test_ttft_figures_interpolate_linearly(result: LoadResult) -> None:
    s = summarize(result)
    # ttft samples: 100, 200, 400 ms
    assert s["mean_ttft_ms"] == pytest.approx(700 / 3)
    assert s["median_ttft_ms"] == pytest.approx(200)
    mean = 700 / 3
    assert s["std_ttft_ms"] == pytest.approx(math.sqrt(((100 - mean) ** 2 + (200 - mean) ** 2 + (400 - mean) ** 2) / 3))
    assert s["p50_ttft_ms"] == pytest.approx(200)
    # rank (n-1)*q = 1.8 -> 200 + 0.8 * (400 - 200)
    assert s["p90_ttft_ms"] == pytest.approx(360)
    assert s["p95_ttft_ms"] == pytest.approx(380)
    assert s["p99_ttft_ms"] == pytest.approx(396)
    assert s["max_ttft_ms"] == pytest.approx(400)


def test_itl_pools_every_gap(result: LoadResult) -> None:
    s = summarize(result)
    # gaps: 10, 30, 20, 40, 40, 40 ms -> sorted 10 20 30 40 40 40
    assert s["mean_itl_ms"] == pytest.approx(30)
    assert s["median_itl_ms"] == pytest.approx(35)
    assert s["p90_itl_ms"] == pytest.approx(40)
    assert s["max_itl_ms"] == pytest.approx(40)  # the failed request's 9 s gap is ignored
    # rank 5*0.5 = 2.5 between 30 and 40
    assert s["p50_itl_ms"] == pytest.approx(35)


def test_tpot_and_e2el(result: LoadResult) -> None:
    s = summarize(result)
    assert s["mean_tpot_ms"] == pytest.approx((20 + 20 + 40) / 3)
    assert s["median_tpot_ms"] == pytest.approx(20)
    assert s["max_tpot_ms"] == pytest.approx(40)
    assert s["mean_e2el_ms"] == pytest.approx((140 + 220 + 520) / 3)
    assert s["median_e2el_ms"] == pytest.approx(220)
    # rank 2*0.9 = 1.8 -> 220 + 0.8 * 300
    assert s["p90_e2el_ms"] == pytest.approx(460)


def test_every_latency_key_is_present(result: LoadResult) -> None:
    s = summarize(result)
    for metric in LATENCY_METRICS:
        for key in ("mean", "median", "std", "p50", "p90", "p95", "p99", "max"):
            assert f"{key}_{metric}_ms" in s


def test_offered_rate_is_reported_when_given(result: LoadResult) -> None:
    result.offered_rate = 3.0
    assert summarize(result)["offered_rate"] == 3.0


def test_single_token_outputs_have_no_tpot_or_itl() -> None:
    records = [_ok(0.1, []), _ok(0.3, [])]
    s = summarize(LoadResult(records=records, duration_s=1.0, client_cpu_s=0.0, offered_rate=None, achieved_rate=2.0))
    assert s["completed"] == 2
    assert s["mean_ttft_ms"] == pytest.approx(200)
    assert math.isnan(s["mean_tpot_ms"])
    assert math.isnan(s["p99_itl_ms"])


def test_all_failed_does_not_crash() -> None:
    records = [_failed(), _failed()]
    s = summarize(LoadResult(records=records, duration_s=1.5, client_cpu_s=0.1, offered_rate=4.0, achieved_rate=4 / 3))
    assert s["completed"] == 0
    assert s["failed"] == 2
    assert s["total_input_tokens"] == 0
    assert s["request_throughput"] == 0.0
    assert s["output_throughput"] == 0.0
    for metric in LATENCY_METRICS:
        for key in ("mean", "median", "std", "p50", "p90", "p95", "p99", "max"):
            assert math.isnan(s[f"{key}_{metric}_ms"])
    assert s["offered_rate"] == 4.0
    json.dumps(s)  # NaN is written as NaN, still serialisable


def test_no_records_at_all() -> None:
    s = summarize(LoadResult(records=[], duration_s=0.0, client_cpu_s=0.0, offered_rate=None, achieved_rate=0.0))
    assert s["completed"] == 0 and s["failed"] == 0
    assert s["request_throughput"] == 0.0
    assert math.isnan(s["client_cpu_util"])
    assert math.isnan(s["median_e2el_ms"])


def test_per_request_view(result: LoadResult) -> None:
    view = per_request_view(result.records)
    assert len(view) == 4
    assert view[0] == {
        "ttft_s": 0.1,
        "tpot_s": pytest.approx(0.02),
        "e2e_s": pytest.approx(0.14),
        "itl_s": [0.01, 0.03],
    }
    assert view[3] == {"ttft_s": None, "tpot_s": None, "e2e_s": None, "itl_s": None}
    view[0]["itl_s"].append(1.0)  # a copy: callers cannot corrupt the records
    assert result.records[0].itl_s == [0.01, 0.03]


def _open_loop(n: int, gap: float, service: float, backlog_growth: float) -> list:
    """Requests sent every `gap` seconds; each takes `service` plus a wait that grows with its index."""
    from autotune.load.client import RequestRecord

    records = []
    for i in range(n):
        e2e = service + backlog_growth * i
        records.append(RequestRecord(ok=True, error=None, prompt_tokens=8, output_tokens=4, start=i * gap,
                                     ttft_s=0.01, itl_s=[0.0] * 3, e2e_s=e2e, tpot_s=0.0))
    return records


def test_sustained_ratio_separates_keeping_up_from_falling_behind() -> None:
    from autotune.load.stats import _sustained_ratio

    kept_up = _open_loop(200, gap=0.1, service=1.0, backlog_growth=0.0)
    assert _sustained_ratio(kept_up, rate=10.0) == pytest.approx(1.0, abs=0.02)
    for growth in (0.05, 0.1, 0.5):
        falling_behind = _open_loop(200, gap=0.1, service=1.0, backlog_growth=growth)
        assert _sustained_ratio(falling_behind, rate=10.0) < 0.8
    assert math.isnan(_sustained_ratio(kept_up[:5], rate=10.0))


def _ramping(n: int, gap: float, start_e2e: float, steady_e2e: float, ramp_s: float) -> list:
    """A healthy GPU run: latency rises while the batch fills, then stays flat."""
    from autotune.load.client import RequestRecord

    records = []
    for i in range(n):
        t = i * gap
        e2e = start_e2e + (steady_e2e - start_e2e) * min(t / ramp_s, 1.0)
        records.append(RequestRecord(ok=True, error=None, prompt_tokens=8, output_tokens=4, start=t,
                                     ttft_s=0.05, itl_s=[0.0] * 3, e2e_s=e2e, tpot_s=0.0))
    return records


def test_sustained_ratio_does_not_fail_a_filling_batch() -> None:
    """Seen on an H100: 12 s levels of 4-5 s requests were judged overloaded while the batch filled."""
    from autotune.load.stats import _sustained_ratio

    short = _ramping(192, gap=1 / 16, start_e2e=2.0, steady_e2e=4.5, ramp_s=4.0)
    ratio = _sustained_ratio(short, rate=16.0)
    assert math.isnan(ratio) or ratio >= 0.95  # too short to judge, never a false failure
    long = _ramping(480, gap=1 / 16, start_e2e=2.0, steady_e2e=4.5, ramp_s=4.0)
    assert _sustained_ratio(long, rate=16.0) == pytest.approx(1.0, abs=0.02)
    growing = _open_loop(480, gap=1 / 16, service=2.0, backlog_growth=0.02)  # latency keeps climbing
    assert _sustained_ratio(growing, rate=16.0) < 0.85


def test_send_rate_ratio_compares_sends_with_their_own_schedule() -> None:
    """Requests that take seconds end after the window; only late sends mean a slow client."""
    from autotune.load.runner import send_rate_ratio

    def result(starts: list[float], span: float | None) -> LoadResult:
        records = [RequestRecord(ok=True, error=None, prompt_tokens=8, output_tokens=4, start=t, ttft_s=0.01, e2e_s=5.0)
                   for t in starts]
        return LoadResult(records=records, duration_s=starts[-1] + 5.0, client_cpu_s=0.0, offered_rate=2.0,
                          achieved_rate=len(starts) / (starts[-1] + 5.0), scheduled_span_s=span)

    on_time = result([0.0, 0.5, 1.0, 1.5, 2.0], 2.0)
    assert send_rate_ratio(on_time) == pytest.approx(1.0)
    assert on_time.achieved_rate < 0.9 * 2.0  # the drain alone would have looked like a shortfall
    late = result([0.0, 1.0, 2.0, 3.0, 4.0], 2.0)
    assert send_rate_ratio(late) == pytest.approx(0.5)
    assert summarize(late)["send_rate_ratio"] == pytest.approx(0.5)
    assert send_rate_ratio(result([0.0, 1.0], None)) is None  # closed loop: no schedule
