"""How steady is one configuration's goodput verdict? Many searches over several fresh engine starts.

A study measures each configuration once and keeps that verdict, so the
verdict must not swing between starts or between searches on one start. For
each configuration (vLLM's defaults, and fp8 weights and KV cache by default)
this starts the engine ``--starts`` times and runs goodput searches on each
start until ``--searches`` in all, each search with its own arrival schedule,
exactly as a trial searches (``autotune.trial.measure``). It reports, per
configuration, the goodputs' mean ± std, coefficient of variation, the lowest
against the median, and the bracket between the highest level that held and
the lowest that failed, as a share of the goodput.

Each search is kept whole (``searches``): every level's verdict, requests,
intervals, the load generator's own load, and the GPU's telemetry over the
level (clocks, power, the engine's queue), so that a search that reads far
from the others can be explained from the file.

Each search also keeps its levels' requests (``levels.jsonl`` under ``--logs``).
``--schedules 0,1,0`` replays one arrival schedule twice on each start, to
tell what a search's schedule decides from what its place on the start does
(a first search after a start reading low, say); such searches are no longer
independent draws, so give them a key of their own (``--config``).

``--clustering LOGS --spec SPEC`` reads those ``levels.jsonl`` back (or the
``*.levels.jsonl.gz`` a data folder keeps) and prints how far each level's
SLO misses cluster in time (the design effect: 1 where requests miss
independently, as the level test assumes), and whether the intervals of two
searches at one load still lie apart once widened by it
(``goodput.design_effect``): the check that the widened test is honest.

``--rejudge FOLDER`` judges every level kept under a study (or trial, or
``--logs``) folder again with this code's rules and prints each whose
verdict would change, beside the verdict recorded: the check that a change
to the level test is what it means to be, on levels measured before it. The
study's own spec is used unless ``--spec`` is given; the backlog is judged
from the engine's queue where the level kept it, else from the client's
latencies.

Resumable: searches already in ``--out`` are kept and the file is rewritten
after each, so the runs fit short device sessions. A configuration's searches
are only added to under the goodput options they began with (a spec edited
between runs must not mix two searches into one spread):

    .venv/bin/python benchmarks/verdicts.py --spec studies/h200-llama8b-chat.yaml \
        --out benchmarks/data/h200/verdicts.json --max-seconds 480

Targets (per configuration): CV <= 5%, no search below 85% of the median,
bracket <= 5% of the goodput. ``--report FILE`` prints a file as Markdown
tables against them, for the docs, without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scipy import stats  # noqa: E402

from autotune.engines.launcher import free_port  # noqa: E402
from autotune.engines.serving import serving  # noqa: E402
from autotune.environment import record  # noqa: E402
from autotune.errors import UserError  # noqa: E402
from autotune.load.levels import LevelStopper, design_effect, judge_level, statistical  # noqa: E402
from autotune.spec import GoodputOptions, load_spec, parse_assignments  # noqa: E402
from autotune.trial import measure, plan, read_levels, setup_from_spec  # noqa: E402
from autotune.tuning import load_study  # noqa: E402
from benchmarks._common import MARK, machine_moved, print_report, read_kept  # noqa: E402

CONFIGS = {"defaults": {}, "fp8": {"quantization": "fp8", "kv_cache_dtype": "fp8"}}


def bracket(levels: list[dict[str, Any]], goodput: float) -> float | None:
    """The lowest failing load above the goodput, minus the goodput: where the true value may lie."""
    above = [lv["load"] for lv in levels if not lv.get("holds") and lv.get("load", 0) > goodput]
    return min(above) - goodput if above and goodput > 0 else None


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    g = [x for x in entry["goodput"] if x is not None]
    if not g:
        return {"n": 0}
    mean, median = statistics.fmean(g), statistics.median(g)
    std = statistics.stdev(g) if len(g) > 1 else 0.0
    widths = [w for w in entry["bracket"] if w is not None]
    return {
        "n": len(g), "starts": entry["starts"], "mean": mean, "std": std,
        "cv": std / mean if mean else math.nan, "cv_interval": cv_interval(std, mean, len(g)),
        "min_over_median": min(g) / median if median else math.nan,
        "bracket_share_max": max(widths) / median if widths and median else None,
    }


def cv_interval(std: float, mean: float, n: int, confidence: float = 0.95) -> list[float] | None:
    """The coefficient of variation's interval from ten-odd searches: a target judged on its point is a guess.

    Normal theory ((n-1) s^2 / sigma^2 is chi-square with n-1 degrees of freedom), the mean taken as known:
    from 10 searches a CV read as 6.1% lies in about 4.2-11.1%.
    """
    if n < 3 or not mean:
        return None
    tail = (1 - confidence) / 2
    scale = math.sqrt(n - 1) * std / mean
    return [scale / math.sqrt(float(stats.chi2.ppf(1 - tail, n - 1))),
            scale / math.sqrt(float(stats.chi2.ppf(tail, n - 1)))]


def intervals_apart(intervals: list[tuple[float | None, float | None]]) -> tuple[int, int]:
    """Of every pair of intervals, how many lie apart, and how many pairs there are. An interval open at one
    end (a level condemned early has no upper end) reaches to infinity there."""
    ends = [(-math.inf if lo is None else lo, math.inf if hi is None else hi) for lo, hi in intervals]
    pairs = [(a, b) for a in range(len(ends)) for b in range(a + 1, len(ends))]
    return sum(1 for a, b in pairs if ends[a][0] > ends[b][1] or ends[b][0] > ends[a][1]), len(pairs)


def same_load(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Each SLO at each load that several searches measured: their estimates, and how many pairs of
    the levels' 95% intervals lie apart.

    A level's interval speaks for its own requests; two searches at one load differ also in their
    arrival schedules (and in time). Intervals that often lie apart say the spread between searches
    is larger than what one level's interval allows for.
    """
    readings: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for search in entry.get("searches") or []:
        for level in (search or {}).get("levels", []):
            for slo, judged in (level.get("slos") or {}).items():
                if judged.get("estimate") is not None:
                    readings.setdefault((level["load"], slo), []).append(judged)
    rows = []
    for (load, slo), found in sorted(readings.items()):
        if len(found) < 2:
            continue
        intervals = [(r.get("lower"), r.get("upper")) for r in found]
        apart, pairs = intervals_apart(intervals)
        rows.append({"load": load, "slo": slo, "estimates": [r["estimate"] for r in found], "intervals": intervals,
                     "verdicts": [r.get("verdict") for r in found], "apart": apart, "pairs": pairs})
    return rows


