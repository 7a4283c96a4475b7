"""A model as feasibility sees it: its shape, dtypes and weight formats, read from ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

GIB = 2**30

DTYPE_BYTES = {
    "float32": 4.0, "float": 4.0,
    "bfloat16": 2.0, "float16": 2.0, "half": 2.0, "bf16": 2.0, "fp16": 2.0,
}

#: Bytes per element of the KV cache by ``--kv-cache-dtype`` (scales of the
#: per-token-head and fp4 formats included). "auto" follows the model dtype.
KV_DTYPE_BYTES = {
    "bfloat16": 2.0, "float16": 2.0,
    "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "fp8_inc": 1.0,
    "fp8_per_token_head": 1.0, "int8_per_token_head": 1.0,
    "int4_per_token_head": 0.5, "nvfp4": 0.5 + 1 / 16,
}


@dataclass(frozen=True)
class WeightFormat:
    """How the linear layers' weights are stored; embeddings and norms keep the model dtype."""

    bits: float
    group: int = 0  # weights sharing one scale (0: per tensor or per channel, negligible)
    scale_bytes: float = 0.0  # scale + zero point per group

    @property
    def bytes_per_param(self) -> float:
        return self.bits / 8 + (self.scale_bytes / self.group if self.group > 0 else 0.0)


def _int4(bits: int = 4, group: int = 128) -> WeightFormat:
    # AWQ / GPTQ: an fp16 scale and a packed zero point per group.
    return WeightFormat(bits, group, 2 + bits / 8)


#: Quantization methods (vLLM's ``--quantization`` names and checkpoints'
#: ``quant_method``) and the storage of their linear weights. The group-wise
#: ones are refined from the checkpoint's ``bits`` and ``group_size``.
QUANTIZATION: dict[str, WeightFormat] = {
    "fp8": WeightFormat(8), "fbgemm_fp8": WeightFormat(8), "ptpc_fp8": WeightFormat(8),
    "modelopt": WeightFormat(8), "experts_int8": WeightFormat(8), "int8": WeightFormat(8),
    "w8a8": WeightFormat(8),
    "awq": _int4(), "awq_marlin": _int4(), "gptq": _int4(), "gptq_marlin": _int4(),
    "marlin": _int4(), "gptq_bitblas": _int4(), "auto-round": _int4(),
    "bitsandbytes": WeightFormat(4, 64, 4),  # 4-bit NF4, an fp32 absmax per 64 weights
    "modelopt_fp4": WeightFormat(4, 16, 1), "nvfp4": WeightFormat(4, 16, 1),
}


