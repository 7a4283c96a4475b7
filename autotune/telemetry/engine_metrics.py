"""The engine's own Prometheus metrics, polled over the measurement window.

The load generator sees latencies from outside; the engine knows why they are
what they are: how full the KV cache was, how many requests waited, how long
they queued before their first step, how often the scheduler preempted.
Those are what ``locate`` needs to name a bottleneck.

Engines name the same signal differently (``vllm:num_requests_waiting``,
``sglang:num_queue_reqs``, ``tgi_queue_size``), so each engine declares a
mapping from a canonical signal to its metric names (``ENGINE_METRICS``, or
an adapter's ``metric_names`` attribute); the reductions only know the
canonical names. The metric type from the exposition text decides how a
signal is reduced: counters and histograms by their change over the window,
gauges by their peak and mean over the polls.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Mapping

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "ENGINE_METRICS",
    "EngineMetricsScraper",
    "Histogram",
    "Snapshot",
    "detect_engine",
    "parse_metrics",
    "reduce_window",
    "register_engine_metrics",
]

# canonical signal -> metric family names, first present wins (newer names first).
# Counter names are given without "_total" (the parser strips it).
ENGINE_METRICS: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm:": {
        "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),  # a fraction 0..1
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "preemptions": ("vllm:num_preemptions",),
        "queue_time": ("vllm:request_queue_time_seconds",),
        "ttft": ("vllm:time_to_first_token_seconds",),
        "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "e2e": ("vllm:e2e_request_latency_seconds",),
        "prefill_time": ("vllm:request_prefill_time_seconds",),
        "decode_time": ("vllm:request_decode_time_seconds",),
        "inference_time": ("vllm:request_inference_time_seconds",),
        "iteration_tokens": ("vllm:iteration_tokens_total", "vllm:iteration_tokens"),
        "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
        "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
        "prompt_tokens": ("vllm:prompt_tokens",),
        "generation_tokens": ("vllm:generation_tokens",),
        "requests_finished": ("vllm:request_success",),
    },
    "sglang:": {
        "kv_cache_usage": ("sglang:token_usage",),
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "preemptions": ("sglang:num_retracted_requests", "sglang:num_retracted_reqs"),
        "queue_time": ("sglang:queue_time_seconds",),
        "ttft": ("sglang:time_to_first_token_seconds",),
        "itl": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        "e2e": ("sglang:e2e_request_latency_seconds",),
        "prefix_hit_rate": ("sglang:cache_hit_rate",),
        "prefix_cache_hits": ("sglang:cached_tokens",),
        "prompt_tokens": ("sglang:prompt_tokens",),
        "generation_tokens": ("sglang:generation_tokens",),
        "requests_finished": ("sglang:num_requests",),
        "generation_throughput": ("sglang:gen_throughput",),
    },
    "tgi_": {
        "running": ("tgi_batch_current_size",),
        "waiting": ("tgi_queue_size",),
        "queue_time": ("tgi_request_queue_duration",),
        "itl": ("tgi_request_mean_time_per_token_duration",),
        "e2e": ("tgi_request_duration",),
        "inference_time": ("tgi_request_inference_duration",),
        "prompt_tokens": ("tgi_request_input_length",),
        "generation_tokens": ("tgi_request_generated_tokens",),
        "requests_finished": ("tgi_request_success",),
        "batch_tokens": ("tgi_batch_current_max_tokens",),
        "prefill_time": ("tgi_batch_forward_duration",),
    },
}

# Gauges that describe one engine instance are combined across label sets
# (data-parallel ranks, models) by their maximum; the rest are summed.
_MAX_OVER_LABELS = frozenset({"kv_cache_usage", "prefix_hit_rate"})


def register_engine_metrics(prefix: str, names: Mapping[str, tuple[str, ...] | list[str]]) -> None:
    """Adds or extends an engine's mapping; an adapter calls this for a new engine."""
    merged = dict(ENGINE_METRICS.get(prefix, {}))
    merged.update({k: tuple(v) for k, v in names.items()})
    ENGINE_METRICS[prefix] = merged


