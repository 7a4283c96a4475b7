"""Summary figures of a load run, named as ``vllm bench serve`` names them.

Matching those names lets objectives and reports be written once and checked
against the reference tool.  Conventions:

* latencies are in milliseconds, over completed requests only; ``itl`` pools
  every gap of every completed request;
* percentiles use linear interpolation between order statistics (numpy's
  default ``method="linear"``), ``std`` is the population standard deviation
  (``ddof=0``), both as in ``vllm bench serve``;
* throughputs count completed requests and their tokens only, over the whole
  measured duration (failed requests still take up time);
* a latency with no samples (e.g. every request failed) is ``float('nan')``
  rather than absent, so every summary has the same keys; Optuna treats a NaN
  objective as a failed trial, which is the honest outcome.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.load.client import RequestRecord
from autotune.load.runner import LoadResult, send_rate_ratio

__all__ = [
    "LATENCY_METRICS", "PERCENTILES", "Summary", "generator_verdict", "per_request_view", "summarize", "t95",
]

LATENCY_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


def summarize(result: LoadResult) -> dict[str, float]:
    """All figures of one run as a flat ``name -> number`` mapping."""
    done = [r for r in result.records if r.ok]
    duration = result.duration_s
    input_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)

    out: dict[str, float] = {
        "completed": len(done),
        "failed": len(result.records) - len(done),
        "duration": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": _per_second(len(done), duration),
        "output_throughput": _per_second(output_tokens, duration),
        "total_token_throughput": _per_second(input_tokens + output_tokens, duration),
    }
    samples: dict[str, list[float]] = {
        "ttft": _present(r.ttft_s for r in done),
        "tpot": _present(r.tpot_s for r in done),
        "itl": [gap for r in done for gap in r.itl_s],
        "e2el": _present(r.e2e_s for r in done),
    }
    for name in LATENCY_METRICS:
        out.update(_describe_ms(name, samples[name]))
    out["client_cpu_s"] = result.client_cpu_s
    out["client_cpu_util"] = result.client_cpu_s / duration if duration > 0 else math.nan
    out["achieved_rate"] = result.achieved_rate
    if result.offered_rate is not None:
        out["offered_rate"] = result.offered_rate
        out["sustained_ratio"] = _sustained_ratio(result.records, result.offered_rate)
        ratio = send_rate_ratio(result)
        if ratio is not None:
            out["send_rate_ratio"] = ratio
    if result.burstiness is not None:
        out["burstiness"] = result.burstiness
    out.update(result.health())
    return out


def _sustained_ratio(records: Sequence[RequestRecord], rate: float) -> float:
    """Did the server keep up with an open-loop rate? About 1.0 when it did.

    A short run at an unsustainable rate can still show a good TTFT: an engine
    that admits every request at once (vLLM with a large ``max_num_seqs``)
    answers the first token quickly and pays for the overload in a batch that
    keeps growing, so each request takes longer than the one before. A server
    that keeps up reaches a steady state instead, once its batch has filled,
    which takes about one end-to-end latency ``L``. So the check looks only at
    requests sent after the ramp-up (from ``max(span / 3, 1.5 L)``, with ``L``
    the median latency of the middle third) and compares the median end-to-end
    latency of the first half of that window with that of the second half: the
    ratio stays near 1.0 in a steady state and falls as the backlog grows
    (about ``mu / lambda`` for a backlog that grows linearly).

    NaN (not judged) when the window after the ramp-up is shorter than ``2 L``
    or either half has fewer than five requests (unless the latency grew 2.5x
    from the first third to the last, which only a backlog does): a run that
    short cannot tell a filling batch from a growing backlog, and judging it anyway failed healthy
    multi-second GPU runs (H100, 12 s levels, 4-5 s requests). Such a level is
    left to the latency SLOs, which an overload breaks once the run is long
    enough; ``GoodputOptions.min_duration_s`` sets that length. A failed request
    counts as an infinitely slow one.
    """
    if not records or rate <= 0:
        return math.nan
    first_send = min(r.start for r in records)
    last_send = max(r.start for r in records)
    span = last_send - first_send
    if span <= 0:
        return math.nan

    def e2e(r: RequestRecord) -> float:
        return r.e2e_s if r.ok and r.e2e_s is not None else math.inf

    middle = [e2e(r) for r in records if first_send + span / 3 <= r.start < first_send + 2 * span / 3]
    if len(middle) < 5:
        return math.nan
    latency = float(np.median(middle))
    if math.isinf(latency):
        return 0.0
    begin = first_send + max(span / 3, 1.5 * latency)
    if last_send - begin < 2 * latency:
        # Too short to judge a steady state, unless latency grew 2.5x over the run:
        # a filling batch does not do that, a backlog does.
        head = [e2e(r) for r in records if r.start < first_send + span / 3]
        tail = [e2e(r) for r in records if r.start >= first_send + 2 * span / 3]
        if len(head) < 5 or len(tail) < 5:
            return math.nan
        first, last = float(np.median(head)), float(np.median(tail))
        if math.isinf(last):
            return 0.0
        return first / last if math.isfinite(first) and last >= 2.5 * first else math.nan
    split = begin + (last_send - begin) / 2
    early = [e2e(r) for r in records if begin <= r.start < split]
    late = [e2e(r) for r in records if r.start >= split]
    if len(early) < 5 or len(late) < 5:
        return math.nan
    mid, end = float(np.median(early)), float(np.median(late))
    if math.isinf(mid) or math.isinf(end):
        return 0.0
    return mid / end if end > 0 else math.nan


def per_request_view(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    """Per-request latencies in seconds, for SLO attainment.

    A failed request has every field ``None``: it met no SLO, and callers must
    not mistake its partial timings for a served request.
    """
    view: list[dict[str, Any]] = []
    for r in records:
        if r.ok:
            view.append({"ttft_s": r.ttft_s, "tpot_s": r.tpot_s, "e2e_s": r.e2e_s, "itl_s": list(r.itl_s)})
        else:
            view.append({"ttft_s": None, "tpot_s": None, "e2e_s": None, "itl_s": None})
    return view


def _describe_ms(name: str, values_s: Sequence[float]) -> dict[str, float]:
    keys = ["mean", "median", "std", *(f"p{p}" for p in PERCENTILES), "max"]
    if not values_s:
        return {f"{key}_{name}_ms": math.nan for key in keys}
    ms = np.asarray(values_s, dtype=float) * 1000.0
    figures = [
        float(np.mean(ms)),
        float(np.median(ms)),
        float(np.std(ms)),
        *(float(x) for x in np.percentile(ms, PERCENTILES)),
        float(np.max(ms)),
    ]
    return {f"{key}_{name}_ms": value for key, value in zip(keys, figures, strict=True)}


def _present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _per_second(amount: float, duration: float) -> float:
    return amount / duration if duration > 0 else 0.0


def t95(df: int) -> float:
    """Two-sided 95% Student-t quantile with ``df`` degrees of freedom (NaN without any)."""
    if df <= 0:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, df))


@dataclass
class Summary:
    """Mean, sample standard deviation and the Student-t 95% interval of the mean of repeated figures."""

    mean: float
    std: float
    ci95: tuple[float, float]
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "Summary":
        """Non-finite and missing values are left out: a repeat that measured nothing is no zero."""
        kept = [float(v) for v in values if v is not None and math.isfinite(v)]
        n = len(kept)
        if n == 0:
            return cls(math.nan, math.nan, (math.nan, math.nan), 0)
        mean = statistics.fmean(kept)
        std = statistics.stdev(kept) if n > 1 else 0.0
        half = t95(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
        return cls(mean, std, (mean - half, mean + half), n)

    def text(self, fmt: str = "{:,.1f}") -> str:
        return f"{fmt.format(self.mean)} ± {fmt.format(self.std)}"

    def to_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"mean": num(self.mean), "std": num(self.std), "ci95": [num(self.ci95[0]), num(self.ci95[1])],
                "n": self.n}


#: Sends that took this much longer than their schedule, with the client this busy, measured the client.
_GENERATOR_SPAN_RATIO = 1.5
_GENERATOR_BUSY_CPU = 0.5


def generator_verdict(figures: dict[str, Any]) -> tuple[str, str] | None:
    """Whether a run measured the load generator rather than the server: ("fail" | "warn", why), or None.

    At an open-loop rate the client itself cannot produce, requests go out
    later than their schedule while the client's CPU is busy (a slow server
    that fills the in-flight cap delays the sends too, but leaves the client
    idle): such a run says nothing about the engine, and fails. A client whose
    event loop was nearly always busy, or whose sends ran late within that
    bound, only distorted the figures: a warning.
    """
    ratio, cpu = figures.get("send_rate_ratio"), figures.get("client_cpu_util")
    if isinstance(ratio, (int, float)) and isinstance(cpu, (int, float)) and math.isfinite(cpu):
        if 0 < ratio < 1 / _GENERATOR_SPAN_RATIO and cpu >= _GENERATOR_BUSY_CPU:
            offered = figures.get("offered_rate") or 0.0
            return "fail", (
                f"the load generator could not keep the offered rate: requests due at {offered:g}/s went out "
                f"{1 / ratio:.1f}x slower than scheduled with the client at {cpu:.0%} CPU; "
                "lower the rate or run the client on more cores"
            )
    if not figures.get("loadgen_saturated"):
        return None
    why = [f"its event loop used {figures.get('loadgen_loop_cpu_percent') or 0:.0f}% of a core"]
    if figures.get("loadgen_send_lag_p90_ms") is not None:
        why.insert(0, f"sends ran {figures['loadgen_send_lag_p90_ms']:.0f} ms behind schedule at p90")
    if figures.get("loadgen_cpu_wait_percent") is not None:
        why.append(f"waited for a CPU core {figures['loadgen_cpu_wait_percent']:.0f}% of the time")
    return "warn", (
        f"the load generator could not keep the requested load ({', '.join(why)}); its figures are not the server's alone"
    )
