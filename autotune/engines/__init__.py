"""Engine adapters, found by name: every module in this package that defines an
``EngineAdapter`` subclass with a ``name`` is an engine, with no list to edit.

Engines kept outside the package live in the folders named by
``AUTOTUNE_ENGINE_PATH`` (separated like ``PATH``): each ``<engine>.py`` there
is loaded the same way, and its search space is the ``<engine>.yaml`` beside it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from autotune.engines.base import Capabilities, EngineAdapter, KnobSpec, LaunchPlan, ModelRef, StartupBill
from autotune.errors import UserError

__all__ = [
    "ENGINE_PATH_ENV", "Capabilities", "EngineAdapter", "KnobSpec", "LaunchPlan", "ModelRef", "StartupBill",
    "engine_names", "get_engine", "metric_tables", "space_file",
]

ENGINE_PATH_ENV = "AUTOTUNE_ENGINE_PATH"


def _adapters_in(module: ModuleType) -> dict[str, type[EngineAdapter]]:
    return {
        obj.name: obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, EngineAdapter)
        and obj is not EngineAdapter
        and obj.__module__ == module.__name__
        and getattr(obj, "name", None)
    }


@cache
def _builtin() -> dict[str, type[EngineAdapter]]:
    found: dict[str, type[EngineAdapter]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in {"base", "launcher"}:
            continue
        found.update(_adapters_in(importlib.import_module(f"{__name__}.{info.name}")))
    return found


@cache
def _external(engine_path: str) -> dict[str, tuple[type[EngineAdapter], Path]]:
    """Adapters from the folders of ``AUTOTUNE_ENGINE_PATH``, with the file each came from."""
    found: dict[str, tuple[type[EngineAdapter], Path]] = {}
    for folder in filter(None, engine_path.split(os.pathsep)):
        for file in sorted(Path(folder).glob("*.py")):
            if file.name.startswith("_"):
                continue
            module_name = f"autotune_engine_{file.stem}"
            spec = importlib.util.spec_from_file_location(module_name, file)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # a broken plugin is the user's to fix: say which and why
                sys.modules.pop(module_name, None)
                raise UserError(f"cannot load engine adapter {file}: {type(e).__name__}: {e}") from None
            for name, cls in _adapters_in(module).items():
                found.setdefault(name, (cls, file))
    return found


def _registry() -> dict[str, type[EngineAdapter]]:
    extra = {name: cls for name, (cls, _) in _external(os.environ.get(ENGINE_PATH_ENV, "")).items()}
    return {**extra, **_builtin()}  # a built-in name cannot be shadowed


def engine_names() -> list[str]:
    return sorted(_registry())


def metric_tables() -> dict[str, dict[str, tuple[str, ...]]]:
    """Every adapter's metric names by prefix, for a /metrics endpoint whose engine is not
    known beforehand (an external endpoint): the exposition text picks one."""
    return {
        cls.metric_prefix: {k: tuple(v) for k, v in cls.metric_names.items()}
        for _, cls in sorted(_registry().items())
        if cls.metric_prefix and cls.metric_names
    }


def space_file(name: str) -> Path | None:
    """The search-space YAML beside an adapter loaded from ``AUTOTUNE_ENGINE_PATH``; None for built-ins."""
    if name in _builtin():
        return None
    entry = _external(os.environ.get(ENGINE_PATH_ENV, "")).get(name)
    return entry[1].with_suffix(".yaml") if entry else None


def get_engine(name: str, options: Mapping[str, Any] | None = None) -> EngineAdapter:
    """The adapter for ``name``; ``options`` (the spec's ``engine.options``) go to its constructor."""
    try:
        cls = _registry()[name]
    except KeyError:
        raise UserError(f"unknown engine {name!r} (known: {', '.join(engine_names())})") from None
    try:
        return cls(**dict(options or {}))
    except TypeError as e:
        raise UserError(f"bad engine.options for {name!r}: {e}") from None
    except ValueError as e:
        raise UserError(f"engine {name!r}: {e}") from None
