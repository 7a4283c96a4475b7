"""Scenario presets: partial specs under ``objectives/`` that a spec or a flag names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from autotune.errors import UserError

SCENARIOS_DIR = Path(__file__).resolve().parents[2] / "objectives"


def scenario_names() -> list[str]:
    """The presets shipped under ``objectives/``."""
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))


def load_scenario(name: str) -> dict[str, Any]:
    """A preset's fields: ``chat`` reads ``objectives/chat.yaml``; a path reads that file.

    A preset is a partial spec (workload, SLO, objectives, goodput...); it is
    validated together with whatever lies on top of it.
    """
    is_path = name.endswith((".yaml", ".yml")) or "/" in name
    path = Path(name) if is_path else SCENARIOS_DIR / f"{name}.yaml"
    if not path.is_file():
        if is_path:
            raise UserError(f"scenario file not found: {name}")
        raise UserError(f"unknown scenario {name!r} (known: {', '.join(scenario_names()) or 'none'})")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"scenario {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"scenario {path} must be a mapping at the top level")
    if "scenario" in loaded:
        raise UserError(f"scenario {path} may not name another scenario")
    return loaded


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mapping by mapping; any other value replaces whole.

    A length distribution (a mapping with ``dist``) is one value: merging a
    fixed length into a preset's lognormal would keep a ``std`` it refuses.
    """
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and "dist" not in value and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out
