"""Architecture "shapes" of real public models, servable with random weights.

Each entry of :data:`SHAPES` is the ``config.json`` of a public checkpoint, written
out from its published figures (nothing is downloaded). :func:`build_shape_model`
turns one into a model folder that vLLM serves with ``--load-format dummy``: the
config, a generation config and a word-level tokenizer that covers the whole
vocabulary (tokens ``w0`` .. ``wN`` plus the model's special tokens at their real
ids). The weights are random, so the text is nonsense, but the compute, memory
and KV-cache footprint are those of the real model, which is what tuning needs.

    python -m autotune.models.shapes llama-3.1-8b /tmp/m
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from autotune.models.shape_configs import SHAPES, TOKENS

__all__ = ["SHAPES", "build_shape_model", "param_count"]

_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ message['role'] }} : {{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)

# Qwen2's pre-tokenizer split (as in transformers' Qwen2Tokenizer).
_QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _eos_ids(config: dict) -> list[int]:
    eos = config.get("eos_token_id")
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


def param_count(config: dict) -> int:
    """Parameters implied by a decoder config (dense Llama/Qwen2, Mixtral MoE).

    Counts embeddings, attention (with Qwen2's q/k/v biases), the gated MLP (all
    experts for MoE, plus the router), the RMSNorms and an untied LM head.
    """
    h = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    n_heads = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    head_dim = int(config.get("head_dim") or h // n_heads)
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])

    q_dim, kv_dim = n_heads * head_dim, n_kv * head_dim
    attn = h * q_dim + 2 * h * kv_dim + q_dim * h
    qkv_bias = config.get("attention_bias", config.get("model_type") == "qwen2")
    if qkv_bias:
        attn += q_dim + 2 * kv_dim
        if config.get("model_type") != "qwen2":  # Llama's attention_bias also biases o_proj
            attn += h
    mlp_one = 3 * h * inter + (3 * inter + h if config.get("mlp_bias") else 0)
    n_experts = int(config.get("num_local_experts") or 0)
    mlp = n_experts * mlp_one + h * n_experts if n_experts else mlp_one
    per_layer = attn + mlp + 2 * h  # input + post-attention RMSNorm

    total = vocab * h + layers * per_layer + h  # embeddings, layers, final norm
    if not config.get("tie_word_embeddings", False):
        total += vocab * h
    return total


def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable-character table, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _letter_words(n: int) -> list[str]:
    """First n lowercase strings in length-then-alphabetical order (prefix-closed)."""
    out: list[str] = []
    level = [""]
    while len(out) < n:
        level = [w + c for w in level for c in "abcdefghijklmnopqrstuvwxyz"]
        out.extend(level[: n - len(out)])
    return out


def _special_added_tokens(tokens: dict) -> list:
    from tokenizers import AddedToken

    names = dict(tokens["special"])
    if tokens["unk"] is not None and tokens.get("unk_special", True):
        names[tokens["unk"][0]] = tokens["unk"][1]
    return [AddedToken(names[i], special=True, normalized=False) for i in sorted(names)]


def _word_tokenizer(vocab_size: int, tokens: dict):
    from tokenizers import Tokenizer, models, pre_tokenizers

    unk_id, unk = tokens["unk"]
    names = {i: f"w{i}" for i in range(vocab_size)}
    names.update(tokens["special"])
    names[unk_id] = unk
    vocab = {tok: i for i, tok in names.items()}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bos_id = tokens["bos"]
    if bos_id is not None:  # prepend BOS on encode, as the real Llama/Mixtral tokenizers do
        from tokenizers import processors

        bos = tokens["special"][bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    return tok


def _qwen_bpe_tokenizer(vocab_size: int, tokens: dict):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    free = [i for i in range(vocab_size) if i not in tokens["special"]]
    symbols = _byte_symbols()
    space = symbols[ord(" ")]
    words = [space + w for w in _letter_words(len(free) - len(symbols))]
    names = dict(zip(free, symbols + words))
    names.update(tokens["special"])
    vocab = {tok: i for i, tok in names.items()}
    merges = [(w[:-1], w[-1]) for w in words]  # "Ġab" = "Ġa" + "b"; prefixes come first
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _tokenizer_json(config: dict, tokens: dict) -> str:
    vocab_size = int(config["vocab_size"])
    build = _qwen_bpe_tokenizer if tokens["kind"] == "qwen-bpe" else _word_tokenizer
    tok = build(vocab_size, tokens)
    tok.add_special_tokens(_special_added_tokens(tokens))
    if tok.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise AssertionError("tokenizer does not cover exactly vocab_size ids")
    return tok.to_str()


def _token_names(tokens: dict) -> dict[str, str | None]:
    def name(i):
        return None if i is None else tokens["special"][i]

    return {
        "bos_token": name(tokens["bos"]),
        "eos_token": name(tokens["eos"]),
        "unk_token": tokens["unk"][1] if tokens["unk"] is not None and tokens.get("unk_special", True) else None,
        "pad_token": name(tokens["pad"]),
    }


def _tokenizer_config(config: dict, tokens: dict) -> dict:
    specials = dict(tokens["special"])
    if tokens["unk"] is not None and tokens.get("unk_special", True):
        specials[tokens["unk"][0]] = tokens["unk"][1]
    decoder = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True}
               for i, s in sorted(specials.items())}
    return {
        "tokenizer_class": tokens["tokenizer_class"],
        **_token_names(tokens),
        "add_bos_token": tokens["bos"] is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(config["max_position_embeddings"]),
        "added_tokens_decoder": decoder,
        "chat_template": _CHAT_TEMPLATE,
    }


def _generation_config(config: dict, tokens: dict) -> dict:
    gen: dict = {}
    if config.get("bos_token_id") is not None:
        gen["bos_token_id"] = config["bos_token_id"]
    eos = _eos_ids(config)
    if eos:
        gen["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    gen.update(tokens["generation"])
    return gen


def _files(name: str, max_position_embeddings: int | None) -> dict[str, str]:
    config = copy.deepcopy(SHAPES[name])
    if max_position_embeddings is not None:
        if max_position_embeddings <= 0:
            raise ValueError("max_position_embeddings must be positive")
        config["max_position_embeddings"] = int(max_position_embeddings)
    tokens = TOKENS[name]

    def dump(obj) -> str:
        return json.dumps(obj, indent=2) + "\n"

    return {
        "config.json": dump(config),
        "generation_config.json": dump(_generation_config(config, tokens)),
        "tokenizer.json": _tokenizer_json(config, tokens),
        "tokenizer_config.json": dump(_tokenizer_config(config, tokens)),
        "special_tokens_map.json": dump({k: v for k, v in _token_names(tokens).items() if v}),
    }


def build_shape_model(name: str, dest: Path, *, max_position_embeddings: int | None = None) -> Path:
    """Write model folder ``dest`` for shape ``name``; return ``dest``.

    Atomic (built in a sibling temp folder, then renamed into place) and
    idempotent: if ``dest`` already holds exactly these files, it is left alone;
    if it holds something else, it is replaced.
    ``max_position_embeddings`` overrides the config's (e.g. to cap context).
    """
    if name not in SHAPES:
        raise KeyError(f"unknown shape {name!r}; known: {', '.join(sorted(SHAPES))}")
    dest = Path(dest)
    files = _files(name, max_position_embeddings)
    if dest.is_dir() and all(
        (dest / f).is_file() and (dest / f).read_text(encoding="utf-8") == text
        for f, text in files.items()
    ):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for f, text in files.items():
            (tmp / f).write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)
        if dest.exists() or dest.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.rename(dest, old / "x")
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m autotune.models.shapes",
                                description="Write a servable (dummy-weight) model folder for a shape.")
    p.add_argument("name", choices=sorted(SHAPES))
    p.add_argument("dest", type=Path)
    p.add_argument("--max-position-embeddings", type=int, default=None)
    a = p.parse_args(argv)
    out = build_shape_model(a.name, a.dest, max_position_embeddings=a.max_position_embeddings)
    print(f"{out} ({a.name}, {param_count(json.loads((out / 'config.json').read_text())) / 1e9:.2f}B params)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
