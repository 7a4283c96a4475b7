"""GPU telemetry from NVML (nvidia-ml-py), sampled in a background thread.

NVML is read-only and cheap (a few microseconds a call), so a thread at 10 Hz
costs the measurement nothing. Two readings are slower and get their own
cadence: ``nvmlDeviceGetPcieThroughput`` blocks for its own ~20 ms counting
window, so it is read every ``pcie_every`` ticks; energy and NVLink traffic
are cumulative counters, read at the start and the end of the window only.

Anything NVML cannot do on this GPU (no driver, an old GPU without an energy
counter, a PCIe read a virtual GPU refuses) becomes a note and a missing
figure; nothing here raises into the measurement.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GpuSample", "NvmlSampler", "nvml_status", "slowdown_note", "visible_gpus"]

SLOWDOWN_NOTE_SHARE = 0.1  # slowed for more than this share of a measurement: say so

_NVML_LOCK = threading.Lock()
_INIT_COUNT = 0


# NVML's clock-event reasons that slow a busy GPU down (its power cap, heat, an external brake), as
# opposed to idling or clocks someone set: a level measured through them measured the machine's state.
_POWER_SLOWDOWN = 0x4 | 0x80  # SwPowerCap, HwPowerBrakeSlowdown
_THERMAL_SLOWDOWN = 0x20 | 0x40  # SwThermalSlowdown, HwThermalSlowdown
_SLOWDOWN = _POWER_SLOWDOWN | _THERMAL_SLOWDOWN | 0x8  # and HwSlowdown


@dataclass
class GpuSample:
    t: float
    mem_used: float  # bytes
    sm_util: float  # percent of time a kernel ran (NVML utilization.gpu)
    mem_bw_util: float  # percent of time device memory was read or written (utilization.memory)
    power_w: float
    sm_clock_mhz: float = math.nan
    clock_events: int = -1  # NVML's clock-event reasons bitmask; -1: not readable here


@dataclass
class _Gpu:
    index: int
    handle: Any
    name: str
    mem_total: float
    samples: list[GpuSample] = field(default_factory=list)
    sm_clock_max_mhz: float | None = None
    pcie: list[tuple[float, float, float]] = field(default_factory=list)  # t, tx B/s, rx B/s
    energy_start_mj: float | None = None
    energy_end_mj: float | None = None
    nvlink_start: tuple[float, float] | None = None  # KiB tx, rx
    nvlink_end: tuple[float, float] | None = None
    errors: int = 0


def _pynvml() -> Any:
    import pynvml  # nvidia-ml-py; optional ("gpu" extra)

    return pynvml


def _init() -> Any:
    """nvmlInit with reference counting, so samplers in one process share it safely."""
    global _INIT_COUNT
    nv = _pynvml()
    with _NVML_LOCK:
        if _INIT_COUNT == 0:
            nv.nvmlInit()
        _INIT_COUNT += 1
    return nv


def _shutdown() -> None:
    global _INIT_COUNT
    with _NVML_LOCK:
        if _INIT_COUNT == 0:
            return
        _INIT_COUNT -= 1
        if _INIT_COUNT == 0:
            try:
                _pynvml().nvmlShutdown()
            except Exception:
                pass


def nvml_status() -> str | None:
    """None when NVML works here; otherwise why not, in one line."""
    try:
        nv = _init()
    except ImportError:
        return "no NVML: nvidia-ml-py is not installed (pip install 'autotune[gpu]')"
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return f"no NVML: {e} (no NVIDIA driver on this machine)"
    try:
        if nv.nvmlDeviceGetCount() == 0:
            return "no NVML: the driver sees no GPU"
        return None
    except Exception as e:
        return f"no NVML: {e}"
    finally:
        _shutdown()


def visible_gpus(env: dict[str, str] | None = None) -> list[str] | None:
    """The GPUs the engine may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs).

    None means all of them. The engine's own environment wins over this process's.
    """
    value = (env or {}).get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlSampler:
    """Samples the engine's GPUs from ``start()`` to ``stop()``; ``reduce()`` gives the figures.

    ``devices`` are CUDA_VISIBLE_DEVICES items (None: every GPU); ``limit`` keeps
    the first N of them (an engine with TP x PP = 2 uses the first two it sees).
    """

    def __init__(
        self,
        devices: list[str] | None = None,
        *,
        limit: int | None = None,
        hz: float = 10.0,
        pcie_every: int = 5,
    ) -> None:
        self.devices = devices
        self.limit = limit
        self.period = 1.0 / max(hz, 0.1)
        self.pcie_every = max(1, pcie_every)
        self.notes: list[str] = []
        self.gpus: list[_Gpu] = []
        self.t_start: float | None = None
        self.t_end: float | None = None
        self._nv: Any = None
        self.lag_s: list[float] = []  # how late each tick woke
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Opens NVML and starts sampling; False (with a note) where there is nothing to sample."""
        try:
            self._nv = _init()
        except ImportError:
            self.notes.append("no NVML: nvidia-ml-py is not installed")
            return False
        except Exception as e:
            self.notes.append(f"no NVML: {e}")
            return False
        try:
            self.gpus = self._open_gpus()
        except Exception as e:
            self.notes.append(f"NVML: could not open the GPUs: {e}")
            self.gpus = []
        if not self.gpus:
            if not self.notes:
                self.notes.append("NVML: no GPU to sample")
            _shutdown()
            self._nv = None
            return False
        for gpu in self.gpus:
            gpu.energy_start_mj = self._energy(gpu)
            gpu.nvlink_start = self._nvlink(gpu)
        self.t_start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="autotune-nvml", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._nv is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.t_end = time.monotonic()
        for gpu in self.gpus:
            gpu.energy_end_mj = self._energy(gpu)
            gpu.nvlink_end = self._nvlink(gpu)
            if gpu.errors:
                self.notes.append(f"NVML: {gpu.errors} failed reading(s) on GPU {gpu.index}")
        _shutdown()
        self._nv = None

    def _open_gpus(self) -> list[_Gpu]:
        nv = self._nv
        if self.devices is None:
            wanted: list[str] = [str(i) for i in range(nv.nvmlDeviceGetCount())]
        else:
            wanted = list(self.devices)
        if self.limit is not None:
            wanted = wanted[: max(0, self.limit)]
        gpus = []
        for item in wanted:
            if item.isdigit():
                handle = nv.nvmlDeviceGetHandleByIndex(int(item))
            else:  # a UUID (GPU-..., MIG-...)
                handle = nv.nvmlDeviceGetHandleByUUID(item)
            index = int(nv.nvmlDeviceGetIndex(handle))
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            gpu = _Gpu(index, handle, _text(nv.nvmlDeviceGetName(handle)), float(mem.total))
            try:
                gpu.sm_clock_max_mhz = float(nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_SM))
            except Exception:
                pass
            gpus.append(gpu)
        return gpus

    def _run(self) -> None:
        tick = 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            for gpu in self.gpus:
                self._sample(gpu, pcie=tick % self.pcie_every == 0)
            tick += 1
            next_t += self.period
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (slow PCIe reads): do not try to catch up
                next_t = time.monotonic()
                delay = 0
            before = time.monotonic()
            if self._stop.wait(delay):
                break
            self.lag_s.append(max(0.0, time.monotonic() - before - delay))

    def _sample(self, gpu: _Gpu, *, pcie: bool) -> None:
        nv = self._nv
        try:
            mem = nv.nvmlDeviceGetMemoryInfo(gpu.handle)
            util = nv.nvmlDeviceGetUtilizationRates(gpu.handle)
            try:
                power = nv.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
            except Exception:
                power = math.nan
            clock, events = self._clocks(gpu)
            gpu.samples.append(GpuSample(time.monotonic(), float(mem.used), float(util.gpu), float(util.memory), power,
                                         clock, events))
        except Exception:
            gpu.errors += 1
        if pcie:
            try:
                tx = nv.nvmlDeviceGetPcieThroughput(gpu.handle, nv.NVML_PCIE_UTIL_TX_BYTES)
                rx = nv.nvmlDeviceGetPcieThroughput(gpu.handle, nv.NVML_PCIE_UTIL_RX_BYTES)
                gpu.pcie.append((time.monotonic(), tx * 1024.0, rx * 1024.0))  # NVML gives KB/s
            except Exception:
                pass

    def _clocks(self, gpu: _Gpu) -> tuple[float, int]:
        """The SM clock (MHz) and the clock-event reasons now; NaN and -1 where NVML cannot say."""
        nv = self._nv
        try:
            clock = float(nv.nvmlDeviceGetClockInfo(gpu.handle, nv.NVML_CLOCK_SM))
        except Exception:
            clock = math.nan
        # The reasons' newer name (drivers from 535 on); the older one where the binding lacks it.
        read = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        try:
            events = int(read(gpu.handle)) if read is not None else -1
        except Exception:
            events = -1
        return clock, events

    def _energy(self, gpu: _Gpu) -> float | None:
        try:
            return float(self._nv.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))  # mJ since driver load
        except Exception:
            return None

    def _nvlink(self, gpu: _Gpu) -> tuple[float, float] | None:
        nv = self._nv
        try:
            values = nv.nvmlDeviceGetFieldValues(
                gpu.handle,
                [nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX],
            )
            out = []
            for v in values:
                if getattr(v, "nvmlReturn", 0) != 0:
                    return None
                out.append(float(v.value.ullVal))  # KiB since driver load, all links
            return out[0], out[1]
        except Exception:
            return None

    def reduce(self, tokens: float | None = None) -> dict[str, float]:
        """Figures over the window: across GPUs, memory is per GPU (peak of any), rates are summed.

        ``tokens``: tokens generated in the window, for energy per token.
        """
        out = reduce_gpus(self.gpus, self.t_start, self.t_end, tokens)
        if self.lag_s:
            out["nvml_lag_max_s"] = max(self.lag_s)
        return out


