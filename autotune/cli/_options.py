"""Options that several commands take, declared once so each means the same everywhere.

``with_flags`` adds the shared workload and goal flags to a command, which
receives them as one ``flags`` mapping ready for ``autotune.spec.flag_overrides``:
``optimize``, ``measure`` and ``compare`` cannot drift apart on what they accept.
Each workload flag also answers to the name ``vllm bench serve`` gives the same
thing (``--max-concurrency``, ``--request-rate``, ``--input-len``,
``--output-len``, ``--num-prompts``), so a benchmark command line carries over.

The study options (``STUDY_DIR``, ``--storage``, ``--study``) are the same on
every command that reads a study, so a study in PostgreSQL is reviewed,
reported, verified, exported and served exactly like one in a folder.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from autotune.load.workload import Workload
from autotune.spec import DEFAULT_OBJECTIVES

SPEC = typer.Option(None, "--spec", help="study spec YAML; flags override it")


def _non_negative_price(value: float | None) -> float | None:
    if value is not None and value < 0:
        raise typer.BadParameter(f"price_per_gpu_hour must be >= 0, not {value:g}")
    return value


PRICE = typer.Option(None, "--price-per-gpu-hour", callback=_non_negative_price,
                     help="price of one GPU-hour, for cost per 1K tokens")


def _default(field: str) -> Any:
    return Workload.model_fields[field].default


# The flags' defaults are the spec's (a scenario or a spec file may set others), so the
# options themselves default to None and the help says what applies when none is given.
_PRESET = "; a --scenario or --spec sets its own"

#: flag name -> (type, option): the workload, the goals and where the engine runs.
SHARED: dict[str, tuple[Any, Any]] = {
    "model": (Optional[str], typer.Option(
        None, "--model", "-m", help="'tiny' (default), 'shape:<name>', a local folder or a hub id")),
    "slo": (Optional[str], typer.Option(
        None, "--slo", help="e.g. 'p99(ttft)<300ms' or 'ttft<300ms@99%' (default: none)")),
    "objectives": (Optional[str], typer.Option(
        None, "--objectives", "-o", help=f"e.g. 'max:goodput' (default '{DEFAULT_OBJECTIVES}')")),
    "scenario": (Optional[str], typer.Option(
        None, "--scenario", help="your traffic as a preset: chat, long-context, batch or a YAML file")),
    "concurrency": (Optional[int], typer.Option(
        None, "--concurrency", "--max-concurrency",
        help=f"requests in flight (default {_default('concurrency')}{_PRESET})")),
    "rate": (Optional[float], typer.Option(
        None, "--rate", "--request-rate",
        help="Poisson arrivals at this many requests/s (default: none, a closed loop at --concurrency)")),
    "prompt_tokens": (Optional[int], typer.Option(
        None, "--prompt-tokens", "--input-len",
        help=f"tokens per prompt (default {_default('prompt_tokens')}{_PRESET})")),
    "output_tokens": (Optional[int], typer.Option(
        None, "--output-tokens", "--output-len",
        help=f"tokens generated per request (default {_default('output_tokens')}{_PRESET})")),
    "num_requests": (Optional[int], typer.Option(
        None, "--num-requests", "--num-prompts",
        help=f"measured requests per run (default {_default('num_requests')}{_PRESET})")),
    "max_model_len": (Optional[int], typer.Option(
        None, "--max-model-len", help="the engine's context length (default: tiny 512, else the model's own)")),
    "device": (Optional[str], typer.Option(None, "--device", help="auto (default), cpu or cuda")),
    "api_key_env": (Optional[str], typer.Option(
        None, "--api-key-env", help="environment variable holding the engine's API key")),
}

API_KEY_ENV = SHARED["api_key_env"][1]

#: The study a reading command opens: a folder, or a storage URL and the study's name in it.
STUDY_DIR = typer.Argument(None, metavar="STUDY_DIR", show_default=False,
                           help="the study folder (its study.db); with --storage, where files are written")
STORAGE = typer.Option(None, "--storage", help="Optuna storage URL holding the study (e.g. postgresql://host/db)")
STUDY = typer.Option(None, "--study", "--study-name", help="the study's name, where the storage holds several")
JSON = typer.Option(False, "--json", help="print JSON on stdout instead of tables")


def open_results(study_dir: Path | None, storage: str | None, study: str | None) -> tuple[Any, Path]:
    """The study and the local folder its files (configs, report) go to.

    A study read from a server keeps its files in the folder given, else in the
    folder its spec names when that exists here, else in ``autotune-runs/<name>``.
    """
    from autotune.errors import UserError
    from autotune.tuning import StudyResults

    if study_dir is None and storage is None:
        raise UserError("give a study folder, or --storage URL (with --study NAME where it holds several)")
    if storage is None and study_dir is not None and study_dir.suffix == ".db" and study_dir.is_file():
        storage, study_dir = f"sqlite:///{study_dir.resolve()}", None
    results = StudyResults.load(study_dir if storage is None else None, storage=storage, name=study)
    if study_dir is not None:
        return results, study_dir
    stored = results.spec.study_dir if results.spec is not None else None
    if stored is not None and Path(stored).is_dir():
        return results, Path(stored)
    return results, Path("autotune-runs") / results.name


def with_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds every ``SHARED`` flag to ``command``'s options; it gets them as ``flags=``."""
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "flags"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in SHARED.items()]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in SHARED}
        return command(*args, flags=flags, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{k: v for k, v in command.__annotations__.items() if k != "flags"},
                               **{name: kind for name, (kind, _) in SHARED.items()}}
    return wrapper


__all__ = ["API_KEY_ENV", "JSON", "PRICE", "SHARED", "SPEC", "STORAGE", "STUDY", "STUDY_DIR", "open_results",
           "with_flags"]
