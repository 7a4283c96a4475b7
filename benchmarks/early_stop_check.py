"""Did stopping a trial early ever hide a winner? Full goodput searches of the trials a study stopped early.

A goodput study starts each trial's search at the incumbent's goodput and
stops a trial that fails there with confidence, recording only that its
goodput lies below (``goodput_upper_bound``). That saves the levels a loser
would cost, and is only sound if such a trial, searched in full, indeed
stays below the bound. This starts each early-stopped trial's configuration
afresh, runs the whole search (no incumbent, the study's own options and
arrival schedule), and records whether the verdict flips: a full search that
holds at or above the bound.

    .venv/bin/python benchmarks/early_stop_check.py --study-dir benchmarks/data/h200/cost-after \\
        --out benchmarks/data/h200/trial-cost.json --trials 3 --max-seconds 480

Resumable: trials already checked in ``--out`` (key ``early_stop_checks``)
are skipped, and no engine start begins that may not end within
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autotune.engines.launcher import free_port  # noqa: E402
from autotune.engines.serving import serving  # noqa: E402
from autotune.environment import record  # noqa: E402
from autotune.errors import UserError  # noqa: E402
from autotune.trial import measure, plan, setup_from_spec  # noqa: E402
from autotune.tuning import StudyResults, load_study  # noqa: E402
from benchmarks._common import flip_verdict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study-dir", type=Path, required=True,
                   help="a goodput study whose trials started at the incumbent")
    p.add_argument("--out", type=Path, required=True, help="JSON file; the checks go under early_stop_checks")
    p.add_argument("--trials", type=int, default=3, help="how many early-stopped trials to search in full")
    p.add_argument("--max-seconds", type=float, default=None, help="begin no engine start that may not end in time")
    p.add_argument("--start-s", type=float, default=150.0, help="the longest an engine start is expected to take")
    p.add_argument("--search-s", type=float, default=180.0, help="the longest one full search is expected to take")
    p.add_argument("--logs", type=Path, default=None, help="keep each engine start's log and search files here")
    args = p.parse_args(argv)
    try:
        study, spec = load_study(args.study_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stopped = [t for t in StudyResults(study, spec).trials if t.figures.get("goodput_upper_bound")]
    if not stopped:
        print(f"no trial of {spec.name} was stopped below the incumbent: nothing to check")
        return 0
    setup = setup_from_spec(spec)
    data: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    checks: list[dict[str, Any]] = data.setdefault("early_stop_checks", [])
    done = {c["trial"] for c in checks}
    logs = args.logs or args.out.parent / "early-stop-checks"
    t0 = time.monotonic()
    for t in stopped[: args.trials]:
        if t.number in done:
            continue
        if args.max_seconds is not None and args.max_seconds - (time.monotonic() - t0) < args.start_s + args.search_s:
            print(f"stopping: {args.max_seconds:g} s would be passed; run again to go on")
            break
        folder = logs / f"trial-{t.number}"
        folder.mkdir(parents=True, exist_ok=True)
        launch = plan(setup, t.config, free_port(setup.host))
        began = time.monotonic()
        with serving(launch, folder / "engine.log", startup_timeout_s=setup.startup_timeout_s) as server:
            m = measure(setup, launch.base_url, folder)
        bound = float(t.figures["goodput_upper_bound"])
        full = m.figures.get("goodput")
        levels = [(lv["load"], lv.get("verdict")) for lv in (m.goodput or {}).get("levels", [])]
        check = {
            "trial": t.number, "config": t.config, "bound": bound, "goodput": full,
            "flipped": isinstance(full, (int, float)) and math.isfinite(full) and full >= bound,
            # A flip on point estimates (uncertain levels acted on) is weaker than one held with confidence.
            "flipped_with_confidence": any(load >= bound and verdict == "holds" for load, verdict in levels),
            "levels": levels,
            "startup_s": server.startup_s, "engine_s": round(time.monotonic() - began, 1),
        }
        checks.append(check)
        data["early_stop_checks_environment"] = record(setup.engine.name, setup.engine.version(), setup.device)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2))
        print(f"trial {t.number}: stopped below {bound:g}, searched in full: {full} ({flip_verdict(check)})",
              flush=True)
    flipped = sum(c["flipped"] for c in checks)
    confident = sum(bool(c.get("flipped_with_confidence")) for c in checks)
    print(f"{len(checks)} early-stopped trial(s) searched in full, {flipped} flipped ({confident} with confidence)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