def reduce_gpus(
    gpus: list[_Gpu], t_start: float | None, t_end: float | None, tokens: float | None
) -> dict[str, float]:
    out: dict[str, float] = {}
    if not gpus or t_start is None:
        return out
    duration = (t_end or time.monotonic()) - t_start
    n_samples = min(len(g.samples) for g in gpus)
    out["gpu_count"] = len(gpus)
    out["nvml_samples"] = n_samples
    if duration > 0:
        out["nvml_hz"] = n_samples / duration
    if n_samples == 0:
        return out
    gib = float(2**30)
    out["gpu_mem_total_gib"] = min(g.mem_total for g in gpus) / gib
    out["gpu_mem_used_gib_peak"] = max(max(s.mem_used for s in g.samples) for g in gpus) / gib
    out["gpu_mem_used_gib_mean"] = _mean([s.mem_used for g in gpus for s in g.samples]) / gib
    out["gpu_mem_used_frac_peak"] = max(max(s.mem_used for s in g.samples) / g.mem_total for g in gpus)
    for key, attr in (("sm_util", "sm_util"), ("mem_bw_util", "mem_bw_util")):
        values = [getattr(s, attr) for g in gpus for s in g.samples]
        out[f"{key}_mean"] = _mean(values)
        out[f"{key}_peak"] = max(values)
        # The busiest GPU's mean: one straggler in TP shows here, not in the mean over all.
        out[f"{key}_mean_max_gpu"] = max(_mean([getattr(s, attr) for s in g.samples]) for g in gpus)
    clocks = [s.sm_clock_mhz for g in gpus for s in g.samples if math.isfinite(s.sm_clock_mhz)]
    if clocks:
        out["sm_clock_mhz_mean"] = _mean(clocks)
        out["sm_clock_mhz_min"] = min(clocks)
        if all(g.sm_clock_max_mhz for g in gpus):
            out["sm_clock_mhz_max_rated"] = min(g.sm_clock_max_mhz for g in gpus)  # type: ignore[type-var]
    events = [s.clock_events for g in gpus for s in g.samples if s.clock_events >= 0]
    if events:
        # Shares of the GPUs' samples taken while slowed (one slowed GPU slows its whole TP group).
        out["clock_slowdown_share"] = sum(1 for e in events if e & _SLOWDOWN) / len(events)
        out["clock_slowdown_power_share"] = sum(1 for e in events if e & _POWER_SLOWDOWN) / len(events)
        out["clock_slowdown_thermal_share"] = sum(1 for e in events if e & _THERMAL_SLOWDOWN) / len(events)
    powers = [[s.power_w for s in g.samples if math.isfinite(s.power_w)] for g in gpus]
    if all(powers):
        out["power_w_mean"] = sum(_mean(p) for p in powers)
        out["power_w_peak"] = sum(max(p) for p in powers)
    energy = _energy_j(gpus)
    if energy is not None:
        out["energy_j"] = energy
        out["energy_source_counter"] = 1.0
    elif "power_w_mean" in out and duration > 0:
        out["energy_j"] = sum(_integrate([(s.t, s.power_w) for s in g.samples]) for g in gpus)
        out["energy_source_counter"] = 0.0
    if tokens and "energy_j" in out:
        out["energy_per_token_j"] = out["energy_j"] / tokens
    if all(g.pcie for g in gpus):
        gb = 1e9
        out["pcie_tx_gbps_mean"] = sum(_mean([p[1] for p in g.pcie]) for g in gpus) / gb
        out["pcie_rx_gbps_mean"] = sum(_mean([p[2] for p in g.pcie]) for g in gpus) / gb
        out["pcie_tx_gbps_peak"] = max(max(p[1] for p in g.pcie) for g in gpus) / gb
        out["pcie_rx_gbps_peak"] = max(max(p[2] for p in g.pcie) for g in gpus) / gb
    if duration > 0 and all(g.nvlink_start and g.nvlink_end for g in gpus):
        tx = sum(g.nvlink_end[0] - g.nvlink_start[0] for g in gpus)  # type: ignore[index]
        rx = sum(g.nvlink_end[1] - g.nvlink_start[1] for g in gpus)  # type: ignore[index]
        out["nvlink_tx_gbps_mean"] = tx * 1024.0 / duration / 1e9
        out["nvlink_rx_gbps_mean"] = rx * 1024.0 / duration / 1e9
    return out


