"""What stays fixed across the trials of a study, and the launch one configuration gets.

A ``TrialSetup`` is built once from the spec; ``plan`` turns it and a
configuration into the exact command that would run, and ``check`` answers,
from that command, whether it can run at all before anything is started.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from autotune.engines import EngineAdapter, LaunchPlan, ModelRef, get_engine
from autotune.environment import cpu_avx512, detect_device, gpus
from autotune.errors import UserError
from autotune.load.workload import Workload
from autotune.models.resolve import resolve_model
from autotune.space import Assessment, Capacity, Knob, SearchSpace, assess, deployment_from_argv, host_memory_gib
from autotune.space import load_model_config
from autotune.spec import Constraint, GoodputOptions, StudySpec

__all__ = ["TrialSetup", "apply_template", "check", "check_values", "feasibility", "plan", "require_launchable",
           "setup_from_spec", "with_workload"]


@dataclass
class TrialSetup:
    """Everything fixed across the trials of one study."""

    engine: EngineAdapter
    space: SearchSpace
    model: ModelRef
    workload: Workload
    device: str
    hardware: dict[str, float]
    host: str = "127.0.0.1"
    startup_timeout_s: float = 600.0
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    launch_template: list[str] | None = None
    constraints: list[Constraint] = field(default_factory=list)
    goodput: GoodputOptions | None = None
    api_key: str | None = None
    # The hardware one trial may use and the model's config.json, for feasibility.
    capacity: Capacity | None = None
    model_config: dict[str, Any] | None = None
    repeats: int = 1  # measurements on the same server; see autotune.trial.measurement


def setup_from_spec(spec: StudySpec) -> TrialSetup:
    """The setup a spec describes: its engine, the engine's space narrowed by the spec, the model, the GPUs."""
    device = spec.hardware.device if spec.hardware.device != "auto" else detect_device()
    engine = get_engine(spec.engine.name, spec.engine.options)
    hardware = {"gpu_count": float(spec.hardware.gpu_count if device == "cuda" else 1)}
    if device == "cpu":  # engines' CPU kernels differ by instruction set
        hardware["cpu_avx512"] = float(cpu_avx512())
    space = SearchSpace.load(engine.name).for_hardware(device, hardware).with_overrides(spec.space)
    check_values(space, {k: v for k, v in spec.space.items() if not isinstance(v, Mapping)}, "space")
    model = resolve_model(spec.model, max_model_len=spec.max_model_len)
    model_config = load_model_config(model.source)
    _require_fits(spec.workload, model, model_config)
    capacity, gpu_env = hardware_capacity(spec, device)
    extra_env = dict(spec.engine.env)
    for key, value in gpu_env.items():
        if extra_env.get(key, value) != value:
            raise UserError(f"engine.env sets {key}={extra_env[key]} but hardware.gpu_ids says {value}")
        extra_env[key] = value
    return TrialSetup(
        engine=engine,
        space=space,
        model=model,
        workload=spec.workload,
        device=device,
        hardware=hardware,
        host=spec.engine.host,
        startup_timeout_s=spec.engine.startup_timeout_s,
        extra_args=list(spec.engine.extra_args),
        extra_env=extra_env,
        launch_template=spec.engine.launch_template,
        constraints=spec.constraints,
        goodput=spec.goodput,
        api_key=api_key(spec),
        repeats=spec.repeats,
        capacity=capacity,
        model_config=model_config,
    )


def _require_fits(workload: Workload, model: ModelRef, model_config: Mapping[str, Any] | None) -> None:
    """Refuses a workload whose requests cannot fit the context the engine will have."""
    if model.max_model_len:
        context, where = model.max_model_len, "max_model_len"
    else:
        context = (model_config or {}).get("max_position_embeddings")
        where = "the model's context (max_position_embeddings)"
    if isinstance(context, int) and context > 0:
        overflow = workload.overflow(context, where)
        if overflow:
            raise UserError(overflow)


def require_launchable(setup: TrialSetup) -> None:
    """Refuses, before anything starts, a launch template whose program is not on this machine:
    every trial would fail the same way. Only where engines are launched from here: a plan
    for another machine (``srun``, ``ray``) may name programs this one lacks."""
    if setup.launch_template and setup.engine.capabilities.launches:
        _require_program(setup.launch_template[0])


def _require_program(program: str) -> None:
    if program in ("{argv}", "{args}") or "{" in program:
        return
    if shutil.which(program) is None:
        found = Path(program).exists() if os.sep in program else False
        why = "is not executable" if found else "not found"
        raise UserError(f"engine.launch_template: program {program!r} {why}")


def check_values(space: SearchSpace, config: Mapping[str, Any], what: str = "", *, strict: bool = False) -> None:
    """Refuses knob values of the wrong type before any engine starts (``max_num_seqs: "many"``).

    ``strict`` (values a study enqueues): a categorical value must be one of the
    space's choices, as Optuna will not store another. Otherwise (``measure
    --set``) any value of a choice's type goes: measuring outside the space is
    allowed, and the engine judges the value itself.
    """
    space.require_known(config, what)
    for name, value in config.items():
        problem = _value_problem(space.knobs[name], value, strict)
        if problem:
            raise UserError(f"{what + ': ' if what else ''}knob {name}={value!r}: {problem}")


