"""The engine's own Prometheus metrics, polled over the measurement window.

The load generator sees latencies from outside; the engine knows why they are
what they are: how full the KV cache was, how many requests waited, how long
they queued before their first step, how often the scheduler preempted.
Those are what ``locate`` needs to name a bottleneck.

Engines name the same signal differently (``vllm:num_requests_waiting``,
``sglang:num_queue_reqs``, ``tgi_queue_size``), so each engine adapter declares a
mapping from a canonical signal to its metric names (its ``metric_names``) and
telemetry is given it; the reductions only know the canonical names. Where the
engine is not known beforehand (an endpoint autotune did not start), the
exposition text picks one of every adapter's mappings by its prefix. The metric type decides how a signal is reduced: counters and
histograms by their change over the window, gauges by their peak and mean.

A percentile read from a histogram is only as good as its buckets: one that
falls in the lowest bucket is reported as at most that bucket's bound
(``<name>_below_ms``, the figure itself None), and one beyond the highest
finite bound as more than it (``<name>_above_ms``), never as a value
interpolated out of nothing.
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
    "Quantile",
    "Snapshot",
    "detect_engine",
    "known_engines",
    "parse_metrics",
    "reduce_window",
    "register_engine_metrics",
]

# prefix -> canonical signal -> metric family names, for engines registered at run time
# (``register_engine_metrics``); the built-in and plugin engines' names live in their adapters.
ENGINE_METRICS: dict[str, dict[str, tuple[str, ...]]] = {}

Table = Mapping[str, Mapping[str, tuple[str, ...]]]


def known_engines(known: Table | None = None) -> Table:
    """``known`` as given, else every engine adapter's names by prefix and those registered here."""
    if known is not None:
        return known
    from autotune.engines import metric_tables  # the adapters are where the names are written

    return {**metric_tables(), **ENGINE_METRICS}

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

    def locate(self, q: float) -> "Quantile":
        """The q-quantile where the buckets can tell it; a bound where they cannot.

        Inside the lowest bucket nothing says where between zero and its bound the
        observations lie, so interpolating there invents a figure (a 54 us queue
        time read as 297 ms); beyond the highest finite bound there is no upper edge.
        """
        finite = sorted(le for le in self.buckets if not math.isinf(le))
        if self.count <= 0 or not finite:
            return Quantile(math.nan)
        rank = q * self.count
        if self.buckets[finite[0]] >= rank:
            return Quantile(None, below=finite[0])
        if self.buckets[finite[-1]] < rank:
            return Quantile(None, above=finite[-1])
        return Quantile(self.quantile(q))


@dataclass(frozen=True)
class Quantile:
    """A percentile, or the bucket bound it is known to lie under (``below``) or over (``above``)."""

    value: float | None
    below: float | None = None
    above: float | None = None

    def figures(self, key: str, scale: float = 1.0, unit: str = "") -> dict[str, float | None]:
        """``{key+unit: value}``, plus ``key_below+unit`` or ``key_above+unit`` when only a bound is known."""
        out: dict[str, float | None] = {key + unit: None if self.value is None else self.value * scale}
        if self.below is not None:
            out[f"{key}_below{unit}"] = self.below * scale
        if self.above is not None:
            out[f"{key}_above{unit}"] = self.above * scale
        return out


@dataclass
class Snapshot:
    """One scrape, reduced to the canonical signals it carries."""

    t: float
    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


def detect_engine(text: str, known: Table | None = None) -> str | None:
    """The prefix of the engine that wrote this exposition text, among ``known`` (by default
    every engine adapter's)."""
    for prefix in known_engines(known):
        if f"\n{prefix}" in text or text.startswith(prefix) or f" {prefix}" in text:
            return prefix
    return None


def parse_metrics(
    text: str,
    names: Mapping[str, tuple[str, ...]] | None = None,
    *,
    t: float | None = None,
    known: Table | None = None,
) -> Snapshot:
    """Parses Prometheus text into a Snapshot of canonical signals.

    ``names`` is an engine's mapping; None picks one of ``known`` (prefix -> mapping)
    by the metric prefixes in the text.
    """
    if names is None:
        table = known_engines(known)
        prefix = detect_engine(text, table)
        names = table.get(prefix, {}) if prefix else {}
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
) -> dict[str, float | None]:
    """Figures over one window: counter and histogram changes, gauge peaks and means.

    ``before`` and ``after`` bound the window; ``polls`` are the scrapes in
    between (gauges are read from all of them, the bounds included).
    """
    out: dict[str, float | None] = {}
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
        stem = f"engine_{hname}" if hname in ("ttft", "itl", "e2e") else hname
        out[f"{stem}_mean_ms"] = h.mean() * 1000
        out.update(h.locate(0.99).figures(f"{stem}_p99", 1000, "_ms"))
        out[f"{hname}_count"] = h.count
    for hname in ("prompt_tokens", "generation_tokens"):  # TGI keeps token counts as histograms
        h = window.get(hname)
        if h is not None and hname not in out:
            out[hname] = max(0.0, h.sum)
    it = window.get("iteration_tokens")
    if it is not None and it.count > 0:
        out["iteration_tokens_mean"] = it.mean()
        out.update(it.locate(0.99).figures("iteration_tokens_p99"))
        out["iterations"] = it.count
    tokens, steps = out.get("generation_tokens"), out.get("iterations")
    if tokens and steps:
        # Sequences per engine step, from counters alone: exact however slowly /metrics answers.
        out["batch_mean"] = tokens / steps
    qt, ttft = window.get("queue_time"), window.get("ttft")
    if qt is not None and ttft is not None and ttft.sum > 0 and qt.count > 0 and ttft.count > 0:
        out["queue_share_of_ttft"] = min(1.0, qt.mean() / ttft.mean())
    if "prefix_cache_queries" in out:
        q, hits = out["prefix_cache_queries"] or 0.0, out.get("prefix_cache_hits") or 0.0
        out["prefix_hit_rate"] = hits / q if q > 0 else math.nan
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
        known: Table | None = None,
        hz: float = 4.0,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``names``: the engine's mapping; without it the first scrape picks one of ``known``."""
        self.url = url
        self.names = names
        self.known = known
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
                table = known_engines(self.known)
                prefix = detect_engine(text, table)
                if prefix is not None:
                    self.names = table[prefix]
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

    def reduce(self) -> dict[str, float | None]:
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