def slowdown_note(telemetry: dict[str, Any] | None) -> str | None:
    """One line when the GPU slowed its own clocks through much of a measurement, else None.

    A power cap or heat that throttles the GPU lowers what any configuration
    serves while it lasts: the figures then describe the machine's state as
    much as the configuration, and a repeat may not reproduce them.
    """
    t = telemetry or {}
    share = t.get("clock_slowdown_share")
    if not isinstance(share, (int, float)) or not share > SLOWDOWN_NOTE_SHARE:
        return None
    power, thermal = t.get("clock_slowdown_power_share") or 0.0, t.get("clock_slowdown_thermal_share") or 0.0
    clock, rated = t.get("sm_clock_mhz_mean"), t.get("sm_clock_mhz_max_rated")
    at = f"; SM clock {clock:.0f} MHz on average" + (f" of {rated:.0f}" if rated else "") if clock else ""
    return (f"the GPU slowed its clocks for {share:.0%} of the measurement (power cap {power:.0%}, "
            f"heat {thermal:.0%}{at}): its figures may not repeat")


def _energy_j(gpus: list[_Gpu]) -> float | None:
    if not all(g.energy_start_mj is not None and g.energy_end_mj is not None for g in gpus):
        return None
    total = sum((g.energy_end_mj or 0.0) - (g.energy_start_mj or 0.0) for g in gpus) / 1000.0
    return total if total >= 0 else None


def _integrate(points: list[tuple[float, float]]) -> float:
    """Trapezoidal integral of (t, watts) over time: joules."""
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:]))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