def kept_levels(logs: Path) -> dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """Every level kept under ``logs``, by configuration: ``<name>-<start>-<search>/levels.jsonl`` as a search
    leaves it, or ``<name>-<start>-<search>.levels.jsonl.gz`` as the data folders keep it."""
    found: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
    paths = [(p.parent.name, p) for p in logs.glob("*/levels.jsonl")]
    paths += [(p.name.removesuffix(".levels.jsonl.gz"), p) for p in logs.glob("*.levels.jsonl.gz")]
    for search, path in sorted(paths):
        name, start, index = search.rsplit("-", 2)
        found.setdefault(name, []).extend(({**meta, "search": f"{start}-{index}"}, rows)
                                          for meta, rows in read_levels(path))
    return found


def clustering(levels: dict[str, list[Any]], slos: list[Any]) -> dict[str, dict[str, list[float]]]:
    """Each configuration's design effects, per SLO, over every kept level that missed it."""
    found: dict[str, dict[str, list[float]]] = {}
    for name, kept in levels.items():
        for _, rows in kept:
            for c in slos:
                effect = design_effect(c, rows)
                if effect is not None:
                    found.setdefault(name, {}).setdefault(c.text, []).append(effect)
    return found


def apart_pairs(kept: list[Any], slos: list[Any], effect: float) -> dict[str, tuple[int, int, int]]:
    """Per SLO: of the pairs of searches that measured one load, how many 95% intervals lie apart when each
    level counts its requests as ``effect`` times fewer (honest intervals leave few apart), and how many
    levels the test still decides (holds or fails) at that width."""
    by_load: dict[float, list[Any]] = {}
    for meta, rows in kept:
        by_load.setdefault(meta["load"], []).append(judge_level(slos, {}, rows, design_effect=effect))
    out: dict[str, tuple[int, int, int]] = {}
    for c in slos:
        counts = [intervals_apart([(level.slos[c.text].lower, level.slos[c.text].upper) for level in judged])
                  for judged in by_load.values()]
        decided = sum(level.slos[c.text].verdict != "uncertain" for judged in by_load.values() for level in judged)
        out[c.text] = (sum(a for a, _ in counts), sum(p for _, p in counts), decided)
    return out


