"""Options that several commands take, declared once so each means the same everywhere.

``with_flags`` adds the shared workload and goal flags to a command, which
receives them as one ``flags`` mapping ready for ``autotune.spec.flag_overrides``:
``optimize``, ``measure`` and ``compare`` cannot drift apart on what they accept.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import typer

SPEC = typer.Option(None, "--spec", help="study spec YAML; flags override it")


def _non_negative_price(value: float | None) -> float | None:
    if value is not None and value < 0:
        raise typer.BadParameter(f"price_per_gpu_hour must be >= 0, not {value:g}")
    return value


PRICE = typer.Option(None, "--price-per-gpu-hour", callback=_non_negative_price,
                     help="price of one GPU-hour, for cost per 1K tokens")

#: flag name -> (type, option): the workload, the goals and where the engine runs.
SHARED: dict[str, tuple[Any, Any]] = {
    "model": (Optional[str], typer.Option(None, "--model", "-m", help="'tiny', 'shape:<name>', a local folder or a hub id")),
    "slo": (Optional[str], typer.Option(None, "--slo", help="e.g. 'p99(ttft)<300ms' or 'ttft<300ms@99%'")),
    "objectives": (Optional[str], typer.Option(None, "--objectives", "-o", help="e.g. 'max:output_tps,min:p99(ttft)'")),
    "scenario": (Optional[str], typer.Option(None, "--scenario", help="preset: chat, long-context, batch or a YAML file")),
    "concurrency": (Optional[int], typer.Option(None, "--concurrency", help="requests in flight")),
    "rate": (Optional[float], typer.Option(None, "--rate", help="Poisson arrivals at this many requests/s")),
    "prompt_tokens": (Optional[int], typer.Option(None, "--prompt-tokens", help="tokens per prompt")),
    "output_tokens": (Optional[int], typer.Option(None, "--output-tokens", help="tokens generated per request")),
    "num_requests": (Optional[int], typer.Option(None, "--num-requests", help="measured requests per run")),
    "max_model_len": (Optional[int], typer.Option(None, "--max-model-len", help="the engine's context length")),
    "device": (Optional[str], typer.Option(None, "--device", help="auto, cpu or cuda")),
    "api_key_env": (Optional[str], typer.Option(None, "--api-key-env", help="environment variable holding the engine's API key")),
}

API_KEY_ENV = SHARED["api_key_env"][1]


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


__all__ = ["API_KEY_ENV", "PRICE", "SHARED", "SPEC", "with_flags"]
