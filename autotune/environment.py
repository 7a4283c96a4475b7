"""The environment a figure was measured in; every stored result carries one.

A throughput number without the GPU, driver, CUDA and engine version behind it
cannot be compared with anything, so this is recorded with every trial.
"""

from __future__ import annotations

import os
import platform
import socket
from functools import lru_cache
from typing import Any

from autotune import __version__


@lru_cache(maxsize=1)
def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs seen through NVML; empty where there is no driver."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no device: NVMLError and friends
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            out.append(
                {
                    "index": i,
                    "name": _text(pynvml.nvmlDeviceGetName(h)),
                    "memory_gib": round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 1),
                    "driver": driver,
                    "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
                }
            )
        return out
    finally:
        pynvml.nvmlShutdown()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def detect_device() -> str:
    return "cuda" if gpus() else "cpu"


def record(engine: str, engine_version: str | None, device: str) -> dict[str, Any]:
    found = gpus()
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "autotune": __version__,
        "engine": engine,
        "engine_version": engine_version,
        "device": device,
    }
    if found:
        env.update(
            gpu=found[0]["name"],
            gpu_count=len(found),
            gpu_memory_gib=found[0]["memory_gib"],
            driver=found[0]["driver"],
            cuda=found[0]["cuda"],
        )
    return env


def describe(env: dict[str, Any]) -> str:
    """One line for tables and reports."""
    where = (
        f"{env.get('gpu_count')}x {env.get('gpu')} (driver {env.get('driver')}, CUDA {env.get('cuda')})"
        if env.get("gpu")
        else f"CPU only ({env.get('cpu_count')} cores)"
    )
    return f"{env.get('engine')} {env.get('engine_version')} on {where}, {env.get('host')}"
