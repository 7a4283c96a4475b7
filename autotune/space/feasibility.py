"""Will this configuration fit? Answered from ``config.json`` before any GPU time is spent.

A launch that cannot work still costs an engine start (a minute or more, a
whole node on a cluster) before the engine says no. The rules that decide it
are arithmetic on the model's published figures, so they are checked here
first and a configuration that breaks one is pruned with its reason, numbers
included, and never launched:

- the GPUs a configuration asks for (TP x PP x DP) must be given;
- TP must divide the attention heads, and the KV heads must split evenly
  (vLLM: ``kv % TP == 0`` while ``kv >= TP``, else it replicates them and
  needs ``TP % kv == 0``);
- PP may not exceed the layers (vLLM splits uneven layer counts itself, so
  PP need not divide them);
- ``--max-model-len`` may not exceed what the model's config allows;
- per GPU, the heaviest pipeline stage's weights / TP, plus :data:`GPU_RESERVE_GIB`,
  plus the KV cache of one max-model-len sequence must fit
  ``gpu_memory_gib x gpu_memory_utilization`` (vLLM refuses to start when it
  cannot hold one such sequence); on the CPU build, that KV cache must fit the
  KV-cache space and weights + space + :data:`CPU_RESERVE_GIB` the host memory.

The estimate errs toward acceptance: a false "fits" costs one failed launch,
whose reason the engine then gives; a false "does not fit" would hide a good
configuration from the study for ever. What cannot be known (no config.json
found, an unknown quantization, no GPU memory figure) skips that check and
says so in :attr:`Assessment.notes`.

Supported shapes: dense decoders of the Llama / Qwen2 / Mistral family and
Mixtral-style mixtures of experts (every expert counted: all of them sit in
memory). Attention is counted as full attention, an upper bound for models
with sliding windows.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from autotune.space.model_shape import (
    DTYPE_BYTES, GIB, KV_DTYPE_BYTES, QUANTIZATION, ModelShape, WeightFormat,
)

#: Per-GPU memory inside vLLM's ``gpu_memory_utilization`` budget beyond weights
#: and KV cache: the CUDA context ("non-torch" memory) and the activation peak of
#: its profiling run. Measured on an H100 80GB HBM3 with vLLM 0.25.1 and the
#: Llama-3.1-8B shape (2026-11-25; logs in tests/data/engine_logs/vllm_h100_fit_*):
#: budget - weights - KV cache = 1.34 GiB at max-model-len 8192, 1.11-1.33 GiB at
#: 131072. 1.5 GiB covers that, with a little room for TP's all-reduce buffers;
#: CUDA graphs (0.98 GiB there) are captured after the KV cache, outside the budget.
GPU_RESERVE_GIB = 1.5

#: Host memory of a vLLM-CPU server beyond weights and KV-cache space: the
#: interpreter, torch and compiled kernels (a server of the 1.7 MB tiny model
#: holds ~3 GB resident on vLLM-CPU 0.32.0).
CPU_RESERVE_GIB = 3.0

#: vLLM's ``--gpu-memory-utilization`` default (0.92 in 0.25.1 and 0.32.0, the versions used here).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92


@dataclass(frozen=True)
class Deployment:
    """The settings of one launch that decide whether it fits (engine defaults where unset)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str = "auto"
    dtype: str = "auto"
    quantization: str | None = None
    max_model_len: int | None = None
    cpu_kv_cache_gib: float | None = None
    allow_long_max_model_len: bool = False
    # The engine refuses to start unless one max-length sequence fits its KV cache:
    # vLLM always (its default length is the config's), any engine given a length.
    whole_sequence: bool = True

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp


