"""``optimize --dry-run``: what a study would do, shown before any GPU time is spent.

The search space as this machine sees it (knobs that exist on the device,
ranges cut to the hardware), then a sample of configurations (those the spec
enqueues first, then draws across the space, as a sampler's first random
trials would be) each with its verdict from the same checks a study runs
before a launch, and the exact command each would be launched with. No engine
is started and nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from autotune.cli._app import console
from autotune.report.context import workload_text
from autotune.space import Knob
from autotune.spec import StudySpec
from autotune.trial import TrialSetup, check, feasibility, plan, setup_from_spec

__all__ = ["dry_run", "preview"]

#: The port shown in the commands: a study picks a free one at each launch.
SHOWN_PORT = 8000


def preview(spec: StudySpec, samples: int = 6) -> dict[str, Any]:
    """The study's space and a sample of configurations with their verdicts and launch commands."""
    setup = setup_from_spec(spec)
    configs: list[tuple[str, dict[str, Any]]] = [("enqueued by the spec", dict(c)) for c in spec.enqueue]
    first = len(configs)
    if spec.baseline and setup.engine.capabilities.launches:
        configs.insert(0, ("the engine's defaults, measured first (no knob set)", {}))
        first += 1
    rng = np.random.default_rng(spec.seed)
    seen = {repr(sorted(c.items())) for _, c in configs}
    for _ in range(samples * 20):
        if len(configs) >= first + samples:
            break
        config = {name: _draw(knob, rng) for name, knob in setup.space.knobs.items()}
        if repr(sorted(config.items())) not in seen:
            seen.add(repr(sorted(config.items())))
            configs.append(("drawn", config))
    return {
        "study": spec.name, "study_dir": str(spec.study_dir), "model": spec.model,
        "model_source": setup.model.source, "engine": setup.engine.name, "device": setup.device,
        "workload": workload_text(spec), "slo": spec.slo, "objectives": spec.objectives,
        "trials": spec.budget.trials, "sampler": spec.sampler,
        "space": {name: _describe(knob) for name, knob in setup.space.knobs.items()},
        "rules": list(setup.space.constraints),
        "configurations": [_judge(setup, config, source) for source, config in configs],
    }


def dry_run(spec: StudySpec, samples: int = 6) -> dict[str, Any]:
    """Prints the preview; returns it (``--json`` prints it whole instead)."""
    from rich.table import Table

    data = preview(spec, samples)
    console.print(f"dry run of study {data['study']} (nothing is started or written): {data['trials']} trials, "
                  f"sampler {data['sampler']}, folder {data['study_dir']}", highlight=False, soft_wrap=True)
    console.print(f"model {data['model']} ({data['model_source']}), engine {data['engine']} on {data['device']}",
                  highlight=False, soft_wrap=True)
    console.print(f"workload: {data['workload']}", highlight=False, soft_wrap=True)
    console.print(f"objectives {data['objectives']}; SLO {data['slo'] or 'none'}", highlight=False, soft_wrap=True)
    table = Table(title="Search space", title_justify="left")
    for column in ("knob", "values", "reaches the engine as"):
        table.add_column(column)
    for name, d in data["space"].items():
        table.add_row(name, d["values"], d["via"])
    console.print(table)
    for rule in data["rules"]:
        console.print(f"rule: {rule}", highlight=False)
    for i, c in enumerate(data["configurations"], start=1):
        knobs = " ".join(f"{k}={v}" for k, v in sorted(c["config"].items()))
        console.print(f"\nconfiguration {i} ({c['source']}): {knobs}", highlight=False, soft_wrap=True)
        if c["refused"]:
            console.print(f"  refused before launch: {'; '.join(c['refused'])}", highlight=False, soft_wrap=True)
        else:
            console.print("  would launch:", highlight=False)
        console.print(f"  {c['command']}", highlight=False, soft_wrap=True)
        for note in c["notes"]:
            console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    return data


def _judge(setup: TrialSetup, config: dict[str, Any], source: str) -> dict[str, Any]:
    verdict = feasibility(setup, config)
    launch = plan(setup, config, port=SHOWN_PORT)
    # HF_HUB_OFFLINE only keeps a local model folder from reaching the hub: not a setting to copy.
    env = {k: v for k, v in launch.env.items() if k != "HF_HUB_OFFLINE"}
    command = replace(launch, env=env).command_line()
    return {"source": source, "config": config, "refused": check(setup, config), "notes": list(verdict.notes),
            "command": command, "argv": list(launch.argv), "env": env}


def _draw(knob: Knob, rng: np.random.Generator) -> Any:
    """One value of a knob, uniform over its range (log-uniform where the knob says log)."""
    if knob.fixed is not None:
        return knob.fixed
    if knob.type == "bool":
        return bool(rng.integers(0, 2))
    if knob.type == "categorical":
        choices = list(knob.choices or [])
        return choices[int(rng.integers(0, len(choices)))]
    low, high = float(knob.low or 0), float(knob.high or 0)
    u = rng.random()
    value = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if knob.log else low + u * (high - low)
    if knob.step:
        value = low + round((value - low) / knob.step) * knob.step
    if knob.type == "int":
        return int(min(high, max(low, round(value))))
    return float(min(high, max(low, round(value, 6))))


def _describe(knob: Knob) -> dict[str, str]:
    if knob.fixed is not None:
        values = f"fixed at {knob.fixed}"
    elif knob.type == "bool":
        values = "false, true"
    elif knob.type == "categorical":
        values = ", ".join("engine default" if c is None else str(c) for c in knob.choices or [])
    else:
        values = f"{knob.low:g} .. {knob.high:g}" + (" (log)" if knob.log else "") + (
            f" step {knob.step:g}" if knob.step else "")
    via = knob.arg or (f"environment {knob.env}" if knob.env else "client side")
    return {"values": values, "via": via, "help": knob.help or ""}