@dataclass
class Histogram:
    """A histogram summed over its label sets: cumulative bucket counts, sum and count."""

    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    sum: float = 0.0
    count: float = 0.0

    def minus(self, before: "Histogram | None") -> "Histogram":
        if before is None:
            return self
        return Histogram(
            {le: c - before.buckets.get(le, 0.0) for le, c in self.buckets.items()},
            self.sum - before.sum,
            self.count - before.count,
        )

    def mean(self) -> float:
        return self.sum / self.count if self.count > 0 else math.nan

    def quantile(self, q: float) -> float:
        """Linear interpolation within the bucket, as PromQL's histogram_quantile does."""
        if self.count <= 0 or not self.buckets:
            return math.nan
        bounds = sorted(self.buckets)
        rank = q * self.count
        prev_le, prev_c = 0.0, 0.0
        for le in bounds:
            c = self.buckets[le]
            if c >= rank:
                if math.isinf(le):
                    return prev_le
                if c == prev_c:
                    return le
                return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
            prev_le, prev_c = le, c
        return bounds[-1]


@dataclass
class Snapshot:
    """One scrape, reduced to the canonical signals it carries."""

    t: float
    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


def detect_engine(text: str) -> str | None:
    """The prefix of the engine that wrote this exposition text, if known."""
    for prefix in ENGINE_METRICS:
        if f"\n{prefix}" in text or text.startswith(prefix) or f" {prefix}" in text:
            return prefix
    return None


def parse_metrics(
    text: str, names: Mapping[str, tuple[str, ...]] | None = None, *, t: float | None = None
) -> Snapshot:
    """Parses Prometheus text into a Snapshot of canonical signals.

    ``names`` is an engine's mapping; None picks it from the metric prefixes.
    """
    if names is None:
        prefix = detect_engine(text)
        names = ENGINE_METRICS.get(prefix, {}) if prefix else {}
    wanted: dict[str, str] = {}
    for signal, candidates in names.items():
        for rank, name in enumerate(candidates):
            wanted.setdefault(_strip_total(name), f"{rank}:{signal}")
    found: dict[str, tuple[int, str, object]] = {}  # signal -> (rank, type, value)
    for family in text_string_to_metric_families(text):
        key = wanted.get(_strip_total(family.name))
        if key is None:
            continue
        rank_s, signal = key.split(":", 1)
        rank = int(rank_s)
        if signal in found and found[signal][0] <= rank:
            continue
        value = _family_value(family, signal)
        if value is not None:
            found[signal] = (rank, family.type, value)
    snap = Snapshot(time.monotonic() if t is None else t)
    for signal, (_rank, kind, value) in found.items():
        if isinstance(value, Histogram):
            snap.histograms[signal] = value
        elif kind == "counter":
            snap.counters[signal] = float(value)  # type: ignore[arg-type]
        else:
            snap.gauges[signal] = float(value)  # type: ignore[arg-type]
    return snap


def _strip_total(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") else name


def _family_value(family: object, signal: str) -> float | Histogram | None:
    kind = family.type  # type: ignore[attr-defined]
    samples = family.samples  # type: ignore[attr-defined]
    if kind in ("histogram", "gaugehistogram", "summary"):
        h = Histogram()
        for s in samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels.get("le", "inf"))
                h.buckets[le] = h.buckets.get(le, 0.0) + s.value
            elif s.name.endswith("_sum"):
                h.sum += s.value
            elif s.name.endswith("_count"):
                h.count += s.value
        return h
    values = [s.value for s in samples if not s.name.endswith("_created")]
    if not values:
        return None
    if kind == "gauge" and signal in _MAX_OVER_LABELS:
        return max(values)
    return sum(values)


