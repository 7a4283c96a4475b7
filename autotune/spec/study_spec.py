"""The study specification: everything a study needs, in one validated object.

A spec comes from a YAML file (``studies/*.yaml``), from command-line flags, or
both (flags win). It is validated whole before anything runs, so a typo costs
one line and exit status 2, never a half-started study.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autotune.errors import UserError, validation_line
from autotune.load.workload import Workload
from autotune.spec.grammar import parse_objectives, parse_slos
from autotune.spec.scenarios import deep_merge, load_scenario
from autotune.spec.slo import Constraint, Objective

DEFAULT_OBJECTIVES = "max:output_tps,min:p99(ttft)"


#: Every model of the spec: unknown keys refused, and no infinity or NaN where a number goes
#: (a rate of ``inf`` or a price of ``nan`` would start a study that can only fail).
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

#: A bound no real study reaches; beyond it a count is a typo (``1e23``), not a budget.
MAX_TRIALS = 10_000


class Hardware(BaseModel):
    model_config = STRICT

    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_type: str | None = None
    gpu_count: int = Field(1, ge=1)
    gpu_memory_gib: float | None = Field(None, gt=0)
    price_per_gpu_hour: float | None = Field(
        None, ge=0, description="price of one GPU-hour (of the machine-hour on CPU); gives cost per 1K tokens"
    )
    # The GPUs this study (or worker) may use, and binding the engine to them.
    gpu_ids: list[int] | None = Field(
        None, description="GPU indices (NVML / PCI bus order) the engine is bound to via CUDA_VISIBLE_DEVICES"
    )

    @model_validator(mode="after")
    def _gpu_ids_agree(self) -> "Hardware":
        if self.gpu_ids is None:
            return self
        if not self.gpu_ids:
            raise ValueError("gpu_ids: give at least one GPU index, or leave it out")
        if any(i < 0 for i in self.gpu_ids) or len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ValueError(f"gpu_ids {self.gpu_ids}: indices must be distinct and >= 0")
        if "gpu_count" not in self.model_fields_set:
            self.gpu_count = len(self.gpu_ids)
        elif self.gpu_count != len(self.gpu_ids):
            raise ValueError(f"gpu_count {self.gpu_count} but {len(self.gpu_ids)} gpu_ids {self.gpu_ids}")
        return self

    def engine_env(self) -> dict[str, str]:
        """The environment that binds the engine to ``gpu_ids``. CUDA numbers devices
        fastest-first unless told otherwise; PCI bus order makes the ids mean what NVML
        (and nvidia-smi) call them."""
        if not self.gpu_ids:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpu_ids)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


class Budget(BaseModel):
    model_config = STRICT

    trials: int = Field(8, ge=1, le=MAX_TRIALS, description="launched trials (pruned ones are free)")
    wall_time_s: float | None = Field(None, gt=0)
    gpu_minutes: float | None = Field(
        None, gt=0, description="GPU time the study may spend, engine starts included, over every run of it "
        "(x the GPUs a trial uses; engine time on a CPU): no trial starts that could take it past this",
    )
    # 3: two equal failures can be two bad configurations; a third, of yet another configuration, is the machine.
    stop_after_start_failures: int = Field(
        3, ge=0, description="consecutive trials of different configurations that fail to start with the same "
        "error stop the study, uncounted (0: never)",
    )


class EngineOptions(BaseModel):
    model_config = STRICT

    name: str = "vllm"
    host: str = "127.0.0.1"
    api_key_env: str | None = Field(
        None, description="name of the environment variable holding the API key; the key itself is never stored"
    )
    startup_timeout_s: float = Field(600.0, gt=0)
    extra_args: list[str] = []
    env: dict[str, str] = {}
    launch_template: list[str] | None = Field(
        None, description="wraps the engine argv; placeholders {argv} {args} {port} {host} (list items only)"
    )
    options: dict[str, Any] = Field(
        {}, description="keyword settings of the engine adapter (external: base_url, served_model, ignore_eos)"
    )

    @field_validator("launch_template")
    @classmethod
    def _template_wraps_argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and "{argv}" not in v and "{args}" not in v:
            raise ValueError("must contain the item '{argv}' or '{args}' (where the engine's own command goes)")
        return v


STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")


class Heartbeat(BaseModel):
    """How a dead worker is noticed: its running trial stops beating and is retried elsewhere."""

    model_config = STRICT

    interval_s: int = Field(30, ge=1, description="a running trial's heartbeat period")
    grace_s: int = Field(120, ge=2, description="silence after which a trial is failed and retried")
    max_retry: int | None = Field(3, ge=0, description="retries of one configuration whose worker died")

    @model_validator(mode="after")
    def _grace_after_beat(self) -> "Heartbeat":
        if self.grace_s <= self.interval_s:
            raise ValueError(f"grace_s ({self.grace_s}) must be longer than interval_s ({self.interval_s})")
        return self


def check_storage_url(url: str) -> str:
    """An Optuna RDB URL of a backend autotune supports; the reason otherwise."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL: {redact_url(url)!r} (e.g. postgresql://user@host/db)") from None
    backend = parsed.get_backend_name()
    if backend not in STORAGE_SCHEMES:
        raise ValueError(f"unsupported storage {backend!r} (use {', '.join(STORAGE_SCHEMES)})")
    if backend != "sqlite" and not parsed.database:
        raise ValueError(f"storage URL {redact_url(url)!r} names no database")
    return url


