"""The published figures of real public models: each ``config.json``, and the special tokens of its tokenizer.

Written out from the checkpoints' published configurations (nothing is downloaded);
``autotune.models.shapes`` builds servable folders from them.
"""

from __future__ import annotations

__all__ = ["SHAPES", "TOKENS"]

_LLAMA31_ROPE_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def _llama31(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": dict(_LLAMA31_ROPE_SCALING),
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.0.dev0",
        "use_cache": True,
        "vocab_size": 128256,
    }


#: name -> config.json dict (published figures of the Instruct checkpoints,
#: Mixtral's of Mixtral-8x7B-v0.1).
SHAPES: dict[str, dict] = {
    "llama-3.1-8b": _llama31(hidden=4096, layers=32, heads=32, intermediate=14336),
    "llama-3.1-70b": _llama31(hidden=8192, layers=80, heads=64, intermediate=28672),
    # SmolLM2-135M (base): small enough for a 2-core CPU, big enough that a decode
    # step costs more than the server's own per-token work, so batch limits matter.
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 576,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 100000,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_cache": True,
        "vocab_size": 49152,
    },
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": 3584,
        "initializer_range": 0.02,
        "intermediate_size": 18944,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "model_type": "qwen2",
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 152064,
    },
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mixtral",
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.36.0.dev0",
        "use_cache": True,
        "vocab_size": 32000,
    },
}

# Tokenizer facts per shape: special tokens at their real ids, what BOS/EOS the
# tokenizer uses, and the published generation_config.json sampling defaults.
#
# Two tokenizer kinds:
#  - "word": a word-level model; token i is "w<i>" except the special tokens and
#    the unknown-word token ("unk", a slot the real tokenizer leaves unused or names
#    <unk>); a whitespace pre-tokenizer splits words.
#  - "qwen-bpe": transformers >= 5 rebuilds any qwen2 tokenizer as Qwen2Tokenizer
#    (byte-level BPE, Qwen's split regex) from tokenizer.json's vocab and merges,
#    whatever tokenizer_class says, so a word-level model would encode to nothing.
#    So Qwen gets a byte-level BPE built for that exact pipeline: the 256 byte
#    symbols, then "Ġ"+letters words ("Ġa".."Ġzz", ...) each one merge from its
#    prefix, so " abc" is one token and the rebuild is the same tokenizer.
_LLAMA31_TOKENS = {
    "kind": "word",
    "special": {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|eom_id|>",
        128009: "<|eot_id|>",
    },
    "unk": (128002, "<|reserved_special_token_0|>"),
    "bos": 128000,
    "eos": 128009,
    "pad": None,
    "tokenizer_class": "PreTrainedTokenizerFast",
    "generation": {"do_sample": True, "temperature": 0.6, "top_p": 0.9},
}

TOKENS: dict[str, dict] = {
    "llama-3.1-8b": _LLAMA31_TOKENS,
    "llama-3.1-70b": _LLAMA31_TOKENS,
    "smollm2-135m": {
        "kind": "word",
        "special": {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"},
        "unk": (3, "unk"),  # a slot: ids 3-16 are the real tokenizer's code-metadata tokens
        # a plain word, so that text of unknown words decodes to "unk unk ..." (one token each) rather than
        # to nothing: load generators that cut corpus text to a token count (GuideLLM) need text back
        "unk_special": False,
        "bos": 0,
        "eos": 0,
        "pad": None,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "generation": {},
    },
    "qwen2.5-7b": {
        "kind": "qwen-bpe",
        "special": {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"},
        "unk": None,  # byte-level: every string encodes
        "bos": None,  # Qwen adds no BOS
        "eos": 151645,
        "pad": 151643,
        "tokenizer_class": "Qwen2Tokenizer",
        "generation": {
            "do_sample": True,
            "repetition_penalty": 1.05,
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
            "pad_token_id": 151643,
            "eos_token_id": [151645, 151643],
        },
    },
    "mixtral-8x7b": {
        "kind": "word",
        "special": {1: "<s>", 2: "</s>"},
        "unk": (0, "<unk>"),
        "bos": 1,
        "eos": 2,
        "pad": None,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "generation": {},
    },
}

