"""The figures as people read them: one label, unit and format per figure, in vllm bench serve's names.

Every table (review, verify, compare, measure) labels a figure the same way,
and every chart titles its axes the same way, because they all look it up here.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

__all__ = ["LABELS", "axis_title", "figure", "format_figure", "label", "unit"]

# figure, short label, unit and format, columns two spaces apart; "-" is no unit.
_TABLE = """
goodput                 goodput                 req/s     {:,.2f}
request_goodput         goodput                 req/s     {:,.2f}
output_throughput       out tok/s               tok/s     {:,.0f}
total_token_throughput  total tok/s             tok/s     {:,.0f}
request_throughput      req/s                   req/s     {:,.2f}
cost_per_1k_tokens      $ / 1K tokens           $         {:.4g}
p50_ttft_ms             p50 TTFT ms             ms        {:,.0f}
median_ttft_ms          p50 TTFT ms             ms        {:,.1f}
mean_ttft_ms            mean TTFT ms            ms        {:,.1f}
p90_ttft_ms             p90 TTFT ms             ms        {:,.0f}
p95_ttft_ms             p95 TTFT ms             ms        {:,.0f}
p99_ttft_ms             p99 TTFT ms             ms        {:,.0f}
mean_tpot_ms            TPOT ms                 ms        {:.1f}
median_tpot_ms          p50 TPOT ms             ms        {:.1f}
p99_tpot_ms             p99 TPOT ms             ms        {:.1f}
mean_itl_ms             mean ITL ms             ms        {:,.2f}
p99_itl_ms              p99 ITL ms              ms        {:,.2f}
mean_e2el_ms            mean E2E ms             ms        {:,.0f}
p99_e2el_ms             p99 E2E ms              ms        {:,.0f}
mean_output_tokens      output tokens/request   tokens    {:,.1f}
completed               completed               requests  {:,.0f}
failed                  failed                  requests  {:,.0f}
startup_s               start s                 s         {:,.0f}
ppl                     perplexity              -         {:.3f}
ppl_rel_change          perplexity change       -         {:+.2%}
"""

#: figure -> (label, format)
LABELS: dict[str, tuple[str, str]] = {}
_UNITS: dict[str, str] = {}
for _key, _name, _unit, _fmt in (re.split(r"\s{2,}", row) for row in _TABLE.strip().splitlines()):
    LABELS[_key] = (_name, _fmt)
    _UNITS[_key] = "" if _unit == "-" else _unit

# What a chart's axis says: the figure in words, then its unit.
_WORDS = {
    "output_throughput": "output throughput", "total_token_throughput": "total token throughput",
    "request_throughput": "request throughput", "cost_per_1k_tokens": "cost per 1K tokens",
    "mean_output_tokens": "output tokens per request", "startup_s": "engine start",
}
_LATENCY = re.compile(r"^(mean|median|std|p\d+(?:\.\d+)?|max)_(ttft|tpot|itl|e2el)_ms$")
_LATENCY_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "end-to-end latency"}


def label(key: str) -> str:
    return LABELS.get(key, (key, ""))[0]


def trial_name(number: int) -> str:
    """How a result is named in text: its trial, or the engine's defaults (stored as number -1)."""
    return f"trial {number}" if number >= 0 else "engine defaults"


def unit(key: str) -> str:
    """The figure's unit ("ms", "tok/s", ...); empty for a ratio or an unknown figure."""
    if key in _UNITS:
        return _UNITS[key]
    return "ms" if key.endswith("_ms") else ""


def axis_title(key: str) -> str:
    """A chart axis for the figure: "p99 TTFT (ms)", "output throughput (tok/s)"."""
    match = _LATENCY.match(key)
    if match:
        stat, name = match.groups()
        words = f"{'p50' if stat == 'median' else stat} {_LATENCY_NAMES[name]}"
    else:
        words = _WORDS.get(key, label(key).removesuffix(" ms").removesuffix(" s"))
    u = unit(key)
    return f"{words} ({u})" if u else words


def format_figure(key: str, value: Any) -> str:
    """The value in its figure's format; "-" for what was not measured."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return LABELS.get(key, (key, "{:,.3g}"))[1].format(value)


def figure(figures: Mapping[str, Any], key: str) -> float | None:
    """A figure by name, derived ones included (``mean_output_tokens`` from the totals); None if absent."""
    if key == "mean_output_tokens":
        done, tokens = figures.get("completed"), figures.get("total_output_tokens")
        return tokens / done if done and tokens is not None else None
    value = figures.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def startup_text(bill: Mapping[str, Any] | None) -> str | None:
    """A start-up bill in a line: ``start 38.8 s: imports 8.8, compile 11.0 (cache miss), ...``."""
    if not bill:
        return None
    phases = {k: v for k, v in (bill.get("phases_s") or {}).items() if isinstance(v, (int, float)) and v >= 0.05}
    hit = bill.get("compile_cache_hit")
    cache = {True: " (cache hit)", False: " (cache miss)"}.get(hit, "") if hit is not None else ""
    parts = [f"{k.replace('_', ' ')} {v:,.1f}{cache if k == 'compile' else ''}" for k, v in phases.items()]
    total = bill.get("total_s")
    head = f"start {total:,.1f} s" if isinstance(total, (int, float)) else "start"
    return f"{head}: {', '.join(parts)}" if parts else head