def reduce_window(
    before: Snapshot | None, after: Snapshot | None, polls: list[Snapshot]
) -> dict[str, float]:
    """Figures over one window: counter and histogram changes, gauge peaks and means.

    ``before`` and ``after`` bound the window; ``polls`` are the scrapes in
    between (gauges are read from all of them, the bounds included).
    """
    out: dict[str, float] = {}
    every = [s for s in (before, *polls, after) if s is not None]
    if not every:
        return out
    gauge_names = sorted({g for s in every for g in s.gauges})
    for g in gauge_names:
        values = [s.gauges[g] for s in every if g in s.gauges and math.isfinite(s.gauges[g])]
        if not values:
            continue
        out[f"{g}_peak"] = max(values)
        out[f"{g}_mean"] = sum(values) / len(values)
    last = after or every[-1]
    first = before or every[0]
    for c, value in last.counters.items():
        start = first.counters.get(c)
        if start is not None:
            out[c] = max(0.0, value - start)
    window: dict[str, Histogram] = {}
    for hname, h in last.histograms.items():
        window[hname] = h.minus(first.histograms.get(hname))
    for hname in ("queue_time", "ttft", "itl", "e2e", "prefill_time", "decode_time", "inference_time"):
        h = window.get(hname)
        if h is None or h.count <= 0:
            continue
        out[f"engine_{hname}_mean_ms" if hname in ("ttft", "itl", "e2e") else f"{hname}_mean_ms"] = h.mean() * 1000
        out[f"engine_{hname}_p99_ms" if hname in ("ttft", "itl", "e2e") else f"{hname}_p99_ms"] = (
            h.quantile(0.99) * 1000
        )
        out[f"{hname}_count"] = h.count
    for hname in ("prompt_tokens", "generation_tokens"):  # TGI keeps token counts as histograms
        h = window.get(hname)
        if h is not None and hname not in out:
            out[hname] = max(0.0, h.sum)
    it = window.get("iteration_tokens")
    if it is not None and it.count > 0:
        out["iteration_tokens_mean"] = it.mean()
        out["iteration_tokens_p99"] = it.quantile(0.99)
        out["iterations"] = it.count
    if out.get("generation_tokens") and out.get("iterations"):
        # Sequences per engine step, from counters alone: exact however slowly /metrics answers.
        out["batch_mean"] = out["generation_tokens"] / out["iterations"]
    qt, ttft = window.get("queue_time"), window.get("ttft")
    if qt is not None and ttft is not None and ttft.sum > 0 and qt.count > 0 and ttft.count > 0:
        out["queue_share_of_ttft"] = min(1.0, qt.mean() / ttft.mean())
    if "prefix_cache_queries" in out:
        q = out["prefix_cache_queries"]
        out["prefix_hit_rate"] = out.get("prefix_cache_hits", 0.0) / q if q > 0 else math.nan
    elif "prefix_hit_rate_mean" in out:
        out["prefix_hit_rate"] = out["prefix_hit_rate_mean"]
    return out


class EngineMetricsScraper:
    """Polls a /metrics URL in a background thread between ``start()`` and ``stop()``."""

    def __init__(
        self,
        url: str,
        *,
        names: Mapping[str, tuple[str, ...]] | None = None,
        hz: float = 4.0,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.names = names
        self.period = 1.0 / max(hz, 0.1)
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.before: Snapshot | None = None
        self.after: Snapshot | None = None
        self.polls: list[Snapshot] = []
        self.errors = 0
        self.last_error: str | None = None
        self.last_text: str | None = None
        self.lag_s: list[float] = []  # how late each poll woke: a starved measuring process shows here
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape(self) -> Snapshot | None:
        try:
            req = urllib.request.Request(self.url, headers=self.headers)
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                text = resp.read().decode("utf-8", errors="replace")
            if self.names is None:
                prefix = detect_engine(text)
                if prefix is not None:
                    self.names = ENGINE_METRICS[prefix]
            self.last_text = text
            return parse_metrics(text, self.names or {})
        except Exception as e:  # connection refused, timeout, a line the parser refuses
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"[:200]
            return None

    def start(self) -> None:
        self.before = self.scrape()
        self._thread = threading.Thread(target=self._run, name="autotune-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 2)
        self.after = self.scrape()

    def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            if self._stop.wait(self.period):
                break
            self.lag_s.append(max(0.0, time.monotonic() - t0 - self.period))
            snap = self.scrape()
            if snap is not None:
                self.polls.append(snap)

    def reduce(self) -> dict[str, float]:
        out = reduce_window(self.before, self.after, list(self.polls))
        out["metrics_polls"] = len(self.polls) + (self.before is not None) + (self.after is not None)
        if self.lag_s:
            out["metrics_lag_max_s"] = max(self.lag_s)
        return out

    def notes(self) -> list[str]:
        if not self.errors:
            if self.before is not None and not (self.names or {}):
                return [f"engine metrics at {self.url}: no known engine metric names"]
            return []
        return [f"engine metrics at {self.url}: {self.errors} failed scrape(s), last: {self.last_error}"]