def clustering_report(levels: dict[str, list[Any]], slos: list[Any]) -> str:
    found = clustering(levels, slos)
    if not found:
        return "no kept level missed an SLO: nothing to tell"
    out = ["| configuration | SLO | levels with misses | design effect, median (range) | "
           "pairs at one load apart, levels decided: as independent requests | with the median design effect |",
           "| --- | --- | --- | --- | --- | --- |"]
    for name, per_slo in found.items():
        plain, kept = apart_pairs(levels[name], slos, 1.0), len(levels[name])
        for slo, effects in per_slo.items():
            median = statistics.median(effects)
            wide = apart_pairs(levels[name], slos, max(1.0, median))[slo]
            cells = [f"{apart} of {pairs}, {decided} of {kept}" for apart, pairs, decided in (plain[slo], wide)]
            out.append(f"| {name} | {slo} | {len(effects)} | {median:.1f} ({min(effects):.1f}-{max(effects):.1f}) | "
                       f"{cells[0]} | {cells[1]} |")
    return "\n".join(out)


def rejudge(folder: Path, setup: Any) -> list[dict[str, Any]]:
    """Every level kept under ``folder`` (``levels.jsonl`` or its gzip), judged again, beside the verdict its
    search recorded (``goodput.json``, or its gzip, next to it, matched by load: a search never tries a load twice)."""
    g = setup.goodput
    slos = [c for c in setup.constraints if c.kind in ("latency", "throughput")]
    out = []
    for path in sorted([*folder.rglob("levels.jsonl"), *folder.rglob("*levels.jsonl.gz")]):
        record = read_kept(path.parent / "goodput.json")
        recorded = json.loads(record).get("levels", []) if record is not None else []
        for meta, rows in read_levels(path):
            was = next((lv for lv in recorded if lv.get("load") == meta["load"]), None)
            figures: dict[str, Any] = {"offered_rate": meta["load"]} if g.unit == "req/s" else {}
            if was and was.get("stopped_early") and was.get("planned_requests"):
                # cut short while collecting a look's requests: the look as recorded, or (a level recorded
                # before it was) the stopper's first look at or past the requests it kept
                planned, cap = int(was["planned_requests"]), int(was.get("max_requests") or was["planned_requests"])
                looks = LevelStopper(slos, planned, cap, design_effect=g.design_effect).looks
                short = was.get("cut_short_of") or next((n for n in looks if n >= len(rows)), cap)
                figures.update(stopped_early=1.0, cut_short_of=int(short))
            now = judge_level(slos, figures, rows, conservative=g.conservative, queue=meta.get("engine_queue"),
                              design_effect=g.design_effect)
            out.append({
                "where": str(path.parent.relative_to(folder)) if path.parent != folder else ".",
                "load": meta["load"], "requests": len(rows),
                "recorded": was.get("verdict") if was else None,
                "recorded_backlog": ((was or {}).get("backlog") or {}).get("verdict"),
                "verdict": now.verdict, "holds": now.holds, "backlog": now.backlog.get("verdict"),
                "source": now.backlog.get("source"), "reason": now.backlog.get("reason"),
                "slos": {text: v.verdict for text, v in now.slos.items()},
            })
    return out


def rejudge_report(judged: list[dict[str, Any]]) -> str:
    changed = [j for j in judged if j["recorded"] is not None and j["recorded"] != j["verdict"]]
    out = [f"{len(judged)} kept levels judged again, {len(changed)} with another verdict than recorded"]
    if changed:
        out += ["", "| where | load | requests | SLOs now | backlog: recorded → now (source) | verdict: recorded → now |",
                "| --- | --- | ---: | --- | --- | --- |"]
        for j in changed:
            slos = ", ".join(f"{t} {MARK.get(v, v)}" for t, v in j["slos"].items())
            out.append(f"| {j['where']} | {j['load']:g} | {j['requests']} | {slos} | {j['recorded_backlog']} → "
                       f"{j['backlog']} ({j['source'] or '-'}) | {j['recorded']} → {j['verdict']} |")
    return "\n".join(out)


