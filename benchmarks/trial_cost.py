"""What a trial costs on the engine: its start (with the compile cache's hit or miss) and its measurement.

Runs one study spec with a given autotune (this checkout, or another one's
source folder for the code before a change) and keeps, per trial, the engine
start, the measurement and the compile cache's verdict, under a label of
``--out`` (``before`` / ``after``). The two runs side by side:

    .venv/bin/python benchmarks/trial_cost.py --spec studies/h200-llama8b-chat.yaml --trials 3 \
        --autotune /tmp/autotune-before --label before --out benchmarks/data/h200/trial-cost.json
    .venv/bin/python benchmarks/trial_cost.py --spec studies/h200-llama8b-chat.yaml --trials 8 \
        --label after --out benchmarks/data/h200/trial-cost.json

It prints each run's median of start + measurement per trial and the ratio of
``after`` to ``before`` once both are there. ``--study-dir`` resumes a study;
``--record-only`` records one as it stands (a run cut before it could).
Where the code that ran recorded no start-up phases (the code before did
not), they are read from each trial's kept engine log by this checkout's
parser (``phases_from: "engine log"``). ``--report FILE`` prints a recorded
file as Markdown, with the early-stop checks of ``early_stop_check.py``, for
the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autotune.engines import vllm  # noqa: E402
from benchmarks._common import MARK, engine_seconds, flip_verdict, print_report, read_kept  # noqa: E402


def trials_of(study_dir: Path, autotune: Path) -> dict[str, Any]:
    """Each launched trial's seconds, read with the autotune that ran it (its storage layout)."""
    code = r'''
import json, sys
import optuna
from pathlib import Path
url = f"sqlite:///{Path(sys.argv[1]).resolve() / 'study.db'}"
study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
out = []
for t in study.trials:
    a = t.user_attrs
    if a.get("status") in (None, "infeasible", "surplus"):
        continue
    startup = a.get("startup") or {}
    out.append({"number": t.number, "state": t.state.name, "status": a.get("status"), "config": t.params,
                "startup_s": a.get("startup_s"), "measure_s": a.get("measure_s"),
                "compile_cache_hit": startup.get("compile_cache_hit"), "phases_s": startup.get("phases_s"),
                "goodput": (a.get("figures") or {}).get("goodput"),
                "goodput_upper_bound": (a.get("figures") or {}).get("goodput_upper_bound"),
                "levels": len((a.get("goodput") or {}).get("levels") or []),
                "wall_s": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None})
base = study.user_attrs.get("baseline")
print(json.dumps({"trials": out, "baseline": None if not base else
                  {**{k: base.get(k) for k in ("startup_s", "measure_s", "status")},
                   "goodput": (base.get("figures") or {}).get("goodput"),
                   "levels": len((base.get("goodput") or {}).get("levels") or [])},
                  "environment": (study.trials[0].user_attrs.get("environment") if study.trials else None)}))
'''
    out = subprocess.run([sys.executable, "-c", code, str(study_dir.resolve())], capture_output=True, text=True,
                         env=_env(autotune), cwd=study_dir.resolve().parent, check=True)
    return json.loads(out.stdout)


def read_phases(got: dict[str, Any], study_dir: Path) -> None:
    """Start-up phases from the kept engine logs, for trials (and the defaults' run) whose code recorded none."""
    runs = [(t, study_dir / "trials" / f"{t['number']:04d}") for t in got["trials"]]
    if got.get("baseline"):
        runs.append((got["baseline"], study_dir / "baseline"))
    for t, folder in runs:
        if t.get("phases_s"):
            continue
        text = read_kept(folder / "engine.log")
        if text is None:
            continue
        bill = vllm.read_startup(text.splitlines(), t.get("startup_s"))
        t.update(phases_s=bill.phases, compile_cache_hit=bill.compile_cache_hit, phases_from="engine log")


def report(data: dict[str, Any]) -> str:
    """The recorded runs as Markdown: every trial's start-up bill and measurement, the medians, the checks."""
    env = data.get("environment") or {}
    out = [f"{env.get('gpu', '?')}, driver {env.get('driver', '?')}, CUDA {env.get('cuda', '?')}, "
           f"{env.get('engine', '?')} {env.get('engine_version', '?')}", "",
           "| code | trial | configuration | start s | compile s (cache) | warm-up s | measure s | levels | goodput |",
           "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- |"]

    def shown(config: dict[str, Any]) -> str:
        if not config:
            return "engine defaults"
        short = {"quantization": "", "max_num_seqs": "mns ", "max_num_batched_tokens": "mnbt ",
                 "block_size": "block ", "kv_cache_dtype": "kv ", "enable_prefix_caching": "prefix "}
        return ", ".join(f"{label}{config[k]}" for k, label in short.items() if k in config)

    def row(label: str, number: Any, t: dict[str, Any]) -> str:
        p = t.get("phases_s") or {}
        hit = {True: "hit", False: "miss"}.get(t.get("compile_cache_hit"), "-")
        compile_s = f"{p['compile']:.0f} ({hit})" if "compile" in p else "-"
        goodput = (f"< {t['goodput_upper_bound']:g}" if t.get("goodput_upper_bound") else
                   "-" if t.get("goodput") is None else f"{t['goodput']:g}")
        cells = [label, str(number), shown(t.get("config") or {}), _s(t.get("startup_s")), compile_s,
                 _s(p.get("warmup")), _s(t.get("measure_s")), str(t.get("levels", "-")), goodput]
        return "| " + " | ".join(cells) + " |"

    for label in ("before", "after"):
        run = data.get(label) or {}
        if run.get("baseline"):
            out.append(row(label, "defaults", {**run["baseline"], "config": {}}))
        out += [row(label, t["number"], t) for t in run.get("trials", [])]
    out.append("")
    for label in ("before", "after"):
        run = data.get(label) or {}
        if run.get("median_trial_s") is not None:
            trials = run["trials"]
            starts = statistics.median(t["startup_s"] for t in trials)
            measures = statistics.median(t["measure_s"] or 0.0 for t in trials)
            out.append(f"- {label}: {len(trials)} trials, median start + measurement {run['median_trial_s']:.0f} s "
                       f"(median start {starts:.0f} s, median measurement {measures:.0f} s), "
                       f"{run['gpu_seconds'] / 60:.1f} engine-minutes in all")
    if all((data.get(k) or {}).get("median_trial_s") for k in ("before", "after")):
        out.append(f"- after / before: **{data['after']['median_trial_s'] / data['before']['median_trial_s']:.2f}** "
                   "(target <= 0.5)")
    checks = data.get("early_stop_checks") or []
    if checks:
        out += ["", "Early-stopped trials searched in full on a fresh start (`early_stop_check.py`):", "",
                "| trial | stopped below | full search | levels (✓ holds, ✗ fails, ? uncertain) | verdict |",
                "| --- | ---: | ---: | --- | --- |"]
        for c in checks:
            levels = " ".join(f"{load:g} {MARK.get(v, v)}" for load, v in c["levels"])
            out.append(f"| {c['trial']} | {c['bound']:g} | {c['goodput']:g} | {levels} | {flip_verdict(c)} |")
    return "\n".join(out)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}"