def redact_url(url: str) -> str:
    """The URL with its password masked: fit for messages, logs and the stored spec."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


class RoundsOptions(BaseModel):
    """How the budget is cut into rounds, and what may change between them (see autotune.tuning.rounds)."""

    model_config = STRICT

    enabled: bool = True
    size: int | None = Field(None, ge=1, description="trials per round (default: a third of the budget)")
    extend: bool = Field(True, description="widen a range whose best value sits on its edge, within the hard limits")
    # Off by default: on both recorded CPU surfaces a knob frozen after 8 trials was often pinned away from
    # the target, and every rounds search reached it in more seeds without (docs/benchmarks.md).
    freeze: bool = Field(False, description="pin knobs whose importance is negligible")
    freeze_below: float = Field(0.05, ge=0, lt=1, description="importance share under which a knob is frozen")
    min_trials_for_importance: int = Field(8, ge=3, description="completed trials needed before freezing")
    # 4 by default: on both recorded CPU surfaces 3 to 6 neighbours per round cut the engine time
    # to a near-best point against none (docs/benchmarks.md, search efficiency).
    neighbours: int = Field(4, ge=0, le=20, description="neighbours of the best trials enqueued per round")


class GoodputOptions(BaseModel):
    """How a trial searches for its goodput: the highest load at which every SLO holds."""

    model_config = STRICT

    unit: Literal["req/s", "concurrency"] = "req/s"
    start: float = Field(1.0, gt=0, description="first load level tried")
    max_levels: int = Field(5, ge=1, le=20, description="load levels measured per trial at most")
    upper: float | None = Field(None, gt=0)
    min_load: float | None = Field(None, gt=0)
    resolution: float = Field(0.1, gt=0, lt=1)
    growth: float = Field(2.0, gt=1, le=4, description="bracketing factor: 2 doubles up from start; 1.25 suits a start near the answer")
    first_step: float | None = Field(
        None, gt=1, le=4,
        description="the first step's factor from start (default: growth); just over 1 + resolution from a start at "
                    "a goodput measured before brackets it in two levels where the reading repeats (autotune verify)",
    )
    conservative: bool = Field(False, description="attainment must hold at its Wilson lower bound")
    min_duration_s: float | None = Field(
        20.0, gt=0, description="each rate level sends at least rate x this many requests, so overload shows"
    )
    from_incumbent: bool = Field(
        True, description="start each trial's search at the best goodput so far and stop at once below it"
    )
    warmup_s: float = Field(5.0, ge=0, description="discarded load at the first level's rate before it, at least")
    warmup_latencies: float = Field(
        3.0, ge=0, description="...and at least this many end-to-end latencies, so the batch fills before measuring"
    )
    design_effect: float = Field(
        1.0, ge=1, le=50,
        description="how much more a level's SLO misses vary than independent requests' would (they come in bursts): "
                    "each level test counts its requests as this many times fewer, so its intervals widen; "
                    "benchmarks/verdicts.py --clustering measures it",
    )


class StudySpec(BaseModel):
    """What to tune, under which load, for which goals."""

    model_config = STRICT

    name: str | None = None
    model: str = "tiny"
    max_model_len: int | None = Field(None, ge=16)
    engine: EngineOptions = EngineOptions()
    hardware: Hardware = Hardware()
    workload: Workload = Workload()
    slo: str = ""
    objectives: str = DEFAULT_OBJECTIVES
    space: dict[str, Any] = {}
    goodput: GoodputOptions | None = None
    budget: Budget = Budget()
    baseline: bool = Field(
        True, description="measure the engine's own defaults (no knob set) first, the reference of every ratio"
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        description="configurations a new study measures first (a known-good config, a colleague's pick); "
        "knobs left out are sampled",
    )
    sampler: Literal["tpe", "nsga2", "random", "gp"] = "gp"  # the benchmark's best: docs/benchmarks.md, Search efficiency
    rounds: RoundsOptions = RoundsOptions()
    seed: int = 0
    storage: str | None = None
    heartbeat: Heartbeat = Heartbeat()
    study_dir: Path | None = None
    scenario: str | None = Field(
        None, description="the preset (objectives/<name>.yaml or a file) under this spec; its fields are defaults"
    )
    repeats: int = Field(1, ge=1, le=100, description="measurements of each trial on the same server (mean, std, CI)")

    @field_validator("storage")
    @classmethod
    def _storage_parses(cls, v: str | None) -> str | None:
        return check_storage_url(v) if v else v

    @field_validator("slo")
    @classmethod
    def _slo_parses(cls, v: str) -> str:
        if v.strip():
            parse_slos(v)
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives_parse(cls, v: str) -> str:
        parse_objectives(v)
        return v

    @model_validator(mode="after")
    def _defaults(self) -> "StudySpec":
        if self.name is None:
            self.name = default_name(self.model, self.engine.name)
        elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"study name {self.name!r} may hold letters, digits, '.', '_' and '-' only")
        if self.study_dir is None:
            self.study_dir = Path("autotune-runs") / self.name
        wants_goodput = any(o.metric == "goodput" for o in parse_objectives(self.objectives))
        if wants_goodput and self.goodput is None:
            self.goodput = GoodputOptions()
        if any(o.metric == "cost_per_1k_tokens" for o in parse_objectives(self.objectives)):
            if not self.hardware.price_per_gpu_hour:
                raise ValueError("objective min:cost needs a price: hardware.price_per_gpu_hour or --price-per-gpu-hour")
        if self.goodput is not None and not self.slo.strip():
            raise ValueError("goodput needs an SLO (--slo): it is the highest load at which the SLOs hold")
        if self.max_model_len is not None:
            overflow = self.workload.overflow(self.max_model_len)
            if overflow:
                raise ValueError(overflow)
        return self

    @property
    def constraints(self) -> list[Constraint]:
        return parse_slos(self.slo) if self.slo.strip() else []

    @property
    def objective_list(self) -> list[Objective]:
        return parse_objectives(self.objectives)

    @property
    def storage_url(self) -> str:
        assert self.study_dir is not None
        return self.storage or f"sqlite:///{self.study_dir.resolve() / 'study.db'}"


def default_name(model: str, engine: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name if "/" in model else model).strip("-.")
    return f"{slug or 'model'}-{engine}"


def load_spec(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> StudySpec:
    """Reads the YAML (if any), lays the flag overrides on top, validates the whole."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"spec file not found: {path}") from None
        except IsADirectoryError:
            raise UserError(f"spec {path} is a folder, not a YAML file") from None
        except UnicodeDecodeError as e:
            raise UserError(f"spec {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise UserError(f"cannot read spec {path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise UserError(f"spec {path} is not valid YAML: {' '.join(str(e).split())}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"spec {path} must be a mapping at the top level")
        data = loaded
    # Scenario presets: preset < spec file < flags.
    scenario = (overrides or {}).get("scenario") or data.get("scenario")
    if scenario:
        data = {**deep_merge(load_scenario(str(scenario)), data), "scenario": str(scenario)}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        set_dotted(data, dotted, value)
    _refuse_blank_slo(data.get("slo"), (overrides or {}).get("slo") is not None)
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise UserError(f"bad spec{f' {path}' if path else ''}: {validation_line(e)}") from None
    except UserError as e:
        raise UserError(str(e)) from None


def _refuse_blank_slo(slo: Any, from_flag: bool) -> None:
    """A blank SLO given on purpose is a mistake (an unset shell variable), not a wish for none:
    read as "no SLO", it would run a whole study against no goal. Left out, there is none."""
    if isinstance(slo, str) and not slo.strip():
        where = "--slo" if from_flag else "slo"
        raise UserError(f"{where} is blank: give one such as 'p99(ttft)<300ms', or leave it out for none")


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