def _value_problem(knob: Knob, value: Any, strict: bool) -> str | None:
    if value is None:
        return None  # leave the setting to the engine
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if knob.type == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if knob.type == "int":
        if not number or not math.isfinite(value) or value != int(value):
            return "expected a whole number"
        return None
    if knob.type == "float":
        return None if number and math.isfinite(value) else "expected a number"
    choices = [c for c in knob.choices or [] if c is not None]
    if knob.fixed is not None:
        choices.append(knob.fixed)
    if strict and choices and value not in choices:
        return f"expected one of {', '.join(map(repr, choices))}"
    kinds = {"number" if isinstance(c, (int, float)) and not isinstance(c, bool) else type(c).__name__
             for c in choices}
    kind = "number" if number else type(value).__name__
    if kinds and kind not in kinds:
        return f"expected one of {', '.join(map(repr, choices))}"
    return None


def api_key(spec: StudySpec) -> str | None:
    """The engine's API key, from the environment variable the spec names: never from the spec itself."""
    name = spec.engine.api_key_env
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise UserError(f"engine.api_key_env: environment variable {name} is not set (the API key is read from it)")
    return value


def hardware_capacity(spec: StudySpec, device: str) -> tuple[Capacity, dict[str, str]]:
    """GPU count and memory per GPU (the spec's, else NVML's for the GPUs given), and
    the environment that binds the engine to ``hardware.gpu_ids``."""
    hw = spec.hardware
    if device != "cuda":
        return Capacity(device=device, gpu_count=1, host_memory_gib=host_memory_gib()), {}
    memory = hw.gpu_memory_gib
    if memory is None:
        found = {g["index"]: g.get("memory_gib") for g in gpus()}
        ids = hw.gpu_ids if hw.gpu_ids is not None else list(range(hw.gpu_count))
        sizes = [found[i] for i in ids if found.get(i)]
        memory = min(sizes) if sizes and len(sizes) == len(ids) else None
    return Capacity(device="cuda", gpu_count=hw.gpu_count, gpu_memory_gib=memory), hw.engine_env()


def check(setup: TrialSetup, config: Mapping[str, Any]) -> list[str]:
    """Reasons this configuration cannot run, found without starting anything:
    the search space's rules between knobs, then the model-and-hardware arithmetic."""
    return setup.space.check(config, setup.hardware) + feasibility(setup, config).reasons


def feasibility(setup: TrialSetup, config: Mapping[str, Any]) -> Assessment:
    """Reads TP, PP, dtypes and lengths from the exact command that would be launched,
    so knobs, extra arguments and templates are all counted."""
    launch = plan(setup, config, port=0)
    capacity = setup.capacity or Capacity(device=setup.device, gpu_count=int(setup.hardware.get("gpu_count", 1)))
    return assess(setup.model_config, deployment_from_argv(launch.argv, launch.env), capacity)


def plan(setup: TrialSetup, config: Mapping[str, Any], port: int) -> LaunchPlan:
    env = dict(setup.extra_env)
    if Path(setup.model.source).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")
    launch = setup.engine.plan(
        setup.model,
        setup.space.knob_specs(),
        config,
        host=setup.host,
        port=port,
        device=setup.device,
        extra_args=setup.extra_args,
        extra_env=env,
    )
    if setup.launch_template:
        launch.argv = apply_template(setup.launch_template, launch.argv, setup.host, port, launch.program_len)
    return launch


def apply_template(template: list[str], argv: list[str], host: str, port: int, program_len: int = 1) -> list[str]:
    """Wraps argv (``docker run ... {argv}``); placeholders fill list items, never a shell string.

    ``{argv}`` is the whole command; ``{args}`` is its options without the program
    (this machine's interpreter and module mean nothing inside a container image,
    whose own entry point or command then comes first: ``IMAGE {args}``);
    ``program_len`` items name the program, as the engine's adapter says.
    """
    out: list[str] = []
    for item in template:
        if item == "{argv}":
            out += argv
        elif item == "{args}":
            out += argv[program_len:]
        else:
            out.append(item.replace("{port}", str(port)).replace("{host}", host))
    if "{argv}" not in template and "{args}" not in template:
        raise UserError("launch_template must contain the item '{argv}' or '{args}'")
    return out


def with_workload(setup: TrialSetup, config: Mapping[str, Any]) -> TrialSetup:
    """The setup with the workload fields this configuration sets (client-side knobs; the engine says which)."""
    overrides = setup.engine.workload_overrides(config)
    if not overrides:
        return setup
    workload = type(setup.workload).model_validate({**setup.workload.model_dump(), **overrides})
    return replace(setup, workload=workload)
