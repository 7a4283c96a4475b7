"""One measurement window: NVML and engine metrics sampled together, reduced to figures.

A ``TelemetryWindow`` wraps one load run (or one goodput level). It must never
fail the measurement it watches: every start, stop and reduction is guarded,
and whatever went wrong becomes a note next to the figures.
"""

from __future__ import annotations

import logging
import math
import time
from types import TracebackType
from typing import Any, Callable, Mapping

from autotune.telemetry.engine_metrics import EngineMetricsScraper
from autotune.telemetry.nvml import NvmlSampler

__all__ = ["TelemetryWindow", "announce_once", "combine_windows"]

log = logging.getLogger("autotune.telemetry")
_ANNOUNCED: set[str] = set()


def announce_once(message: str, say: Callable[[str], None] | None = None) -> None:
    """Tells the user once per process (no driver, no metrics); the notes keep it per trial."""
    if message in _ANNOUNCED:
        return
    _ANNOUNCED.add(message)
    log.info(message)
    if say is not None:
        try:
            say(message)
        except Exception:
            pass


class TelemetryWindow:
    """Samples from ``__enter__`` to ``__exit__``; ``figures()`` then gives the reduced figures.

    ``metrics_url``: the engine's Prometheus endpoint (None: no engine metrics);
    ``metric_names``: the engine adapter's names for it, or, where the engine is
    not known, ``known_metric_names`` (prefix -> names, every adapter's) to pick from.
    ``gpus``: CUDA_VISIBLE_DEVICES items the engine sees (None: all);
    ``gpu_limit``: how many of them it uses (TP x PP); ``use_gpu=False`` skips
    NVML (an engine on CPU).
    """

    def __init__(
        self,
        metrics_url: str | None,
        *,
        metric_names: Mapping[str, tuple[str, ...]] | None = None,
        known_metric_names: Mapping[str, Mapping[str, tuple[str, ...]]] | None = None,
        use_gpu: bool = True,
        gpus: list[str] | None = None,
        gpu_limit: int | None = None,
        nvml_hz: float = 10.0,
        scrape_hz: float = 4.0,
        headers: Mapping[str, str] | None = None,
        say: Callable[[str], None] | None = None,
        label: str = "",
    ) -> None:
        self.label = label
        self.say = say
        self.notes: list[str] = []
        self.nvml: NvmlSampler | None = NvmlSampler(gpus, limit=gpu_limit, hz=nvml_hz) if use_gpu else None
        self.scraper = (
            EngineMetricsScraper(
                metrics_url, names=metric_names, known=known_metric_names, hz=scrape_hz, headers=headers
            )
            if metrics_url
            else None
        )
        self.t_start: float | None = None
        self.t_end: float | None = None
        self._nvml_on = False

    def __enter__(self) -> "TelemetryWindow":
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.t_start = time.monotonic()
        if self.nvml is not None:
            try:
                self._nvml_on = self.nvml.start()
            except Exception as e:
                self.notes.append(f"NVML sampler did not start: {e}")
            if not self._nvml_on:
                for note in self.nvml.notes:
                    announce_once(f"GPU telemetry off: {note}", self.say)
        if self.scraper is not None:
            try:
                self.scraper.start()
            except Exception as e:
                self.notes.append(f"engine metrics scraper did not start: {e}")

    def stop(self) -> None:
        self.t_end = time.monotonic()
        if self.nvml is not None and self._nvml_on:
            try:
                self.nvml.stop()
            except Exception as e:
                self.notes.append(f"NVML sampler did not stop cleanly: {e}")
        if self.scraper is not None:
            try:
                self.scraper.stop()
            except Exception as e:
                self.notes.append(f"engine metrics scraper did not stop cleanly: {e}")

    def figures(self, output_tokens: float | None = None) -> dict[str, Any]:
        """The window's figures (floats) and ``notes`` (a list of strings)."""
        out: dict[str, Any] = {}
        if self.t_start is not None and self.t_end is not None:
            out["telemetry_window_s"] = self.t_end - self.t_start
        engine: dict[str, float | None] = {}
        if self.scraper is not None:
            try:
                engine = self.scraper.reduce()
                self.notes.extend(self.scraper.notes())
            except Exception as e:
                self.notes.append(f"engine metrics could not be reduced: {type(e).__name__}: {e}")
        out.update(engine)
        if self.nvml is not None:
            # The engine's own count covers exactly the window NVML saw (warm-up included).
            tokens = engine.get("generation_tokens") or output_tokens
            try:
                out.update(self.nvml.reduce(tokens) if self._nvml_on else {})
            except Exception as e:
                self.notes.append(f"GPU telemetry could not be reduced: {type(e).__name__}: {e}")
            self.notes.extend(n for n in self.nvml.notes if n not in self.notes)
        lags = [out[k] for k in ("metrics_lag_max_s", "nvml_lag_max_s") if isinstance(out.get(k), float)]
        if lags:
            # A sampler thread that woke seconds late means this process (the load generator) was starved.
            out["sampler_lag_max_s"] = max(lags)
        out = {k: _clean(v) for k, v in out.items()}
        out["notes"] = list(dict.fromkeys(self.notes))
        return out

    def series(self) -> dict[str, Any]:
        """Time series of the window (seconds from its start), for plots; small enough for JSON."""
        t0 = self.t_start or 0.0
        out: dict[str, Any] = {}
        try:
            if self.scraper is not None:
                snaps = [s for s in (self.scraper.before, *self.scraper.polls, self.scraper.after) if s is not None]
                out["engine"] = {
                    "t": [round(s.t - t0, 3) for s in snaps],
                    **{
                        g: [s.gauges.get(g) for s in snaps]
                        for g in sorted({g for s in snaps for g in s.gauges})
                    },
                }
            if self.nvml is not None and self._nvml_on:
                out["gpus"] = [
                    {
                        "index": g.index,
                        "name": g.name,
                        "t": [round(s.t - t0, 3) for s in g.samples],
                        "mem_used_gib": [round(s.mem_used / 2**30, 3) for s in g.samples],
                        "sm_util": [s.sm_util for s in g.samples],
                        "mem_bw_util": [s.mem_bw_util for s in g.samples],
                        "power_w": [_clean(s.power_w) for s in g.samples],
                    }
                    for g in self.nvml.gpus
                ]
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
        return out


def combine_windows(windows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Several windows' figures as one (repeats on one server): peaks are the highest, the rest their mean."""
    out: dict[str, Any] = {}
    keys = dict.fromkeys(k for w in windows for k in w if k != "notes")
    for key in keys:
        values = [w[key] for w in windows if isinstance(w.get(key), (int, float)) and not isinstance(w.get(key), bool)]
        if not values:
            continue
        out[key] = max(values) if key.endswith("_peak") else sum(values) / len(values)
    out["windows"] = len(windows)
    out["notes"] = list(dict.fromkeys(n for w in windows for n in (w.get("notes") or [])))
    return out


def _clean(value: Any) -> Any:
    """NaN and inf become None: the figures are stored as JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
