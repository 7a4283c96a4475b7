"""Search spaces: the knobs of one engine, their ranges, and the rules between them.

A space is YAML under ``search_spaces/<engine>.yaml``. Each knob says its type
and range, how it reaches the engine (``arg:`` or ``env:``), and on which
devices it exists. The study spec may narrow a range or pin a knob. Rules
between knobs (``max_num_batched_tokens >= max_num_seqs``) are small
arithmetic comparisons, checked before any engine starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from autotune.engines.base import KnobSpec
from autotune.errors import UserError, one_line
from autotune.space.rules import parse_rule, rule_holds, rule_names

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"

Scalar = Union[bool, int, float, str]


class Knob(BaseModel):
    """One tunable setting. ``fixed`` pins it; ``devices`` limits where it exists."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["int", "float", "categorical", "bool"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Scalar | None] | None = None  # None: leave the setting to the engine
    fixed: Scalar | None = None
    arg: str | None = None
    env: str | None = None
    flag: bool = False  # a bare switch with no --no- form
    devices: list[Literal["cpu", "cuda"]] | None = None
    max_from: str | None = None  # drop choices above this hardware figure (e.g. gpu_count)
    by_device: dict[Literal["cpu", "cuda"], dict[str, Any]] | None = None  # per-device range or choices
    needs: dict[str, str] | None = None  # choice -> hardware figure it needs non-zero (e.g. cpu_avx512)
    quality: bool = False  # changes the model's answers (quantization, KV dtype): perplexity is re-measured
    help: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "Knob":
        if self.fixed is not None:
            return self
        if self.type in ("int", "float"):
            if self.low is None or self.high is None:
                raise ValueError("needs low and high")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) > high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("log scale needs low > 0")
        if self.type == "categorical" and not self.choices:
            raise ValueError("needs choices")
        return self

    def spec(self, name: str) -> KnobSpec:
        return KnobSpec(name=name, arg=self.arg, env=self.env, is_flag=self.flag)


def _keep(knob: Knob, allowed: list[Any]) -> Knob:
    """The knob cut to the choices this hardware allows (the first if none), pinned when one is left:
    a trial whose start is sure to fail costs a start and teaches the sampler nothing."""
    assert knob.choices
    knob = knob.model_copy(update={"choices": allowed or knob.choices[:1]})
    return knob.model_copy(update={"fixed": knob.choices[0]}) if len(knob.choices or []) == 1 else knob


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: str
    knobs: dict[str, Knob]
    constraints: list[str] = []

    @classmethod
    def load(cls, engine: str, path: Path | None = None) -> "SearchSpace":
        # An adapter loaded from AUTOTUNE_ENGINE_PATH keeps its YAML beside it.
        if path is None:
            from autotune.engines import space_file

            path = space_file(engine) or SPACES_DIR / f"{engine}.yaml"
        if not path.exists():
            raise UserError(f"no search space for engine {engine!r} (looked for {path})")
        try:
            data = yaml.safe_load(path.read_text())
            space = cls.model_validate(data)
        except (yaml.YAMLError, ValidationError) as e:
            raise UserError(f"bad search space {path}: {one_line(e)}") from None
        for rule in space.constraints:
            parse_rule(rule)
        return space

    def for_hardware(self, device: str, hardware: Mapping[str, float]) -> "SearchSpace":
        """The knobs that exist on this device, with choices cut to what the hardware allows."""
        knobs: dict[str, Knob] = {}
        for name, knob in self.knobs.items():
            if knob.devices is not None and device not in knob.devices:
                continue
            if knob.by_device and device in knob.by_device:
                knob = Knob.model_validate(
                    {**knob.model_dump(exclude_none=True, exclude={"by_device"}), **knob.by_device[device]}
                )
            if knob.max_from and knob.choices and knob.fixed is None:
                limit = hardware.get(knob.max_from)
                if limit is not None:
                    knob = _keep(knob, [c for c in knob.choices if isinstance(c, (int, float)) and c <= limit])
            if knob.needs and knob.choices and knob.fixed is None:
                # A figure this machine was not asked about leaves its choices in.
                knob = _keep(knob, [c for c in knob.choices if hardware.get(knob.needs.get(str(c), ""), 1.0)])
            knobs[name] = knob
        rules = [r for r in self.constraints if rule_names(r) <= set(knobs) | set(hardware)]
        return SearchSpace(engine=self.engine, knobs=knobs, constraints=rules)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "SearchSpace":
        """Applies the spec's ``space:`` section: a scalar pins a knob, a mapping narrows it, and ``null``
        pins it to the engine's own default (the setting is never passed), as ``null`` means in ``choices``."""
        knobs = dict(self.knobs)
        self.require_known(overrides)
        for name, value in overrides.items():
            if value is None:
                knobs[name] = knobs[name].model_copy(update={
                    "type": "categorical", "choices": [None], "fixed": None, "low": None, "high": None,
                    "step": None, "log": False, "by_device": None})
            elif isinstance(value, Mapping):
                try:
                    knobs[name] = Knob.model_validate({**knobs[name].model_dump(exclude_none=True), **value})
                except ValidationError as e:
                    raise UserError(f"bad range for knob {name!r}: {one_line(e)}") from None
            else:
                knobs[name] = knobs[name].model_copy(update={"fixed": value})
        return SearchSpace(engine=self.engine, knobs=knobs, constraints=self.constraints)

    def knob_specs(self) -> dict[str, KnobSpec]:
        return {name: knob.spec(name) for name, knob in self.knobs.items()}

    def check(self, config: Mapping[str, Any], hardware: Mapping[str, float]) -> list[str]:
        """Every rule the configuration breaks, as readable reasons."""
        scope = {k: v for k, v in {**hardware, **config}.items() if v is not None}
        return [
            f"violates {rule}"
            for rule in self.constraints
            if rule_names(rule) <= set(scope) and not rule_holds(rule, scope)
        ]

    def require_known(self, config: Mapping[str, Any], what: str = "") -> None:
        """Refuses a configuration that names knobs this engine does not have, listing the known ones."""
        unknown = sorted(set(config) - set(self.knobs))
        if unknown:
            names = ", ".join(repr(k) for k in unknown)
            raise UserError(
                f"{what + ': ' if what else ''}unknown knob{'s' if len(unknown) > 1 else ''} {names} "
                f"for engine {self.engine!r} (known: {', '.join(sorted(self.knobs))})"
            )
