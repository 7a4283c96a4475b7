"""Records a finished study as a test fixture: its trials and study attributes as JSON,
and the per-request timings of the trials named, so tests rebuild the real study
(``tests/test_report_html.py``'s ``build_recorded_study``) without an engine.

    python tests/data/studies/record.py autotune-runs/tiny-vllm tests/data/studies/tiny-demo.json --requests 3
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import optuna
from optuna.distributions import distribution_to_json


def record(study_dir: Path, out: Path, requests: list[int]) -> None:
    names = optuna.get_all_study_names(f"sqlite:///{(study_dir / 'study.db').resolve()}")
    study = optuna.load_study(study_name=names[0], storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")
    data = {
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "user_attrs": study.user_attrs,
        "trials": [
            {
                "state": t.state.name, "params": t.params,
                "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
                "values": t.values, "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
            }
            for t in study.trials
        ],
    }
    out.write_text(json.dumps(data, indent=1) + "\n")
    folder = out.with_name(out.stem + "-requests")
    for number in requests:
        folder.mkdir(exist_ok=True)
        shutil.copy(study_dir / "trials" / f"{number:04d}" / "requests.jsonl", folder / f"{number:04d}.jsonl")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--requests", type=int, nargs="*", default=[], help="trials whose requests.jsonl to keep")
    args = parser.parse_args()
    record(args.study_dir, args.out, args.requests)
