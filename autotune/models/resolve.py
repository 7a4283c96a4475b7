"""Turns the user's ``--model`` into something an engine can load.

``tiny`` is the embedded default: a small Llama-architecture model built on
this machine (nothing downloaded). ``trained`` is the same architecture trained
here for a few minutes, for studies that bound quality; ``trained-outliers`` is
that model with keys and values scaled past FP8 e4m3's range (same logits in bf16),
so that an unscaled FP8 KV cache visibly hurts it. ``shape:<name>`` is a published
architecture with random weights (``--load-format dummy``), for speed studies
on GPUs without the weights. A local directory is used as is; anything else is
a hub id that the engine itself resolves (autotune fetches nothing).
"""

from __future__ import annotations

from pathlib import Path

from autotune.engines.base import ModelRef, cache_root
from autotune.errors import UserError


def resolve_model(name: str, *, max_model_len: int | None = None) -> ModelRef:
    if name == "tiny":
        from autotune.models.tiny import ensure_tiny_model

        path = ensure_tiny_model()
        return ModelRef(str(path), "tiny", str(path), max_model_len=max_model_len or 512)
    # A tiny model trained here, for quality figures that mean something.
    if name == "trained":
        from autotune.models.trained import MODEL_SHAPE, ensure_trained_model

        path = ensure_trained_model()
        length = max_model_len or MODEL_SHAPE["max_position_embeddings"]
        return ModelRef(str(path), "trained", str(path), max_model_len=length)
    if name == "trained-outliers":  # the same function with keys and values past FP8 e4m3's range
        from autotune.models.outliers import ensure_outlier_model
        from autotune.models.trained import MODEL_SHAPE

        path = ensure_outlier_model()
        length = max_model_len or MODEL_SHAPE["max_position_embeddings"]
        return ModelRef(str(path), "trained-outliers", str(path), max_model_len=length)
    if name.startswith("shape:"):
        from autotune.models.shapes import SHAPES, build_shape_model

        shape = name.removeprefix("shape:")
        if shape not in SHAPES:
            raise UserError(f"unknown model shape {shape!r} (known: {', '.join(sorted(SHAPES))})")
        path = build_shape_model(shape, cache_root() / "shapes" / shape)
        return ModelRef(str(path), shape, str(path), dummy_weights=True, max_model_len=max_model_len)
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise UserError(f"model directory {local} has no config.json")
        return ModelRef(str(local.resolve()), local.name, str(local.resolve()), max_model_len=max_model_len)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(f"model not found: {name} (give 'tiny', 'trained', 'trained-outliers', 'shape:<name>', a local directory or a hub id)")
    return ModelRef(name, name, None, max_model_len=max_model_len)
