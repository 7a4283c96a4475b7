"""Cost per 1K generated tokens: what a configuration's throughput costs in money.

    cost per 1K tokens = GPUs x price per GPU-hour / output tokens per hour x 1000

The GPUs counted are those the configuration occupies (tensor x pipeline x data
parallel size where those knobs exist, else the spec's GPU count): a TP=1
configuration on an 8-GPU host leaves seven GPUs free for other replicas. On a
CPU host the price is read as the price of the machine-hour. Without a price
there is no cost, and it is shown as "-", never as a free 0.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from autotune.space import gpus_per_engine

COST_KEY = "cost_per_1k_tokens"


def gpus_used(config: Mapping[str, Any], gpu_count: int, device: str) -> int:
    """GPUs the configuration occupies (the machine counts as one on a CPU)."""
    if device != "cuda":
        return 1
    return gpus_per_engine(config) or max(1, int(gpu_count))


def cost_per_1k_tokens(output_tps: float | None, gpus: int, price_per_gpu_hour: float | None) -> float | None:
    """None where it cannot be known: no price, or no throughput to spread it over."""
    if not price_per_gpu_hour or output_tps is None or not math.isfinite(output_tps) or output_tps <= 0:
        return None
    return gpus * price_per_gpu_hour / (output_tps * 3600.0) * 1000.0


def cost_figures(
    figures: Mapping[str, Any], config: Mapping[str, Any], *, gpu_count: int, device: str,
    price_per_gpu_hour: float | None,
) -> dict[str, float]:
    """The cost figure to add beside a trial's throughput (empty without a price)."""
    value = cost_per_1k_tokens(figures.get("output_throughput"), gpus_used(config, gpu_count, device), price_per_gpu_hour)
    return {} if value is None else {COST_KEY: value}


def format_cost(value: float | None) -> str:
    """Dollars with three significant digits, never in e-notation ($0.0000139, $0.00166, $1.25)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value >= 1 or value <= 0:
        return f"${value:,.2f}"
    decimals = max(2, -math.floor(math.log10(value)) + 2)
    return f"${value:.{decimals}f}"
