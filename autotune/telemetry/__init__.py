"""Telemetry alongside the load: GPU figures from NVML and the engine's own metrics.

``TelemetryWindow`` wraps one measured load run; its ``figures()`` land in the
trial outcome (``TrialOutcome.telemetry``) and the trial's user attributes,
where ``locate`` reads them. The signals are listed in docs/telemetry.md.
"""

from autotune.telemetry.engine_metrics import (
    ENGINE_METRICS,
    EngineMetricsScraper,
    Histogram,
    Quantile,
    Snapshot,
    detect_engine,
    parse_metrics,
    reduce_window,
    register_engine_metrics,
)
from autotune.telemetry.nvml import NvmlSampler, nvml_status, slowdown_note, visible_gpus
from autotune.telemetry.window import TelemetryWindow, announce_once, combine_windows

__all__ = [
    "ENGINE_METRICS",
    "EngineMetricsScraper",
    "Histogram",
    "NvmlSampler",
    "Quantile",
    "Snapshot",
    "TelemetryWindow",
    "announce_once",
    "combine_windows",
    "detect_engine",
    "nvml_status",
    "parse_metrics",
    "reduce_window",
    "register_engine_metrics",
    "slowdown_note",
    "visible_gpus",
]
