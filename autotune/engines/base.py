"""The engine adapter interface: everything autotune needs to know about one engine.

An adapter is deliberately small. It turns a trial configuration (knob name ->
value) into an argv list and an environment, names the endpoints to poll, and
says what the engine can do. Argument names come from the engine's search-space
YAML (``arg:`` / ``env:`` per knob), so most adapters only override
``base_argv`` and ``base_env``. Adapters import nothing from autotune but this
module, so adding an engine is one adapter file plus one YAML.
"""

from __future__ import annotations

import json
import os
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping


def cache_root() -> Path:
    """autotune's cache folder (``$AUTOTUNE_CACHE``, else ``~/.cache/autotune``): built models,
    engines' compile caches and the device locks live under it, shared by trials and studies."""
    return Path(os.environ.get("AUTOTUNE_CACHE") or "~/.cache/autotune").expanduser()


@dataclass(frozen=True)
class Capabilities:
    """What the load generator and quality checks may rely on."""

    ignore_eos: bool = True
    prompt_logprobs: bool = False
    metrics: bool = False
    dummy_weights: bool = False
    token_id_prompts: bool = False
    launches: bool = True  # False: an endpoint that is already running; nothing is started or stopped


@dataclass(frozen=True)
class KnobSpec:
    """How one knob reaches the engine: a command-line option or an environment variable."""

    name: str
    arg: str | None = None
    env: str | None = None
    is_flag: bool = False


@dataclass(frozen=True)
class ModelRef:
    """A model as the engine sees it: what to pass it, and where its tokenizer lives."""

    source: str
    served_name: str
    tokenizer_dir: str | None = None
    dummy_weights: bool = False
    max_model_len: int | None = None


