"""One study as a record for the docs: its trials, the verification of its recommendation and of the
defaults, the verified ratio with its interval, and the engine-seconds it all cost.

Reads a study folder (its ``study.db``: the trials, the defaults measured as
the baseline, and what ``autotune verify --defaults`` stored) and writes it
under ``--label`` of ``--out``, so that two runs of one spec (for example
with every knob free, and with quantization pinned) sit side by side:

    .venv/bin/python benchmarks/study_record.py --study-dir benchmarks/data/h200/study \\
        --label unseeded --out benchmarks/data/h200/unseeded-study.json

It measures nothing. ``ratio`` is the verified one (``autotune.versus``); a
study whose recommendation or defaults have no verification yet gets
``"ratio": null`` and says which is missing; one whose verification still lacks
starts keeps what they say so far as ``interim_ratio``, not as the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autotune.errors import UserError  # noqa: E402
from benchmarks._common import engine_seconds  # noqa: E402
from autotune.tuning import StudyResults, load_study  # noqa: E402
from autotune.verify import stored  # noqa: E402
from autotune.versus import versus_defaults  # noqa: E402


def study_record(study_dir: Path) -> dict[str, Any]:
    study, spec = load_study(study_dir)
    results = StudyResults(study, spec)
    trials = [t.to_json() for t in results.trials]
    baseline = results.baseline()
    base = baseline.to_json() if baseline is not None else None
    verified = stored(results)
    versus = versus_defaults(list(verified.values()), spec.objective_list[0])
    best = max(versus, key=lambda v: v.ratio, default=None)
    missing = [what for what, there in (("the defaults", -1 in verified),
                                        ("a recommendation", any(n >= 0 for n in verified))) if not there]
    short = [f"{'the defaults' if n < 0 else f'trial {n}'} has {len(v.starts)} of {v.repeats_wanted} starts"
             for n, v in sorted(verified.items()) if len(v.starts) < v.repeats_wanted]
    verify_seconds = sum(engine_seconds(s.figures) or 0.0 for v in verified.values() for s in v.starts)
    return {
        "study": spec.name,
        "spec": spec.model_dump(mode="json", exclude={"study_dir", "storage"}),
        "enqueued_by_hand": list(spec.enqueue),
        "environment": (base or {}).get("environment") or next((t.get("environment") for t in trials), None),
        "baseline": base,
        "trials": trials,
        "study_engine_seconds": sum(engine_seconds(t) or 0.0 for t in [*trials, *([base] if base else [])]),
        "verifications": {str(n): v.to_json() for n, v in sorted(verified.items())},
        "verify_engine_seconds": verify_seconds,
        "versus_defaults": [v.to_json() for v in versus],
        "ratio": best.to_json() if best is not None and not short else None,
        # what the starts measured so far say, while a verification still lacks starts: not the result
        "interim_ratio": best.to_json() if best is not None and short else None,
        "ratio_missing": (f"no verification of {' or '.join(missing)} yet" if missing
                          else f"verification under way: {'; '.join(short)}" if short else None),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study-dir", type=Path, required=True)
    p.add_argument("--label", required=True, help="the key this study is kept under (e.g. unseeded, bf16)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        record = study_record(args.study_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.label] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2))
    r = record["ratio"]
    minutes = record["study_engine_seconds"] / 60
    measured = sum(t["state"] != "waiting" for t in record["trials"])
    queued = len(record["trials"]) - measured
    print(f"{args.label}: {measured} trials" + (f" ({queued} more queued)" if queued else "")
          + f", {minutes:.1f} engine-minutes in the study; "
          + (f"verified ratio {r['ratio']:.2f}x (95% CI {r['low']:.2f}..{r['high']:.2f}), "
             f"intervals {'apart' if r['apart'] else 'overlap'}" if r and r.get("low") is not None
             else (record["ratio_missing"] or "ratio without an interval")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
