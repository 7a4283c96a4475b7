"""Turn one finished GPU study folder into the files docs/results-h100.md cites.

A study run on a lent GPU machine comes back as a folder (study.db, trials/,
and the `default/` and `best/` measure runs of examples/h100/tune-llama8b-chat.sh).
Engine logs and per-request samples are too big for the repository; this
script keeps what a reader needs to check every figure, as small JSON:

* ``<prefix>_trials.json``: every trial's configuration, goodput, load levels,
  engine start and measurement seconds, and its telemetry summary;
* ``<prefix>_surface.json``: the same points as an ``autotune-surface/1`` file
  (marked ``"grid": false``: a study's points, not an exhaustive grid);
* ``<prefix>_default_5x.json`` / ``<prefix>_best_5x.json``: the two measure runs;
* ``docs/img/<img>-goodput.png`` and ``docs/img/<img>-ttft.png``;

and prints the markdown tables of the results page.

    .venv/bin/python benchmarks/h100_results.py STUDY_DIR --prefix 2026-11-25b
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
TELEMETRY_KEYS = (
    "sm_util_mean", "mem_bw_util_mean", "power_w_mean", "energy_per_token_j", "gpu_mem_used_gib_peak",
    "kv_cache_usage_peak", "running_peak", "waiting_peak", "preemptions", "batch_mean", "queue_share_of_ttft",
    "engine_ttft_p99_ms", "prefill_time_mean_ms",
)


def _trials(study_dir: Path) -> list[dict[str, Any]]:
    storage = f"sqlite:///{study_dir / 'study.db'}"
    name = optuna.get_all_study_summaries(storage)[0].study_name
    study = optuna.load_study(study_name=name, storage=storage)
    rows = []
    for trial in study.trials:
        outcome_path = study_dir / "trials" / f"{trial.number:04d}" / "outcome.json"
        outcome = json.loads(outcome_path.read_text()) if outcome_path.exists() else {}
        goodput = outcome.get("goodput") or {}
        telemetry = outcome.get("telemetry") or {}
        best = goodput.get("best") or {}
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "goodput": trial.values[0] if trial.values else None,
            "enqueued_by": trial.user_attrs.get("enqueued_by"),
            "config": trial.user_attrs.get("config", trial.params),
            "command": outcome.get("command"),
            "startup_s": outcome.get("startup_s"),
            "measure_s": outcome.get("measure_s"),
            "wall_s": (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start else None,
            "best_level": best,
            "levels": [
                {k: level.get(k) for k in ("load", "holds", "p99_ttft_ms", "output_throughput", "request_throughput")}
                for level in goodput.get("levels", [])
            ],
            "telemetry": {k: telemetry.get(k) for k in TELEMETRY_KEYS if k in telemetry},
            "environment": trial.user_attrs.get("environment"),
        })
    return rows


def _surface(rows: list[dict[str, Any]], spec: dict[str, Any], default: dict[str, Any] | None) -> dict[str, Any]:
    points = []
    for row in rows:
        if row["state"] != "COMPLETE":
            continue
        levels = row["levels"]
        held = [lv for lv in levels if lv["holds"]]
        at = max(held, key=lambda lv: lv["load"]) if held else (levels[0] if levels else {})
        points.append({
            "config": row["config"], "status": "ok", "reason": None, "goodput": row["goodput"],
            "feasible": bool(row["goodput"]), "output_throughput": at.get("output_throughput"),
            "request_throughput": at.get("request_throughput"), "p99_ttft_ms": at.get("p99_ttft_ms"),
            "startup_s": row["startup_s"], "measure_s": row["measure_s"],
            "engine_s": (row["startup_s"] or 0) + (row["measure_s"] or 0), "levels": levels,
            "source": f"trial {row['number']}",
        })
    if default is not None:
        first = default["goodput_levels"][0]["levels"]
        points.append({
            "config": {"engine defaults": True}, "status": "ok", "reason": None,
            "goodput": default["repeats"][0]["goodput"], "feasible": True,
            "startup_s": default.get("startup_s"),
            "levels": [{k: lv.get(k) for k in ("load", "holds", "p99_ttft_ms", "output_throughput")} for lv in first],
            "source": "measure (engine defaults), first repeat",
        })
    env = next((r["environment"] for r in rows if r.get("environment")), None)
    return {
        "format": "autotune-surface/1", "grid": False,
        "description": "points of one autotune study on real vLLM (not an exhaustive grid), plus the engine defaults",
        "environment": env, "model": spec.get("model"), "max_model_len": spec.get("max_model_len"),
        "workload": spec.get("workload"), "slo": spec.get("slo"), "objective": "goodput",
        "goodput_unit": (spec.get("goodput") or {}).get("unit", "req/s"), "goodput_options": spec.get("goodput"),
        "space": spec.get("space"), "points": points,
    }


def _plots(rows: list[dict[str, Any]], default: dict[str, Any], best: dict[str, Any], slo_ms: float, img: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r["goodput"] is not None]
    d_mean = statistics.mean(r["goodput"] for r in default["repeats"])
    b_vals = [r["goodput"] for r in best["repeats"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.axhline(d_mean, color="grey", linestyle="--", label=f"vLLM defaults, 5 repeats: {d_mean:.2f} req/s")
    ax.axhspan(statistics.mean(b_vals) - statistics.stdev(b_vals), statistics.mean(b_vals) + statistics.stdev(b_vals),
               color="tab:green", alpha=0.15, label=f"best config, 5 repeats: {statistics.mean(b_vals):.2f} ± {statistics.stdev(b_vals):.2f}")
    colors = ["tab:orange" if r["enqueued_by"] else "tab:blue" for r in done]
    ax.scatter([r["number"] for r in done], [r["goodput"] for r in done], c=colors, zorder=3)
    for r in done:
        c = r["config"]
        ax.annotate(f"{'fp8' if c.get('quantization') == 'fp8' else 'bf16'} {c.get('max_num_batched_tokens')}",
                    (r["number"], r["goodput"]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("trial (orange: enqueued by the spec; blue: sampler or rounds)")
    ax.set_ylabel("goodput, req/s under p99 TTFT < 300 ms")
    ax.set_title("Llama-3.1-8B shape on one H100, vLLM 0.25.1: goodput per trial")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    paths = [out / f"{img}-goodput.png"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run, color, label in ((default, "grey", "vLLM defaults"), (best, "tab:green", "best config")):
        for i, search in enumerate(run["goodput_levels"]):
            pts = sorted((lv["load"], lv["p99_ttft_ms"]) for lv in search["levels"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, alpha=0.6,
                    label=label if i == 0 else None)
    ax.axhline(slo_ms, color="tab:red", linestyle=":", label=f"SLO p99 TTFT {slo_ms:.0f} ms")
    ax.set_xlabel("offered load, req/s (Poisson)")
    ax.set_ylabel("p99 TTFT, ms")
    ax.set_title("Every level of every repeat (5 goodput searches each)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(out / f"{img}-ttft.png")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def _fmt(x: Any, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--prefix", required=True, help="file name prefix under benchmarks/data/h100/, e.g. a date")
    parser.add_argument("--img", default="h100", help="image name prefix under docs/img/")
    parser.add_argument("--slo-ms", type=float, default=300.0)
    args = parser.parse_args()
    study_dir: Path = args.study_dir
    data = ROOT / "benchmarks" / "data" / "h100"
    data.mkdir(parents=True, exist_ok=True)

    rows = _trials(study_dir)
    default = json.loads((study_dir / "default" / "measure.json").read_text())
    best = json.loads((study_dir / "best" / "measure.json").read_text())
    storage = f"sqlite:///{study_dir / 'study.db'}"
    name = optuna.get_all_study_summaries(storage)[0].study_name
    spec = optuna.load_study(study_name=name, storage=storage).user_attrs.get("autotune_spec", {})

    (data / f"{args.prefix}_trials.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    (data / f"{args.prefix}_surface.json").write_text(json.dumps(_surface(rows, spec, default), indent=1, default=str) + "\n")
    for tag, run in (("default", default), ("best", best)):
        (data / f"{args.prefix}_{tag}_5x.json").write_text(json.dumps(run, indent=1) + "\n")
    plots = _plots(rows, default, best, args.slo_ms, args.img)

    print("| trial | origin | quantization | kv_cache_dtype | max_num_batched_tokens | max_num_seqs | gpu_mem_util "
          "| async | goodput (req/s) | p99 TTFT at goodput (ms) | out tok/s at goodput | SM util % | engine start (s) | trial (s) |")
    print("|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c, b, t = r["config"], r["best_level"], r["telemetry"]
        held = [lv for lv in r["levels"] if lv["holds"]]
        p99 = max(held, key=lambda lv: lv["load"])["p99_ttft_ms"] if held else None
        print(f"| {r['number']} | {'spec' if r['enqueued_by'] else 'sampler'} | {c.get('quantization') or 'none'} | "
              f"{c.get('kv_cache_dtype')} | {c.get('max_num_batched_tokens')} | {c.get('max_num_seqs')} | "
              f"{c.get('gpu_memory_utilization')} | {c.get('async_scheduling')} | {_fmt(r['goodput'], 1)} | {_fmt(p99)} | "
              f"{_fmt(b.get('output_throughput'))} | {_fmt(t.get('sm_util_mean'))} | {_fmt(r['startup_s'])} | {_fmt(r['wall_s'])} |")
    print()
    print("| figure | vLLM defaults (mean ± std, n=5) | best config (mean ± std, n=5) | ratio |")
    print("|---|---:|---:|---:|")
    for key, nd in (("goodput", 2), ("output_throughput", 0), ("p99_ttft_ms", 0), ("median_ttft_ms", 0), ("mean_tpot_ms", 1)):
        d, b = default["summary"].get(key), best["summary"].get(key)
        if d and b:
            ratio = b["mean"] / d["mean"] if d["mean"] else float("nan")
            print(f"| {key} | {d['mean']:,.{nd}f} ± {d['std']:,.{nd}f} | {b['mean']:,.{nd}f} ± {b['std']:,.{nd}f} | {ratio:.2f}x |")
    print()
    for tag, run in (("defaults", default), ("best", best)):
        print(f"{tag}: " + "; ".join(
            " ".join(f"{lv['load']:g}{'✓' if lv['holds'] else '✗'}({lv['p99_ttft_ms']:.0f})" for lv in s["levels"])
            for s in run["goodput_levels"]))
    print("written:", ", ".join(str(p.relative_to(ROOT)) for p in [*plots]))


if __name__ == "__main__":
    main()
