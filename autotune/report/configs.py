"""A ready-to-run engine config and command for each recommended point.

Only feasible trials (every SLO held) are recommended. Each gets
``configs/trial-<n>.yaml``, which the engine reads directly
(``vllm serve MODEL --config configs/trial-<n>.yaml``), and the full command.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autotune.spec import StudySpec
from autotune.tuning import StudyResults, TrialRecord

__all__ = ["Recommendation", "serve_command", "write_configs"]


@dataclass
class Recommendation:
    trial: TrialRecord
    config_path: Path
    command: str


def write_configs(results: StudyResults, study_dir: Path) -> list[Recommendation]:
    out_dir = study_dir / "configs"
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = []
    for trial in results.front():
        path = out_dir / f"trial-{trial.number}.yaml"
        config_file: dict[str, Any] = trial.get("config_file") or {}
        path.write_text(
            f"# autotune study {results.name}, trial {trial.number}\n" + yaml.safe_dump(config_file, sort_keys=True)
        )
        recs.append(Recommendation(trial, path, serve_command(results.spec, trial, path)))
    return recs


def serve_command(spec: StudySpec, trial: TrialRecord, config_path: Path) -> str:
    """The engine's own CLI with the config file; environment knobs go in front.

    Only ``vllm serve`` reads a ``--config`` file; for any other engine the
    exact command line the trial launched is the ready-to-run answer.
    """
    if spec.engine.name != "vllm":
        return str(trial.get("command") or "(no command: this engine is not started by autotune)")
    env: dict[str, str] = trial.get("env") or {}
    prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(env.items()))
    model = trial.get("model_source", spec.model)
    cmd = f"{spec.engine.name} serve {shlex.quote(model)} --config {shlex.quote(str(config_path))}"
    return f"{prefix} {cmd}".strip()