TARGETS = {"cv": 0.05, "min_over_median": 0.85, "bracket_share_max": 0.05}


def report(data: dict[str, Any]) -> str:
    """The file as Markdown tables: each start's searches, then each configuration against the targets."""
    env = data.get("environment") or {}
    out = [f"{env.get('gpu', '?')}, driver {env.get('driver', '?')}, CUDA {env.get('cuda', '?')}, "
           f"{env.get('engine', '?')} {env.get('engine_version', '?')}", ""]
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("goodput"), list):
            continue
        s = summary(entry)
        out += [f"**{name}** ({json.dumps(entry.get('config', {}))}, "
                f"max_levels {(entry.get('goodput_options') or {}).get('max_levels', '?')}): "
                f"{s['n']} searches over {entry['starts']} starts", "",
                "| start | engine start (s) | goodputs | levels (✓ holds, ✗ fails, ? uncertain) |",
                "| --- | --- | --- | --- |"]
        for k in range(1, entry["starts"] + 1):
            mine = [i for i, start in enumerate(entry["start"]) if start == k]
            took = entry["startup_s"][k - 1] if k - 1 < len(entry["startup_s"]) else None
            levels = "; ".join(" ".join(f"{load:g} {MARK.get(v, v)}" for load, v in entry["levels"][i]) for i in mine)
            goodputs = ", ".join(f"{entry['goodput'][i]:g}" for i in mine)
            out.append(f"| {k} | {'-' if took is None else f'{took:.1f}'} | {goodputs} | {levels} |")
        if s["n"]:
            out += ["", "| figure | measured | target | |", "| --- | --- | --- | --- |",
                    f"| searches over starts | {s['n']} over {entry['starts']} | >= 10 over >= 3 | "
                    f"{'met' if s['n'] >= 10 and entry['starts'] >= 3 else 'not yet'} |",
                    f"| goodput, mean ± std | {s['mean']:.2f} ± {s['std']:.2f} | | |"]
            for key, label, fmt in (("cv", "coefficient of variation", "{:.1%}"),
                                    ("min_over_median", "lowest search / median", "{:.0%}"),
                                    ("bracket_share_max", "widest bracket / median", "{:.1%}")):
                v, target, floor = s.get(key), TARGETS[key], key == "min_over_median"
                met = "-" if v is None else "met" if (v >= target if floor else v <= target) else "**missed**"
                shown = "-" if v is None else fmt.format(v)
                if key == "cv" and s.get("cv_interval"):
                    lo, hi = s["cv_interval"]
                    shown += f" (95% CI {fmt.format(lo)}-{fmt.format(hi)})"
                out.append(f"| {label} | {shown} | {'>=' if floor else '<='} {fmt.format(target)} | {met} |")
        offsets = entry.get("seed_offset") or []
        repeated = sorted({o for o in offsets if o is not None and offsets.count(o) > 1})
        if repeated:
            out += ["", "Searches that replayed one arrival schedule (start.place: goodput):", "",
                    "| schedule (seed offset) | searches |", "| --- | --- |"]
            for o in repeated:
                mine = [i for i, x in enumerate(offsets) if x == o]
                out.append(f"| {o} | " + ", ".join(
                    f"{entry['start'][i]}.{entry['start'][:i + 1].count(entry['start'][i])}: {entry['goodput'][i]:g}"
                    for i in mine) + " |")
        rows = same_load(entry)
        if rows:
            out += ["", "Loads several searches measured (estimate [95% interval] in ms, and its verdict):", "",
                    "| load | SLO | readings | intervals apart |", "| --- | --- | --- | --- |"]
            for r in rows:
                shown = ", ".join(f"{1000 * e:.1f} [{_ms(lo)}, {_ms(hi)}] {MARK.get(v, v)}"
                                  for e, (lo, hi), v in zip(r["estimates"], r["intervals"], r["verdicts"], strict=True))
                out.append(f"| {r['load']:g} | {r['slo']} | {shown} | {r['apart']} of {r['pairs']} pairs |")
        out.append("")
    return "\n".join(out)