@dataclass
class LaunchPlan:
    """One engine start, fully resolved: nothing is left to a shell.

    ``config_file`` is the launch as the engine's own config file would say it
    (``vllm serve MODEL --config FILE``): every option the trial ran with, so a
    recommendation serves what was measured. ``housekeeping_env`` names the
    variables in ``env`` that only serve autotune's running of the engine (a
    cache folder) and are no part of what it recommends. ``scratch_env`` names
    variables that each start sets to a folder of its own, removed when it stops.
    """

    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    health_path: str
    metrics_path: str | None
    config_file: dict[str, Any] = field(default_factory=dict)
    endpoint: str | None = None  # the server's root URL when autotune does not start it
    program_len: int = 1  # leading argv items that name the program; the rest are its arguments
    housekeeping_env: tuple[str, ...] = ()
    scratch_env: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        return self.endpoint.rstrip("/") if self.endpoint else f"http://{self.host}:{self.port}"

    def command_line(self) -> str:
        """The command a user can paste: the environment that matters, then the argv."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)

    def recommended_env(self) -> dict[str, str]:
        """The environment a deployment of this configuration needs (housekeeping left out)."""
        return {k: v for k, v in self.env.items() if k not in self.housekeeping_env}


@dataclass
class StartupBill:
    """Where one engine start's seconds went, as far as the engine's own log tells.

    The start-up is paid again by every trial, and a knob that changes a compiled
    graph pays the compile again too; the bill says which part was which.
    ``phases`` are in the order they happen. A phase the log does not show is
    absent, not zero. The log cannot see its own process start: the caller,
    who timed the whole start, passes ``total_s``; the time before the log's
    first line is then ``imports`` and whatever the named phases leave is ``other``.
    """

    phases: dict[str, float] = field(default_factory=dict)
    total_s: float | None = None
    compile_cache_hit: bool | None = None  # None: the log says nothing of a compile cache
    compile_hash: str | None = None  # the engine's own compile-cache key, as its log names it
    notes: list[str] = field(default_factory=list)

    @classmethod
    def settle(
        cls, phases: Mapping[str, float], *, span_s: float | None, total_s: float | None, **rest: Any
    ) -> "StartupBill":
        """Completes phases read inside the log (``span_s`` long) against the caller's total."""
        out = {k: max(0.0, float(v)) for k, v in phases.items()}
        notes: list[str] = list(rest.pop("notes", []))
        if total_s is not None and span_s is not None:
            if total_s >= span_s:
                out = {"imports": total_s - span_s, **out}
            else:
                notes.append(f"the log spans {span_s:.1f} s, more than the {total_s:.1f} s measured")
        total = total_s if total_s is not None else span_s
        if total is not None and out:
            other = total - sum(out.values())
            if other < -1.0:  # timestamps in whole seconds round each phase by up to one
                notes.append(f"the phases add up to {-other:.1f} s more than the total")
            out["other"] = max(0.0, other)
        return cls(phases=out, total_s=total, notes=notes, **rest)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with a trial."""
        return {
            "phases_s": {k: round(v, 3) for k, v in self.phases.items()},
            "total_s": None if self.total_s is None else round(self.total_s, 3),
            "compile_cache_hit": self.compile_cache_hit,
            "compile_hash": self.compile_hash,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StartupBill":
        return cls(
            phases=dict(data.get("phases_s") or {}),
            total_s=data.get("total_s"),
            compile_cache_hit=data.get("compile_cache_hit"),
            compile_hash=data.get("compile_hash"),
            notes=list(data.get("notes") or []),
        )


def options_as_config(options: list[str]) -> dict[str, Any]:
    """Command-line options as config-file keys, the way ``vllm serve --config`` reads them back.

    ``--x v`` gives ``x: v``, a bare ``--x`` gives ``x: true``, ``--x a b`` a
    list, ``--x=v`` the same as ``--x v``; a later occurrence wins, as with
    argparse. Values keep the type they read as (int, float, a JSON object), so
    the file says 512, not '512'.
    """
    out: dict[str, Any] = {}
    key: str | None = None
    for item in options:
        if item.startswith("-") and len(item) > 1 and not _is_number(item):
            name, eq, value = item.lstrip("-").partition("=")
            out.pop(name, None)  # a repeated option moves to where it last appeared
            out[name] = _typed(value) if eq else True
            key = None if eq else name
        elif key is None:
            raise ValueError(f"{item!r} follows no option")
        elif out[key] is True:
            out[key] = _typed(item)
        elif isinstance(out[key], list):
            out[key].append(_typed(item))
        else:
            out[key] = [out[key], _typed(item)]
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _typed(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


class EngineAdapter(ABC):
    """Base class for engine adapters; subclasses are discovered by their ``name``."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    health_path: ClassVar[str] = "/health"
    metrics_path: ClassVar[str | None] = "/metrics"
    # The prefix of the engine's Prometheus names, and canonical signal -> its metric
    # family names, first present wins, counters without "_total" (kv_cache_usage,
    # running, waiting, preemptions, queue_time, ttft, itl, e2e, prefix_hit_rate ...).
    # The adapter is the one place these names are written down; telemetry is given them.
    metric_prefix: ClassVar[str | None] = None
    metric_names: ClassVar[Mapping[str, tuple[str, ...]] | None] = None
    # Variables naming where the engine leaves per-process litter (IPC sockets): a study of
    # hundreds of starts, each killed, would otherwise fill the temp folder. A user's own
    # setting wins.
    scratch_env: ClassVar[tuple[str, ...]] = ()

    def request_model(self, model: ModelRef) -> str:
        """The model name requests must carry; engines that cannot rename a model override it."""
        return model.served_name

    def workload_overrides(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Workload fields a configuration sets (client-side knobs such as concurrency)."""
        return {}

    @abstractmethod
    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        """The engine's command up to the tunable knobs (program, model, address)."""

    def base_env(self, device: str) -> dict[str, str]:
        """Environment the engine always needs on this device."""
        return {}

    def housekeeping_env(self, device: str) -> dict[str, str]:
        """Environment for autotune's own running of the engine (cache folders shared by
        trials); a user's own setting of the same variable wins, and it is not recommended."""
        return {}

    def endpoint(self) -> str | None:
        """The root URL of a server autotune does not start; None when it starts one."""
        return None

    def program_length(self, argv: list[str]) -> int:
        """How many leading argv items name the program (``python -m module`` is three)."""
        return 3 if len(argv) >= 3 and argv[1] == "-m" else 1

    def version(self) -> str | None:
        """The installed engine version, recorded with every result."""
        return None

    def validate(self, config: Mapping[str, Any], device: str) -> list[str]:
        """Engine rules a configuration must obey; each broken rule is one reason string."""
        return []

    def startup_phases(self, log_lines: list[str], total_s: float | None = None) -> StartupBill:
        """What the engine's log says of its start; an engine whose log is not read says nothing."""
        return StartupBill(total_s=total_s)

    def compile_key(self, config: Mapping[str, Any]) -> str:
        """The part of a configuration that decides the engine's compiled graphs: two
        configurations with equal keys can share a compile cache, so a sampler may prefer
        the next one that keeps the key. Engines that compile nothing ahead have one key."""
        return ""

    def knob_argv(self, knobs: Mapping[str, KnobSpec], config: Mapping[str, Any]) -> list[str]:
        """Turns knob values into options; booleans become ``--x`` / ``--no-x`` flags."""
        argv: list[str] = []
        for name, value in config.items():
            knob = knobs.get(name)
            if knob is None or knob.arg is None or value is None:
                continue
            if isinstance(value, bool):
                if value:
                    argv.append(knob.arg)
                elif not knob.is_flag:
                    argv.append("--no-" + knob.arg.removeprefix("--"))
            else:
                argv += [knob.arg, str(value)]
        return argv

    def knob_env(self, knobs: Mapping[str, KnobSpec], config: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for name, value in config.items():
            knob = knobs.get(name)
            if knob is not None and knob.env is not None and value is not None:
                env[knob.env] = str(int(value)) if isinstance(value, bool) else str(value)
        return env

    def config_file(self, knobs: Mapping[str, KnobSpec], config: Mapping[str, Any]) -> dict[str, Any]:
        """The knobs as config-file keys; ``launch_config`` adds the rest of the launch."""
        out: dict[str, Any] = {}
        for name, value in config.items():
            knob = knobs.get(name)
            if knob is None or knob.arg is None or value is None:
                continue
            key = knob.arg.removeprefix("--")
            if value is False:
                # `vllm serve --config` drops a false boolean silently; the negated option is explicit.
                if not knob.is_flag:
                    out["no-" + key] = True
            else:
                out[key] = value
        return out

    def launch_config(
        self, argv: list[str], knobs: Mapping[str, KnobSpec], config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The whole launch as the engine's config file; an engine without one gets the knobs."""
        return self.config_file(knobs, config)

    def plan(
        self,
        model: ModelRef,
        knobs: Mapping[str, KnobSpec],
        config: Mapping[str, Any],
        *,
        host: str,
        port: int,
        device: str,
        extra_args: list[str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> LaunchPlan:
        argv: list[str] = []
        env: dict[str, str] = {}
        config_file: dict[str, Any] = {}
        housekeeping: tuple[str, ...] = ()
        scratch: tuple[str, ...] = ()
        if self.capabilities.launches:
            argv = self.base_argv(model, host, port) + self.knob_argv(knobs, config) + list(extra_args or [])
            own = self.housekeeping_env(device)
            env = {**own, **self.base_env(device), **self.knob_env(knobs, config), **dict(extra_env or {})}
            housekeeping = tuple(k for k, v in own.items() if env.get(k) == v)
            scratch = tuple(k for k in self.scratch_env if k not in env and k not in os.environ)
            config_file = self.launch_config(argv, knobs, config)
        return LaunchPlan(
            argv=argv,
            env=env,
            host=host,
            port=port,
            health_path=self.health_path,
            metrics_path=self.metrics_path if self.capabilities.metrics else None,
            config_file=config_file,
            endpoint=self.endpoint(),
            program_len=self.program_length(argv) if argv else 0,
            housekeeping_env=housekeeping,
            scratch_env=scratch,
        )