#: Command-line spellings of each setting across engines (vLLM, SGLang, TGI).
_OPTIONS: dict[str, tuple[str, ...]] = {
    "tp": ("--tensor-parallel-size", "-tp", "--tp-size", "--tp", "--num-shard"),
    "pp": ("--pipeline-parallel-size", "-pp", "--pp-size"),
    "dp": ("--data-parallel-size", "-dp", "--dp-size"),
    "gpu_memory_utilization": ("--gpu-memory-utilization", "--mem-fraction-static", "--cuda-memory-fraction"),
    "kv_cache_dtype": ("--kv-cache-dtype",),
    "dtype": ("--dtype",),
    "quantization": ("--quantization", "-q", "--quantize"),
    "max_model_len": ("--max-model-len", "--context-length", "--max-total-tokens"),
}
_INT_FIELDS = {"tp", "pp", "dp", "max_model_len"}


def deployment_from_argv(argv: Iterable[str], env: Mapping[str, str] | None = None) -> Deployment:
    """Reads the settings from the exact argv and environment that would be launched.

    The launched command is the one truth: knobs, ``extra_args`` and launch
    templates all end up in it. Later occurrences win, as with argparse.
    """
    args = list(argv)
    by_option = {opt: name for name, opts in _OPTIONS.items() for opt in opts}
    found: dict[str, Any] = {}
    for i, item in enumerate(args):
        option, eq, value = item.partition("=")
        name = by_option.get(option)
        if name is None:
            continue
        if not eq:
            if i + 1 >= len(args):
                continue
            value = args[i + 1]
        try:
            found[name] = int(value) if name in _INT_FIELDS else (
                float(value) if name == "gpu_memory_utilization" else value
            )
        except ValueError:
            continue  # the engine's own parser will say what is wrong with it
    env = env or {}
    space = env.get("VLLM_CPU_KVCACHE_SPACE")
    if space:
        try:
            found["cpu_kv_cache_gib"] = float(space)
        except ValueError:
            pass
    found["allow_long_max_model_len"] = env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "").lower() in ("1", "true")
    if found.get("max_model_len") == -1:  # vLLM: fit the length to the memory
        found.pop("max_model_len")
        found["whole_sequence"] = False
    else:
        vllm = any("vllm" in a.lower() for a in args) or any(k.startswith("VLLM_") for k in env)
        found["whole_sequence"] = "max_model_len" in found or vllm
    return Deployment(**found)


# -- what is there -------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """The hardware one trial may use. Unknown memory skips the memory checks."""

    device: str = "cuda"
    gpu_count: int = 1
    gpu_memory_gib: float | None = None
    host_memory_gib: float | None = None


def host_memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB
    except (ValueError, OSError, AttributeError):
        return None


# -- the verdict ---------------------------------------------------------------


