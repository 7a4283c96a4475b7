"""Command-line flags as spec overrides.

One table maps every flag to the spec field it sets, so that ``optimize``,
``measure`` and ``compare`` mean the same field by the same flag, and a flag
added here reaches every command that declares it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autotune.errors import UserError

FLAG_FIELDS: dict[str, str] = {
    "model": "model",
    "slo": "slo",
    "objectives": "objectives",
    "trials": "budget.trials",
    "engine": "engine.name",
    "name": "name",
    "study_dir": "study_dir",
    "storage": "storage",
    "api_key_env": "engine.api_key_env",
    "concurrency": "workload.concurrency",
    "rate": "workload.rate",
    "prompt_tokens": "workload.prompt_tokens",
    "output_tokens": "workload.output_tokens",
    "num_requests": "workload.num_requests",
    "max_model_len": "max_model_len",
    "sampler": "sampler",
    "seed": "seed",
    "gpus": "hardware.gpu_count",
    "price": "hardware.price_per_gpu_hour",
    "device": "hardware.device",
    "wall_time": "budget.wall_time_s",
    "gpu_minutes": "budget.gpu_minutes",
    "scenario": "scenario",
    "repeats": "repeats",
    "baseline": "baseline",
}


def flag_overrides(**flags: Any) -> dict[str, Any]:
    """Dotted spec fields for the flags given (None: not given). A rate implies Poisson arrivals."""
    out: dict[str, Any] = {}
    for flag, value in flags.items():
        if value is None:
            continue
        out[FLAG_FIELDS[flag]] = str(value) if isinstance(value, Path) else value
    if flags.get("rate"):
        out["workload.arrival"] = "poisson"
    return out


def parse_assignments(items: list[str], what: str = "--set") -> dict[str, Any]:
    """``name=value`` pairs from the command line, values read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"bad {what} {item!r}: expected name=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def parse_engine_assignments(items: list[str], what: str) -> dict[str, dict[str, Any]]:
    """``engine:name=value`` items (``--set vllm:max_num_seqs=8``) grouped by engine."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        engine, sep, rest = item.partition(":")
        if not sep or "=" not in rest:
            raise UserError(f"bad {what} {item!r}: expected engine:name=value")
        out.setdefault(engine.strip(), {}).update(parse_assignments([rest], what))
    return out