def _offsets(text: str) -> list[int]:
    try:
        found = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers joined by commas, got {text!r}") from None
    if not found or min(found) < 0 or max(found) >= 500:
        raise argparse.ArgumentTypeError("each schedule must be between 0 and 499 (500 on are the rechecks')")
    return found


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", type=Path, metavar="VERDICTS_JSON",
                   help="print a file's searches as Markdown tables against the targets; measures nothing")
    p.add_argument("--clustering", type=Path, metavar="LOGS",
                   help="how far each level's SLO misses cluster in time (design effect), from the levels.jsonl "
                        "under a --logs folder, judged by --spec's SLOs; measures nothing")
    p.add_argument("--spec", type=Path, help="study spec: model, workload, SLO, goodput options")
    p.add_argument("--config", action="append", default=[], metavar="NAME:knob=value,...",
                   help="a configuration to judge (default: defaults and fp8)")
    p.add_argument("--starts", type=int, default=3, help="fresh engine starts per configuration")
    p.add_argument("--searches", type=int, default=10, help="goodput searches per configuration, over its starts")
    p.add_argument("--out", type=Path)
    p.add_argument("--max-seconds", type=float, default=None,
                   help="finish within this long: no engine start or search begins that may not end in time")
    p.add_argument("--start-s", type=float, default=150.0, help="the longest an engine start is expected to take")
    p.add_argument("--search-s", type=float, default=150.0, help="the longest one goodput search is expected to take")
    p.add_argument("--schedules", type=_offsets, default=None, metavar="0,1,0,1",
                   help="the arrival schedules of each start's searches, in order (seed offsets after 1000 x the "
                        "start); repeating one tells the schedule's effect from the search's place on the start "
                        "(default: each search its own)")
    p.add_argument("--logs", type=Path, default=None, help="keep each engine start's log in this folder")
    p.add_argument("--spec-set", action="append", default=[], help="spec field=value, dotted (e.g. goodput.start=4)")
    p.add_argument("--rejudge", type=Path, metavar="FOLDER",
                   help="judge the levels kept under a study folder again with this code; print what changes")
    args = p.parse_args(argv)
    if args.rejudge is not None:
        if not args.rejudge.is_dir():
            print(f"error: {args.rejudge} is not a folder", file=sys.stderr)
            return 2
        try:
            spec = (load_spec(args.spec, parse_assignments(args.spec_set, "--spec-set")) if args.spec
                    else load_study(args.rejudge)[1])
        except UserError as e:
            print(f"error: {e} (or pass --spec)", file=sys.stderr)
            return 2
        setup = setup_from_spec(spec)
        if setup.goodput is None:
            print("error: the spec searches no goodput: its levels have no verdicts to judge", file=sys.stderr)
            return 2
        print(rejudge_report(rejudge(args.rejudge, setup)))
        return 0
    if args.report is not None:
        return print_report(args.report, report)
    if args.clustering is not None:
        if args.spec is None or not args.clustering.is_dir():
            p.error("--clustering needs an existing --logs folder and --spec")
        constraints = setup_from_spec(load_spec(args.spec, parse_assignments(args.spec_set, "--spec-set"))).constraints
        slos = [c for c in constraints if statistical(c)]
        print(clustering_report(kept_levels(args.clustering), slos))
        return 0
    if args.spec is None or args.out is None:
        p.error("--spec and --out are needed to measure (or --report FILE to print one)")

    configs = dict(CONFIGS)
    if args.config:
        configs = {}
        for item in args.config:
            name, _, knobs = item.partition(":")
            configs[name] = parse_assignments([k for k in knobs.split(",") if k], "--config")
    spec = load_spec(args.spec, parse_assignments(args.spec_set, "--spec-set"))
    setup = setup_from_spec(spec)
    assert setup.goodput is not None, "the spec must search a goodput (a max:goodput objective)"
    data: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    env = record(setup.engine.name, setup.engine.version(), setup.device)
    before = data.get("environment") or {}
    moved = machine_moved(before, env)
    if moved:
        print(f"error: {args.out} was measured on another machine ({moved}); pass a new --out", file=sys.stderr)
        return 2
    data["environment"] = env
    data["spec"] = spec.model_dump(mode="json", exclude={"study_dir", "storage"})
    t0 = time.monotonic()
    per_start = len(args.schedules) if args.schedules else math.ceil(args.searches / args.starts)

    def left() -> float:
        return math.inf if args.max_seconds is None else args.max_seconds - (time.monotonic() - t0)

    def stop() -> int:
        print(f"stopping: {args.max_seconds:g} s would be passed; run again to go on")
        args.out.write_text(json.dumps(data, indent=2))
        return 0

    with tempfile.TemporaryDirectory(prefix="verdicts-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for name, config in configs.items():
            entry = data.setdefault(name, {"config": config, "goodput": [], "bracket": [], "levels": [],
                                           "start": [], "starts": 0, "startup_s": []})
            options = spec.goodput.model_dump(mode="json")
            if args.schedules:
                options["schedules"] = args.schedules
            began_with = entry.setdefault("goodput_options", options)
            # An option added since those searches ran took its default then.
            then = {**GoodputOptions().model_dump(mode="json"), **began_with}
            changed = {k: (then.get(k), options.get(k)) for k in {*then, *options} if then.get(k) != options.get(k)}
            if len(entry["goodput"]) < args.searches and changed:
                print(f"error: {name}'s searches in {args.out} ran with other goodput options {changed}; "
                      f"move them aside (rename the key) or pass a new --out", file=sys.stderr)
                args.out.write_text(json.dumps(data, indent=2))
                return 2
            if changed:
                print(f"note: {name}'s {len(entry['goodput'])} searches ran with other goodput options {changed}; "
                      f"kept as measured (rename the key to measure {name} afresh)")
            while len(entry["goodput"]) < args.searches:
                if left() < args.start_s + args.search_s:
                    return stop()
                launch = plan(setup, config, free_port(setup.host))
                log = logs / f"{name}-{entry['starts'] + 1}.log"
                with serving(launch, log, startup_timeout_s=setup.startup_timeout_s) as server:
                    entry["starts"] += 1
                    entry["startup_s"].append(server.startup_s)
                    for i in range(min(per_start, args.searches - len(entry["goodput"]))):
                        if left() < args.search_s:
                            break
                        began = time.monotonic()
                        search_dir = logs / f"{name}-{entry['starts']}-{i + 1}"
                        search_dir.mkdir(parents=True, exist_ok=True)
                        offset = 1000 * entry["starts"] + (args.schedules[i] if args.schedules else i)
                        m = measure(setup, launch.base_url, search_dir, seed_offset=offset, warm_up=i == 0)
                        entry.setdefault("seed_offset", [None] * len(entry["goodput"])).append(offset)
                        entry.setdefault("search_s", [None] * len(entry["goodput"])).append(
                            round(time.monotonic() - began, 1))
                        entry.setdefault("searches", [None] * len(entry["goodput"])).append(m.goodput)
                        g = m.figures.get("goodput")
                        levels = (m.goodput or {}).get("levels", [])
                        entry["goodput"].append(g)
                        entry["bracket"].append(bracket(levels, g or 0.0))
                        entry["levels"].append([(lv["load"], lv.get("verdict") or lv.get("holds")) for lv in levels])
                        entry["start"].append(entry["starts"])
                        print(f"{name} start {entry['starts']} search {i + 1}: goodput {g} "
                              f"levels {entry['levels'][-1]}", flush=True)
                        args.out.write_text(json.dumps(data, indent=2))
            entry["summary"] = summary(entry)
    args.out.write_text(json.dumps(data, indent=2))
    for name in configs:
        s = data[name]["summary"]
        widest = "-" if s["bracket_share_max"] is None else f"{100 * s['bracket_share_max']:.1f}%"
        print(f"{name}: {s['n']} searches over {s['starts']} starts, goodput {s['mean']:.2f} ± {s['std']:.2f} "
              f"(CV {100 * s['cv']:.1f}%), lowest {100 * s['min_over_median']:.0f}% of the median, "
              f"widest bracket {widest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
