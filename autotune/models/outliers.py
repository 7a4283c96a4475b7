"""The trained tiny model with large keys and values: the same function, a harder KV cache.

An FP8 KV cache stores keys and values in 8 bits with a scale per layer. Where
the checkpoint ships no scales, vLLM uses 1.0, so every key and value must fit
the format as it is: e4m3 tops out at 448, e5m2 at 57,344. Large language
models do carry activations far outside the small ones' range (outlier
channels, "massive activations"), which is why FP8 caches are calibrated;
the trained tiny model does not (its keys stay under 5, its values under 3),
so an FP8 cache moves its perplexity by a fraction of a percent and a bound
such as ``ppl<+5%`` has nothing to catch.

This variant multiplies every layer's key projection by ``SCALE`` and its
query projection by ``1/SCALE`` (q·k unchanged), and its value projection by
``SCALE`` and its output projection by ``1/SCALE`` (the attention output
unchanged). ``SCALE`` is a power of two, so in bf16 every weight is scaled
exactly and the unquantized model computes the very same logits as the
trained one: its baseline perplexity is the trained model's. With the cache
in FP8 and no scales, e4m3 saturates the keys and values beyond 448 and the
perplexity breaks a 5% bound; e5m2 still holds them (its range is 128 times
wider) and keeps it. It is built from the trained model in seconds, nothing
downloaded, and cached beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from autotune.models.cache import building, is_complete, model_cli, once

#: Factor on keys and values; a power of two so that bf16 weights scale exactly. Keys reach
#: about 4.7 x 4096 = 19,000 and values 2.3 x 4096 = 9,400: far past e4m3's 448, inside e5m2's 57,344.
SCALE = 4096
NAME_SUFFIX = f"-kv{SCALE}"


def default_model_dir() -> Path:
    from autotune.models.trained import default_model_dir as trained_dir

    base = trained_dir()
    return base.parent / (base.name + NAME_SUFFIX)


def scale_attention(tensors: dict, scale: float) -> dict:
    """q/s, k*s, v*s, o/s in every layer; the rest of the weights as they are."""
    factors = {"q_proj": 1 / scale, "k_proj": scale, "v_proj": scale, "o_proj": 1 / scale}
    out = {}
    for name, tensor in tensors.items():
        parts = name.split(".")
        factor = factors.get(parts[-2]) if len(parts) >= 2 and parts[-1] in ("weight", "bias") else None
        # a bias belongs to the projection's output: scaled with q, k and v, never with o
        if factor is not None and parts[-1] == "bias" and parts[-2] == "o_proj":
            factor = None
        out[name] = tensor * factor if factor is not None else tensor
    return out


def build_outlier_model(source: Path, dest: Path, *, scale: int = SCALE) -> Path:
    """Copies the trained model and rewrites its weights; built in a temporary folder
    and renamed into place, like the models it derives from."""
    import torch
    from safetensors.torch import load_file, save_file

    dest = Path(dest).expanduser().absolute()
    if is_complete(dest):
        return dest
    with building(dest) as tmp:
        for path in Path(source).iterdir():
            if path.is_file() and path.name != "model.safetensors":
                shutil.copy2(path, tmp / path.name)
        tensors = load_file(str(Path(source) / "model.safetensors"))
        scaled = scale_attention(tensors, float(scale))
        for name, tensor in scaled.items():
            if not torch.isfinite(tensor).all():
                raise RuntimeError(f"scaling {name} by {scale} overflowed its dtype")
        save_file({k: v.contiguous() for k, v in scaled.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        recipe_path = tmp / "autotune_recipe.json"
        recipe = json.loads(recipe_path.read_text()) if recipe_path.exists() else {}
        recipe["kv_outlier_scale"] = scale
        recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
    return dest


def ensure_outlier_model() -> Path:
    """The trained model first (built once, shared), then this variant of it."""
    from autotune.models.trained import ensure_trained_model

    dest = default_model_dir()
    if is_complete(dest):
        return dest
    source = ensure_trained_model()
    return once(dest, lambda d: build_outlier_model(source, d))


def main(argv: list[str] | None = None) -> int:
    return model_cli("autotune.models.outliers", ensure_outlier_model, None, argv)


if __name__ == "__main__":
    raise SystemExit(main())
