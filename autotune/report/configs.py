"""A ready-to-run engine config and command for each recommended point: the launch that was measured.

Only feasible trials (every SLO held) are recommended. Each gets
``configs/trial-<n>.yaml``, which the engine reads directly
(``vllm serve MODEL --config /abs/path/configs/trial-<n>.yaml``), and the
full command with the environment the trial set in front.

The file holds every option the trial was launched with, not only the knobs
that were searched: ``--max-model-len``, ``--dtype`` or ``--enforce-eager``
change the KV budget and the speed, so a file without them would serve
something else than what was measured. A trial records its exact command; the
options are read back from it (the address, which each deployment picks, left
out) and the knobs' own config keys laid over them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autotune.report.context import workload_text
from autotune.spec import StudySpec
from autotune.tuning import StudyResults, TrialRecord

__all__ = ["Recommendation", "launch_options", "serve_command", "write_configs"]

# Options of the measured command that belong to one run, not to the configuration.
_PER_RUN = {"host", "port", "model"}


@dataclass
class Recommendation:
    trial: TrialRecord
    config_path: Path
    command: str


def write_configs(results: StudyResults, study_dir: Path) -> list[Recommendation]:
    out_dir = (study_dir / "configs").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = []
    for trial in results.front():
        path = out_dir / f"trial-{trial.number}.yaml"
        command = serve_command(results.spec, trial, path)
        path.write_text(_header(results, trial, command) + yaml.safe_dump(launch_options(trial), sort_keys=True))
        recs.append(Recommendation(trial, path, command))
    return recs


def launch_options(trial: TrialRecord) -> dict[str, Any]:
    """Every option of the measured launch as ``vllm serve --config`` keys, the address left out."""
    options = _options_of(str(trial.get("command") or ""))
    options.update(trial.get("config_file") or {})
    return options


def serve_command(spec: StudySpec, trial: TrialRecord, config_path: Path) -> str:
    """The engine's own CLI with the config file; the environment the trial set goes in front.

    Only ``vllm serve`` reads a ``--config`` file; for any other engine the
    exact command line the trial launched is the ready-to-run answer.
    """
    if spec.engine.name != "vllm":
        return str(trial.get("command") or "(no command: this engine is not started by autotune)")
    env: dict[str, str] = trial.get("env") or {}
    prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(env.items()))
    model = trial.get("model_source", spec.model)
    cmd = f"vllm serve {shlex.quote(str(model))} --config {shlex.quote(str(config_path.resolve()))}"
    return f"{prefix} {cmd}".strip()


def _header(results: StudyResults, trial: TrialRecord, command: str) -> str:
    f = trial.figures
    measured = ", ".join(
        f"{name} {f[key]:,.1f}" for key, name in (("output_throughput", "output tok/s"), ("p99_ttft_ms", "p99 TTFT ms"),
                                                  ("mean_tpot_ms", "mean TPOT ms"), ("goodput", "goodput"))
        if isinstance(f.get(key), (int, float))
    )
    lines = [
        f"autotune study {results.name}, trial {trial.number}: {measured or 'no figures'}",
        f"measured with {workload_text(results.spec)}",
        f"serve it: {command}",
    ]
    return "".join(f"# {line}\n" for line in lines)


def _options_of(command: str) -> dict[str, Any]:
    """``--name value`` and ``--switch`` pairs of a command line, values read as YAML scalars."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return {}
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or len(token) == 2:
            continue
        key, eq, inline = token[2:].partition("=")
        if eq:
            value: Any = inline
        elif i < len(argv) and not argv[i].startswith("--"):
            value = argv[i]
            i += 1
        else:
            out[key] = True
            continue
        if key not in _PER_RUN:
            out[key] = _scalar(value)
    for key in _PER_RUN:
        out.pop(key, None)
    return out


def _scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else text
