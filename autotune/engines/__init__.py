"""Engine adapters, found by name: every module in this package that defines an
``EngineAdapter`` subclass with a ``name`` is an engine, with no list to edit."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from autotune.engines.base import Capabilities, EngineAdapter, KnobSpec, LaunchPlan, ModelRef
from autotune.errors import UserError

__all__ = ["Capabilities", "EngineAdapter", "KnobSpec", "LaunchPlan", "ModelRef", "get_engine", "engine_names"]


@cache
def _registry() -> dict[str, type[EngineAdapter]]:
    found: dict[str, type[EngineAdapter]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in {"base", "launcher"}:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, EngineAdapter)
                and obj is not EngineAdapter
                and getattr(obj, "name", None)
            ):
                found[obj.name] = obj
    return found


def engine_names() -> list[str]:
    return sorted(_registry())


def get_engine(name: str) -> EngineAdapter:
    try:
        return _registry()[name]()
    except KeyError:
        raise UserError(f"unknown engine {name!r} (known: {', '.join(engine_names())})") from None
