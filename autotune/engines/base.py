"""The engine adapter interface: everything autotune needs to know about one engine.

An adapter is deliberately small. It turns a trial configuration (knob name ->
value) into an argv list and an environment, names the endpoints to poll, and
says what the engine can do. Argument names come from the engine's search-space
YAML (``arg:`` / ``env:`` per knob), so most adapters only override
``base_argv`` and ``base_env``. Adapters import nothing from autotune but this
module, so adding an engine is one adapter file plus one YAML.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping


@dataclass(frozen=True)
class Capabilities:
    """What the load generator and quality checks may rely on."""

    ignore_eos: bool = True
    prompt_logprobs: bool = False
    metrics: bool = False
    dummy_weights: bool = False
    token_id_prompts: bool = False
    # --- engines autotune does not start, or that serve under a name of their own (begin) ---
    launches: bool = True  # False: an endpoint that is already running; nothing is started or stopped
    # --- (end) ---


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
    """One engine start, fully resolved: nothing is left to a shell."""

    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    health_path: str
    metrics_path: str | None
    config_file: dict[str, Any] = field(default_factory=dict)
    endpoint: str | None = None  # the server's root URL when autotune does not start it

    @property
    def base_url(self) -> str:
        return self.endpoint.rstrip("/") if self.endpoint else f"http://{self.host}:{self.port}"

    def command_line(self) -> str:
        """The command a user can paste: the environment that matters, then the argv."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)


class EngineAdapter(ABC):
    """Base class for engine adapters; subclasses are discovered by their ``name``."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    health_path: ClassVar[str] = "/health"
    metrics_path: ClassVar[str | None] = "/metrics"
    # --- engine metrics and request naming (begin) ---
    # The prefix of the engine's Prometheus names, and canonical signal -> its metric
    # family names, first present wins, counters without "_total" (kv_cache_usage,
    # running, waiting, preemptions, queue_time, ttft, itl, e2e, prefix_hit_rate ...).
    metric_prefix: ClassVar[str | None] = None
    metric_names: ClassVar[Mapping[str, tuple[str, ...]] | None] = None

    def request_model(self, model: ModelRef) -> str:
        """The model name requests must carry; engines that cannot rename a model override it."""
        return model.served_name

    def workload_overrides(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Workload fields a configuration sets (client-side knobs such as concurrency)."""
        return {}
    # --- (end) ---

    @abstractmethod
    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        """The engine's command up to the tunable knobs (program, model, address)."""

    def base_env(self, device: str) -> dict[str, str]:
        """Environment the engine always needs on this device."""
        return {}

    def version(self) -> str | None:
        """The installed engine version, recorded with every result."""
        return None

    def validate(self, config: Mapping[str, Any], device: str) -> list[str]:
        """Engine rules a configuration must obey; each broken rule is one reason string."""
        return []

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
        """The knobs as a config file the engine reads (``vllm serve --config``), if it has one."""
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
        argv = self.base_argv(model, host, port) + self.knob_argv(knobs, config) + list(extra_args or [])
        env = {**self.base_env(device), **self.knob_env(knobs, config), **dict(extra_env or {})}
        return LaunchPlan(
            argv=argv,
            env=env,
            host=host,
            port=port,
            health_path=self.health_path,
            metrics_path=self.metrics_path if self.capabilities.metrics else None,
            config_file=self.config_file(knobs, config),
        )