@dataclass
class Assessment:
    """The verdict and the figures behind it, stored with the trial (the diagnosis reads tp/pp)."""

    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tp: int = 1
    pp: int = 1
    dp: int = 1
    gpus: int = 1
    params: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    layers: int | None = None
    bytes_per_param: float | None = None
    weights_gib: float | None = None
    weights_per_gpu_gib: float | None = None
    kv_bytes_per_token: float | None = None  # whole model, at the chosen KV dtype
    max_model_len: int | None = None
    kv_one_sequence_gib: float | None = None  # per GPU
    reserve_gib: float | None = None
    needed_gib: float | None = None
    budget_gib: float | None = None

    @property
    def feasible(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["feasible"] = self.feasible
        return out


def assess(
    config: Mapping[str, Any] | None, deployment: Deployment, capacity: Capacity
) -> Assessment:
    """Every reason this deployment cannot run, with the figures that decide it."""
    d = deployment
    out = Assessment(tp=d.tp, pp=d.pp, dp=d.dp, gpus=d.gpus)
    gpu = capacity.device == "cuda"
    for name, value in (("TP", d.tp), ("PP", d.pp), ("DP", d.dp)):
        if value < 1:
            out.reasons.append(f"{name} {value} is not a positive size")
    if out.reasons:
        return out
    if gpu and d.gpus > capacity.gpu_count:
        parts = f"TP{d.tp} x PP{d.pp}" + (f" x DP{d.dp}" if d.dp > 1 else "")
        out.reasons.append(f"{parts} = {d.gpus} GPUs > {capacity.gpu_count} given")
    if config is None:
        out.notes.append("no config.json found locally: heads and memory not checked")
        return out
    try:
        shape = ModelShape.from_config(config)
    except (KeyError, TypeError, ValueError) as e:
        out.notes.append(f"config.json lacks {e}: heads and memory not checked")
        return out
    out.heads, out.kv_heads, out.layers = shape.heads, shape.kv_heads, shape.layers
    split = _parallel_reasons(shape, d)
    out.reasons += split + _length_reasons(shape, d)
    if not split:  # no memory figure for a split the engine refuses
        _memory(shape, d, capacity, out)
    return out


def _parallel_reasons(shape: ModelShape, d: Deployment) -> list[str]:
    reasons = []
    if shape.heads % d.tp:
        reasons.append(
            f"TP{d.tp} does not divide the {shape.heads} attention heads (heads % TP must be 0)"
        )
    if shape.kv_heads >= d.tp and shape.kv_heads % d.tp:
        reasons.append(f"TP{d.tp} does not divide the {shape.kv_heads} KV heads (KV heads % TP must be 0)")
    elif shape.kv_heads < d.tp and d.tp % shape.kv_heads:
        reasons.append(
            f"TP{d.tp} is not a multiple of the {shape.kv_heads} KV heads "
            "(with TP > KV heads each KV head is replicated, so TP % KV heads must be 0)"
        )
    if d.pp > shape.layers:
        reasons.append(f"PP{d.pp} > the {shape.layers} layers: a pipeline stage would hold none")
    return reasons


def _length_reasons(shape: ModelShape, d: Deployment) -> list[str]:
    if d.max_model_len is None or shape.max_len is None or d.max_model_len <= shape.max_len:
        return []
    if d.allow_long_max_model_len:
        return []
    if shape.model_max_length and d.max_model_len <= shape.model_max_length:
        return []
    return [
        f"max-model-len {d.max_model_len} > the model's {shape.max_len} (from config.json; "
        "vLLM refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)"
    ]


def _serving_dtype(shape: ModelShape, d: Deployment) -> str:
    dtype = (d.dtype or "auto").lower()
    if dtype == "auto":
        dtype = shape.dtype.lower()
        if dtype in ("float32", "float"):
            dtype = "bfloat16"  # vLLM downcasts float32 checkpoints under "auto"
    return dtype


def _weight_format(shape: ModelShape, d: Deployment) -> tuple[WeightFormat | None, str | None]:
    method = (d.quantization or "").lower() or None
    if method is None or method == shape.quantization:
        return shape.weight_format, shape.quantization
    return QUANTIZATION.get(method), method


def pipeline_stages(layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage, split as vLLM does: the remainder goes to the stages
    before the last (``get_pp_indices``)."""
    parts = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        parts[-i] += 1
    return parts


def _memory(shape: ModelShape, d: Deployment, capacity: Capacity, out: Assessment) -> None:
    dtype = _serving_dtype(shape, d)
    base = DTYPE_BYTES.get(dtype)
    fmt, method = _weight_format(shape, d)
    if base is None:
        out.notes.append(f"unknown dtype {dtype!r}: memory not checked")
        return
    if method is not None and fmt is None:
        out.notes.append(f"unknown quantization {method!r}: memory not checked")
        return
    linear_bytes = fmt.bytes_per_param if fmt else base
    kv_dtype = (d.kv_cache_dtype or "auto").lower()
    kv_bytes = base if kv_dtype == "auto" else KV_DTYPE_BYTES.get(kv_dtype)
    if kv_bytes is None:
        out.notes.append(f"unknown KV-cache dtype {kv_dtype!r}: memory not checked")
        return

    lin, other = shape.layer_params(1)
    embed = shape.vocab * shape.hidden
    outside_layers = embed * (1 if shape.tied else 2) + shape.hidden  # embeddings, LM head, final norm
    total = shape.layers * (lin * linear_bytes + other * base) + outside_layers * base
    out.params = shape.params()
    out.bytes_per_param = total / out.params
    out.weights_gib = total / GIB

    stages = pipeline_stages(shape.layers, d.pp)
    lin_g, other_g = shape.layer_params(d.tp)
    layer_bytes = lin_g * linear_bytes + other_g * base
    embed_g = math.ceil(shape.vocab / d.tp) * shape.hidden * base
    per_stage = []
    for i, n in enumerate(stages):
        b = n * layer_bytes
        if i == 0:
            b += embed_g
        if i == len(stages) - 1:  # the LM head (a copy of a tied embedding once PP > 1) and final norm
            b += (embed_g if (not shape.tied or d.pp > 1) else 0) + shape.hidden * base
        per_stage.append(b)
    out.weights_per_gpu_gib = max(per_stage) / GIB
    out.kv_bytes_per_token = shape.kv_bytes_per_token(kv_bytes)
    max_len = (d.max_model_len or shape.max_len) if d.whole_sequence else None
    out.max_model_len = max_len
    kv_per_gpu_token = shape.kv_bytes_per_token(kv_bytes, tp=d.tp, layers=max(stages))
    kv_seq = kv_per_gpu_token * max_len / GIB if max_len else 0.0
    out.kv_one_sequence_gib = kv_seq
    if not d.whole_sequence:
        out.notes.append("the engine is given no context length to hold: its KV cache is not counted")
    elif max_len is None:
        out.notes.append("no max-model-len known: the KV cache of one sequence is not counted")

    split = f"TP{d.tp}" if d.pp == 1 else f"(TP{d.tp} x PP{d.pp}, heaviest stage)"
    weights_text = f"weights {out.weights_gib:.1f} GiB / {split} = {out.weights_per_gpu_gib:.1f} GiB"
    kv_text = f"KV for 1x{max_len} tokens {kv_seq:.1f} GiB"
    kv_term = f" + {kv_text}" if max_len else ""

    if capacity.device == "cuda":
        out.reserve_gib = GPU_RESERVE_GIB
        if capacity.gpu_memory_gib is None:
            out.notes.append("GPU memory unknown (set hardware.gpu_memory_gib): memory not checked")
            return
        util = d.gpu_memory_utilization if d.gpu_memory_utilization is not None else DEFAULT_GPU_MEMORY_UTILIZATION
        budget = capacity.gpu_memory_gib * util
        need = out.weights_per_gpu_gib + GPU_RESERVE_GIB + kv_seq
        out.needed_gib, out.budget_gib = need, budget
        if need > budget:
            out.reasons.append(
                f"{weights_text} + reserve {GPU_RESERVE_GIB:.1f} GiB{kv_term} = {need:.1f} GiB "
                f"> {budget:.1f} GiB ({util:.2f} x {capacity.gpu_memory_gib:g} GiB) per GPU"
            )
        return

    # The CPU build: its KV cache is a fixed space, and everything lives in host memory.
    out.reserve_gib = CPU_RESERVE_GIB
    space = d.cpu_kv_cache_gib
    if max_len and space is not None and kv_seq > space:
        out.reasons.append(f"{kv_text} > the CPU KV-cache space {space:g} GiB")
    host = capacity.host_memory_gib
    if host is None:
        out.notes.append("host memory unknown: memory not checked")
        return
    need = out.weights_gib + (space or 0.0) + CPU_RESERVE_GIB
    out.needed_gib, out.budget_gib = need, host
    if need > host:
        out.reasons.append(
            f"weights {out.weights_gib:.1f} GiB + KV-cache space {space or 0:g} GiB + reserve "
            f"{CPU_RESERVE_GIB:.1f} GiB = {need:.1f} GiB > {host:.1f} GiB host memory"
        )


_PARALLEL_KNOBS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


def gpus_per_engine(config: Mapping[str, Any]) -> int | None:
    """GPUs one engine occupies by its parallel knobs (TP x PP x DP); None when the config sets none.

    Data-parallel replicas occupy GPUs of their own, so they count: cost and
    telemetry must watch every GPU the engine holds.
    """
    sizes = []
    for knob in _PARALLEL_KNOBS:
        value = config.get(knob)
        if value is None:
            continue
        try:
            sizes.append(int(value))
        except (TypeError, ValueError):
            return None
    return math.prod(sizes) if sizes else None
