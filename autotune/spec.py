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

from autotune.errors import UserError
from autotune.load.workload import Workload
from autotune.slo import Constraint, Objective, parse_objectives, parse_slos

DEFAULT_OBJECTIVES = "max:output_tps,min:p99(ttft)"


class Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_type: str | None = None
    gpu_count: int = Field(1, ge=1)
    gpu_memory_gib: float | None = Field(None, gt=0)
    price_per_gpu_hour: float = Field(0.0, ge=0)


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(8, ge=1, description="launched trials (pruned ones are free)")
    wall_time_s: float | None = Field(None, gt=0)


class EngineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "vllm"
    host: str = "127.0.0.1"
    api_key_env: str | None = Field(
        None, description="name of the environment variable holding the API key; the key itself is never stored"
    )
    startup_timeout_s: float = Field(600.0, gt=0)
    extra_args: list[str] = []
    env: dict[str, str] = {}
    launch_template: list[str] | None = Field(
        None, description="wraps the engine argv; placeholders {argv} {port} {host} (list items only)"
    )


class GoodputOptions(BaseModel):
    """How a trial searches for its goodput: the highest load at which every SLO holds."""

    model_config = ConfigDict(extra="forbid")

    unit: Literal["req/s", "concurrency"] = "req/s"
    start: float = Field(1.0, gt=0, description="first load level tried")
    max_levels: int = Field(5, ge=1, le=20, description="load levels measured per trial at most")
    upper: float | None = Field(None, gt=0)
    min_load: float | None = Field(None, gt=0)
    resolution: float = Field(0.1, gt=0, lt=1)
    conservative: bool = Field(False, description="attainment must hold at its Wilson lower bound")
    min_duration_s: float | None = Field(
        20.0, gt=0, description="each rate level sends at least rate x this many requests, so overload shows"
    )


class StudySpec(BaseModel):
    """What to tune, under which load, for which goals."""

    model_config = ConfigDict(extra="forbid")

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
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = 0
    storage: str | None = None
    study_dir: Path | None = None

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
        if self.goodput is not None and not self.slo.strip():
            raise ValueError("goodput needs an SLO (--slo): it is the highest load at which the SLOs hold")
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
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"spec file not found: {path}") from None
        except yaml.YAMLError as e:
            raise UserError(f"spec {path} is not valid YAML: {' '.join(str(e).split())}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"spec {path} must be a mapping at the top level")
        data = loaded
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        _set_dotted(data, dotted, value)
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise UserError(f"bad spec{f' {path}' if path else ''}: {validation_line(e)}") from None
    except UserError as e:
        raise UserError(str(e)) from None


def validation_line(e: ValidationError) -> str:
    """Pydantic's first complaint, as one line that names the field."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{loc}: {msg}" if loc else msg


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value
