"""The environment a figure was measured in; every stored result carries one.

A throughput number without the GPU, driver, CUDA and engine version behind it
cannot be compared with anything, so this is recorded with every trial.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from autotune._version import __version__


@lru_cache(maxsize=1)
def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs seen through NVML; empty where there is no driver."""
    return nvml_inventory()["gpus"]


@lru_cache(maxsize=1)
def nvml_inventory() -> dict[str, Any]:
    """GPUs and how they are wired, read once: ``{"gpus": [...], "topology": {...}}``."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return {"gpus": [], "topology": {}}
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no device: NVMLError and friends
        return {"gpus": [], "topology": {}}
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        out = []
        handles = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            handles.append(h)
            out.append(
                {
                    "index": i,
                    "name": _text(pynvml.nvmlDeviceGetName(h)),
                    "memory_gib": round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 1),
                    "driver": driver,
                    "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
                    "bus_id": _optional(lambda: _text(pynvml.nvmlDeviceGetPciInfo(h).busId)),
                    "pcie_gen": _optional(lambda: pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h)),
                    "pcie_width": _optional(lambda: pynvml.nvmlDeviceGetCurrPcieLinkWidth(h)),
                    "nvlink_remotes": _nvlink_remotes(pynvml, h),
                }
            )
        return {"gpus": out, "topology": _topology(pynvml, handles, out)}
    finally:
        pynvml.nvmlShutdown()


# Topology: NVLink or the PCIe path between GPUs.
_PCIE_LEVELS = {
    0: "same board", 10: "PCIe switch", 20: "PCIe switches", 30: "PCIe host bridge",
    40: "PCIe, same NUMA node", 50: "PCIe across sockets (SMP)",
}


def _optional(read: Any) -> Any:
    # Older GPUs and virtualised ones refuse some queries; a missing field beats no record.
    try:
        return read()
    except Exception:
        return None


def _nvlink_remotes(pynvml: Any, handle: Any) -> list[str]:
    """PCI bus ids at the far end of each active NVLink ("" where it is a switch or unknown)."""
    remotes = []
    for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            if pynvml.nvmlDeviceGetNvLinkState(handle, link) != pynvml.NVML_FEATURE_ENABLED:
                continue
        except Exception:  # link absent, or no NVLink at all
            continue
        remote = _optional(lambda: _text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
        remotes.append(remote or "")
    return remotes


def _topology(pynvml: Any, handles: list[Any], found: list[dict[str, Any]]) -> dict[str, Any]:
    """How each pair of GPUs talks: over NVLink, or the PCIe level of their common ancestor."""
    pairs: dict[str, str] = {}
    bus = {g["bus_id"].lower(): g["index"] for g in found if g.get("bus_id")}
    for i in range(len(handles)):
        for j in range(i + 1, len(handles)):
            pairs[f"{i}-{j}"] = _pair_link(pynvml, handles, found, bus, i, j)
    links = sorted({len(g["nvlink_remotes"]) for g in found})
    if not pairs:
        summary = "single GPU" + (f", {links[-1]} NVLink links" if links and links[-1] else "")
    elif all(v.startswith("NVLink") for v in pairs.values()):
        summary = f"NVLink between all GPUs ({links[-1]} links per GPU)"
    elif any(v.startswith("NVLink") for v in pairs.values()):
        summary = "mixed: NVLink between some GPUs, PCIe between others"
    else:
        summary = "PCIe only (" + ", ".join(sorted(set(pairs.values()))) + ")"
    return {"summary": summary, "pairs": pairs}


def _pair_link(pynvml: Any, handles: list[Any], found: list[dict[str, Any]], bus: dict[str, int], i: int, j: int) -> str:
    ri, rj = found[i]["nvlink_remotes"], found[j]["nvlink_remotes"]
    direct = sum(1 for r in ri if bus.get(r.lower()) == j)
    if direct:
        return f"NVLink x{direct}"
    # Both linked, neither to the other's bus id: an NVSwitch in between.
    if ri and rj and any(r.lower() not in bus for r in ri) and any(r.lower() not in bus for r in rj):
        return "NVLink (NVSwitch)"
    level = _optional(lambda: pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j]))
    return _PCIE_LEVELS.get(level, f"PCIe (level {level})") if level is not None else "unknown"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def detect_device() -> str:
    return "cuda" if gpus() else "cpu"


def record(engine: str, engine_version: str | None, device: str) -> dict[str, Any]:
    inventory = nvml_inventory()
    found = inventory["gpus"]
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "autotune": __version__,
        **({"autotune_commit": commit} if (commit := source_commit()) else {}),
        "engine": engine,
        "engine_version": engine_version,
        "device": device,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if found:
        env.update(
            gpu=found[0]["name"],
            gpu_count=len(found),
            gpu_memory_gib=found[0]["memory_gib"],
            driver=found[0]["driver"],
            cuda=found[0]["cuda"],
            topology=inventory["topology"].get("summary"),
            topology_pairs=inventory["topology"].get("pairs", {}),
            gpus=[
                {k: g.get(k) for k in ("index", "name", "memory_gib", "bus_id", "pcie_gen", "pcie_width")}
                | {"nvlink_links": len(g.get("nvlink_remotes") or [])}
                for g in found
            ],
        )
    return env


@lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The commit of the autotune source that measured, where it runs from a checkout.

    A checkout copied without its ``.git`` (a GPU machine that receives only the
    files) names it in ``AUTOTUNE_COMMIT``; an installed wheel has none, and its
    version says enough.
    """
    named = os.environ.get("AUTOTUNE_COMMIT", "").strip()
    if named:
        return named
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def cpu_model() -> str:
    # platform.processor() is empty on most Linux builds; /proc/cpuinfo names the part.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel lists them (``avx512f``, ``amx_tile``); none off Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_avx512() -> bool:
    """AVX-512 (or AMX, which comes with it): what engines' CPU kernels such as vLLM's FP8 KV cache need."""
    return bool({"avx512f", "amx_tile"} & cpu_flags())


# Completeness: a result is only reported with its environment.
REQUIRED = ("engine", "engine_version", "autotune", "python", "host", "device")
REQUIRED_GPU = ("gpu", "gpu_count", "gpu_memory_gib", "topology", "driver", "cuda")


def missing(env: dict[str, Any] | None) -> list[str]:
    """Fields a result's environment record lacks; all of them when there is none."""
    if not env:
        return ["environment"]
    need = REQUIRED + (REQUIRED_GPU if env.get("device") == "cuda" else ())
    return [k for k in need if env.get(k) in (None, "")]


def describe(env: dict[str, Any]) -> str:
    """One line for tables and reports."""
    where = (
        f"{env.get('gpu_count')}x {env.get('gpu')} {env.get('gpu_memory_gib')} GiB "
        f"({env.get('topology') or 'topology unknown'}; driver {env.get('driver')}, CUDA {env.get('cuda')})"
        if env.get("gpu")
        else f"CPU only ({env.get('cpu')}, {env.get('cpu_count')} cores)"
    )
    return (
        f"{env.get('engine')} {env.get('engine_version')} on {where}, {env.get('host')}, "
        f"Python {env.get('python')}, autotune {env.get('autotune')}"
    )
