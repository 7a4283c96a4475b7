"""The figures as people read them: one label, unit and format per figure, in vllm bench serve's names.

Every table (review, verify, compare, measure) labels a figure the same way
because they all look it up here.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

__all__ = ["LABELS", "figure", "format_figure", "label"]

# figure, label and format, columns two spaces apart.
_TABLE = """
goodput                 goodput                 {:,.2f}
output_throughput       out tok/s               {:,.0f}
total_token_throughput  total tok/s             {:,.0f}
request_throughput      req/s                   {:,.2f}
cost_per_1k_tokens      $ / 1K tokens           {:.4g}
p50_ttft_ms             p50 TTFT ms             {:,.0f}
median_ttft_ms          p50 TTFT ms             {:,.1f}
mean_ttft_ms            mean TTFT ms            {:,.1f}
p99_ttft_ms             p99 TTFT ms             {:,.0f}
mean_tpot_ms            TPOT ms                 {:.1f}
p99_tpot_ms             p99 TPOT ms             {:.1f}
p99_itl_ms              p99 ITL ms              {:,.2f}
p99_e2el_ms             p99 E2E ms              {:,.0f}
mean_output_tokens      output tokens/request   {:,.1f}
completed               completed               {:,.0f}
failed                  failed                  {:,.0f}
startup_s               start s                 {:,.0f}
"""

#: figure -> (label, format)
LABELS: dict[str, tuple[str, str]] = {
    key: (name, fmt) for key, name, fmt in (re.split(r"\s{2,}", row) for row in _TABLE.strip().splitlines())
}


def label(key: str) -> str:
    return LABELS.get(key, (key, ""))[0]


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