def _env(autotune: Path) -> dict[str, str]:
    """The environment that imports ``autotune`` from that folder first, keeping the rest of the path (an
    engine installed under PYTHONPATH). The child must not run from this checkout's root either: the
    current folder comes first on ``python -m``'s path, and would import this autotune instead."""
    rest = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(autotune), *([rest] if rest else [])])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path)
    p.add_argument("--trials", type=int)
    p.add_argument("--label", help="before or after")
    p.add_argument("--autotune", type=Path, default=REPO, help="the source folder of the autotune to run")
    p.add_argument("--study-dir", type=Path, default=None)
    p.add_argument("--out", type=Path)
    p.add_argument("--report", type=Path, metavar="FILE", help="print a recorded file as Markdown; run nothing")
    p.add_argument("--record-only", action="store_true",
                   help="run nothing: record the trials of the study in --study-dir as it stands")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more optimize flags")
    args = p.parse_args(argv)
    if args.report is not None:
        return print_report(args.report, report)
    missing = [f"--{k.replace('_', '-')}" for k in ("spec", "trials", "label", "out") if getattr(args, k) is None]
    if missing:
        p.error(f"{', '.join(missing)} needed to run or record a study (or --report FILE to print one)")

    study_dir = (args.study_dir or (REPO / "autotune-runs" / f"trial-cost-{args.label}")).resolve()
    study_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "autotune.cli", "optimize", "--spec", str(args.spec.resolve()),
           "--trials", str(args.trials), "--study-dir", str(study_dir), *args.extra]
    env = _env(args.autotune.resolve())
    found = subprocess.run([sys.executable, "-c", "import autotune; print(autotune.__file__)"], env=env,
                           cwd=study_dir.parent, capture_output=True, text=True)
    origin = Path(found.stdout.strip() or ".").resolve()
    if found.returncode != 0 or args.autotune.resolve() not in origin.parents:
        seen = found.stdout.strip() or found.stderr.strip()
        print(f"error: the study would not run the autotune in {args.autotune} but {seen}", file=sys.stderr)
        return 2
    print(f"autotune: {origin.parent}", flush=True)
    returncode = 0 if args.record_only else _run_study(cmd, env, study_dir.parent)
    if not (study_dir / "study.db").exists():
        return returncode or 1
    # A study cut short (an interrupt, a machine's time running out) keeps the trials it finished: record them.
    data: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    got = trials_of(study_dir, args.autotune.resolve())
    read_phases(got, study_dir)
    costs = [c for c in (engine_seconds(t) for t in got["trials"]) if c is not None]
    got["gpu_seconds"] = sum(costs) + (engine_seconds(got.get("baseline") or {}) or 0.0)
    got["median_trial_s"] = statistics.median(costs) if costs else None
    # a study recorded as it stands keeps the command recorded with it before, if any
    got["command"] = data.get(args.label, {}).get("command") if args.record_only else " ".join(cmd[1:])
    data[args.label] = got
    if got.get("environment"):
        data["environment"] = got["environment"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2))
    for label in ("before", "after"):
        if label in data and data[label].get("median_trial_s") is not None:
            print(f"{label}: {len(data[label]['trials'])} trials, median start + measurement "
                  f"{data[label]['median_trial_s']:.0f} s, {data[label]['gpu_seconds'] / 60:.1f} engine-minutes")
    if all(data.get(k, {}).get("median_trial_s") for k in ("before", "after")):
        print(f"after / before: {data['after']['median_trial_s'] / data['before']['median_trial_s']:.2f} (target <= 0.5)")
    return 0 if returncode in (0, 1) else returncode


def _run_study(cmd: list[str], env: dict[str, str], cwd: Path) -> int:
    """The study's exit status. An interrupt meant for the whole run (a machine's time running out
    signals the process group) reaches the study too, which winds down and keeps what it finished:
    wait for it, so that those trials are recorded."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main())