@dataclass(frozen=True)
class ModelShape:
    """The figures of a decoder that size its memory, read from its config.json."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    experts: int = 0
    tied: bool = False
    dtype: str = "bfloat16"
    max_len: int | None = None  # what the engine derives from the config
    model_max_length: int | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    quantization: str | None = None  # the checkpoint's own quant_method
    weight_format: WeightFormat | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelShape":
        text = dict(config.get("text_config") or {})
        c = {**config, **text}
        hidden = int(c["hidden_size"])
        heads = int(c["num_attention_heads"])
        kv = int(c.get("num_key_value_heads") or heads)
        experts = int(c.get("num_local_experts") or c.get("num_experts") or 0)
        inter = int(c.get("moe_intermediate_size") or c["intermediate_size"]) if experts else int(
            c["intermediate_size"]
        )
        model_type = c.get("model_type")
        qkv_bias = bool(c.get("attention_bias", model_type == "qwen2"))
        quant = c.get("quantization_config") or None
        method, fmt = None, None
        if isinstance(quant, Mapping):
            method = str(quant.get("quant_method") or "").lower() or None
            fmt = _checkpoint_format(method, quant)
        return cls(
            layers=int(c["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=kv,
            head_dim=int(c.get("head_dim") or hidden // heads),
            intermediate=inter,
            vocab=int(c["vocab_size"]),
            experts=experts,
            tied=bool(c.get("tie_word_embeddings", False)),
            dtype=str(c.get("torch_dtype") or c.get("dtype") or "bfloat16").removeprefix("torch."),
            max_len=derived_max_len(c),
            model_max_length=c.get("model_max_length"),
            qkv_bias=qkv_bias,
            o_bias=qkv_bias and model_type != "qwen2",  # Llama's attention_bias biases o_proj too
            mlp_bias=bool(c.get("mlp_bias", False)),
            quantization=method,
            weight_format=fmt,
        )

    # -- parameters ---------------------------------------------------------

    def _attention(self, tp: int) -> tuple[int, int]:
        """Linear weights and biases of one layer's attention on one of ``tp`` GPUs."""
        q = self.heads * self.head_dim // tp
        kv = max(1, self.kv_heads // tp) * self.head_dim  # replicated once TP > KV heads
        linear = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        bias = (q + 2 * kv if self.qkv_bias else 0) + (self.hidden if self.o_bias else 0)
        return linear, bias

    def _mlp(self, tp: int) -> tuple[int, int]:
        inter = self.intermediate / tp
        linear = 3 * self.hidden * inter * max(1, self.experts)
        bias = (3 * inter + self.hidden) * max(1, self.experts) if self.mlp_bias else 0
        router = self.hidden * self.experts  # replicated
        return int(linear), int(bias + router)

    def layer_params(self, tp: int = 1) -> tuple[int, int]:
        """(quantizable linear weights, everything else) of one layer on one of ``tp`` GPUs."""
        a_lin, a_other = self._attention(tp)
        m_lin, m_other = self._mlp(tp)
        return a_lin + m_lin, a_other + m_other + 2 * self.hidden  # two RMSNorms

    def params(self) -> int:
        """Parameters of the whole model (every expert, the LM head unless tied)."""
        lin, other = self.layer_params(1)
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * (lin + other) + self.hidden

    def kv_bytes_per_token(self, kv_bytes: float, tp: int = 1, layers: int | None = None) -> float:
        """K and V of one token: layers x KV heads (per GPU) x head_dim x 2 x bytes."""
        heads = max(1, self.kv_heads // tp)
        return (self.layers if layers is None else layers) * heads * self.head_dim * 2 * kv_bytes


def _checkpoint_format(method: str | None, quant: Mapping[str, Any]) -> WeightFormat | None:
    if method is None:
        return None
    if method == "compressed-tensors":
        groups = quant.get("config_groups") or {}
        weights = [g.get("weights") or {} for g in groups.values() if isinstance(g, Mapping)]
        if not weights or weights[0].get("num_bits") is None:
            return None
        bits = int(weights[0]["num_bits"])
        group = int(weights[0].get("group_size") or 0)
        return WeightFormat(bits, group, 2 + bits / 8) if group > 0 and bits < 8 else WeightFormat(bits)
    base = QUANTIZATION.get(method)
    if base is None:
        return None
    if method == "bitsandbytes" and quant.get("load_in_8bit"):
        return WeightFormat(8)
    if base.group and "bits" in quant:
        bits = int(quant["bits"])
        group = int(quant.get("group_size") or base.group)
        return WeightFormat(bits, group if group > 0 else 0, 2 + bits / 8 if group > 0 else 0.0)
    return base


_MAX_LEN_KEYS = (
    "max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
    "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len",
)
_ROPE_UNSCALED = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


def derived_max_len(config: Mapping[str, Any]) -> int | None:
    """The longest context the engine allows by default: the smallest length key, times the
    RoPE factor of scaling types that do not already count it (vLLM's rule)."""
    lengths = [int(config[k]) for k in _MAX_LEN_KEYS if isinstance(config.get(k), (int, float))]
    if not lengths:
        return None
    length = float(min(lengths))
    rope = config.get("rope_scaling") or config.get("rope_parameters")
    if isinstance(rope, Mapping) and "gemma3" not in str(config.get("model_type")):
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type not in _ROPE_UNSCALED and rope.get("factor"):
            length *= float(rope["factor"])
    return int(length)


# -- what is asked for ---------------------------------------------------------


# -- finding config.json -------------------------------------------------------


def load_model_config(source: str) -> dict[str, Any] | None:
    """The model's config.json from a local folder or the local Hugging Face cache; never downloads."""
    local = Path(source).expanduser()
    path: Path | None = local / "config.json" if local.is_dir() else None
    if path is None and source.count("/") == 1 and not source.startswith((".", "/", "~")):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        cached = try_to_load_from_cache(source, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
