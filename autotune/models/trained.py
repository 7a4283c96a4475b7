"""A tiny Llama model trained on this machine, so that quality figures mean something.

Random weights give a perplexity near the vocabulary size whatever the engine
does to them, so a perplexity bound cannot tell a harmful setting from a
harmless one. This model learns from the Python standard library found on the
machine (PSF licence) for a few minutes on the CPU, and from synthetic
pass-key documents mixed in, so that long-context retrieval has something to
retrieve. Two standard-library modules are held out: autotune measures
perplexity on them (``autotune/data/corpus``).

The build is seeded and runs a fixed number of steps, then is cached under
``$AUTOTUNE_CACHE/models`` (or ``~/.cache/autotune/models``) and reused;
``python -m autotune.models.trained [DEST]`` builds it and prints its path.
It saturates the CPU for a few minutes: on a shared machine run it under the
same lock as the engines.
"""

from __future__ import annotations

import json
import math
import random
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.models.cache import building, cache_root, is_complete, model_cli, once
from autotune.models.tiny import (
    BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, _token_id, read_texts, train_bpe_tokenizer, write_tokenizer,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: Bumped whenever the recipe changes, so a cached older build is not mistaken for this one.
RECIPE_VERSION = 2
NAME = f"trained-llama-v{RECIPE_VERSION}"

#: Modules perplexity is measured on (shipped in autotune/data/corpus); never trained on.
HELD_OUT = frozenset({"textwrap.py", "heapq.py"})

VOCAB_SIZE = 2048
#: head_dim 32: the CPU build's FP8 KV cache needs a head size divisible by 32.
MODEL_SHAPE: dict[str, int] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
}

#: (steps, sequence length, batch): most steps at 512 tokens, the last at 1024 so that
#: positions up to 1024 are seen. About 1.1M tokens: 2.5-4 minutes on 2 idle cores with
#: AMX (bf16 autocast, 0.5-0.8 s a step), which is what a test suite can afford once.
SCHEDULE: tuple[tuple[int, int, int], ...] = ((200, 512, 8), (60, 1024, 4))
PEAK_LR = 3e-3
WARMUP_STEPS = 20
#: Share of training rows made of pass-key documents.
PASSKEY_SHARE = 0.3
TOKENIZER_TEXT_CHARS = 4_000_000
TRAINING_TEXT_CHARS = 3_000_000


def default_model_dir() -> Path:
    return cache_root() / "models" / NAME


def _training_files(seed: int) -> list[Path]:
    """Standard-library sources in a seeded order, so text from all over the library is
    seen, not just the modules whose names sort first; tests and held-out files left out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if rel[0] in ("site-packages", "dist-packages", "test", "idlelib", "lib2to3") or "tests" in rel:
            continue
        if len(rel) == 1 and rel[0] in HELD_OUT:
            continue
        files.append(path)
    random.Random(seed).shuffle(files)
    return files


def _training_text(seed: int, max_chars: int) -> Iterator[str]:
    return read_texts(_training_files(seed), max_chars)


def _train_tokenizer(seed: int) -> Tokenizer:
    """Byte-level BPE like the tiny model's, learnt from the training text only."""
    return train_bpe_tokenizer(_training_text(seed, TOKENIZER_TEXT_CHARS), VOCAB_SIZE)


class _Rows:
    """Training rows: documents (each BOS + text + EOS) packed end to end, with a seeded
    share of rows made of pass-key documents of random lengths and depths instead."""

    def __init__(self, tokenizer: Tokenizer, seed: int) -> None:
        from autotune.quality import PasskeyBuilder

        self.rng = random.Random(seed)
        self.bos = _token_id(tokenizer, BOS_TOKEN)
        self.eos = _token_id(tokenizer, EOS_TOKEN)
        self.passkeys = PasskeyBuilder(tokenizer, self.bos)
        stream: list[int] = []
        for text in _training_text(seed, TRAINING_TEXT_CHARS):
            stream += [self.bos, *tokenizer.encode(text, add_special_tokens=False).ids, self.eos]
        self.stream = stream
        self.pos = 0

    def row(self, length: int) -> list[int]:
        if self.rng.random() < PASSKEY_SHARE:
            return self._passkey_row(length)
        if self.pos + length > len(self.stream):
            self.pos = 0
        out = self.stream[self.pos : self.pos + length]
        self.pos += length
        return out

    def _passkey_row(self, length: int) -> list[int]:
        out: list[int] = []
        while len(out) < length:
            doc_len = self.rng.randint(96, length)
            key = self.passkeys.random_key(self.rng)
            prompt, answer = self.passkeys.prompt(doc_len, self.rng.random(), key)
            out += prompt + answer + [self.eos]
        return out[:length]


def _lr(step: int, total: int) -> float:
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)
    return PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _native_bf16() -> bool:
    """Whether the CPU computes bf16 itself (AMX, AVX-512 BF16). There bf16 autocast is several
    times faster than float32; elsewhere it is emulated and several times slower (10.5 s against
    1.5 s a step of 8 x 512 tokens on a 2-core AVX2-only AMD EPYC)."""
    from autotune.environment import cpu_flags

    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def _train(tokenizer: Tokenizer, seed: int, log: Any) -> Any:
    """bf16 autocast where the CPU computes bf16 natively, float32 elsewhere."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    ids = {tok: _token_id(tokenizer, tok) for tok in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)}
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        **MODEL_SHAPE,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
    )
    model = LlamaForCausalLM(config)
    model.train()
    rows = _Rows(tokenizer, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.01)
    total = sum(steps for steps, _, _ in SCHEDULE)
    step, t0 = 0, time.monotonic()
    bf16 = _native_bf16()
    for steps, seq_len, batch in SCHEDULE:
        for _ in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, total)
            x = torch.tensor([rows.row(seq_len) for _ in range(batch)], dtype=torch.long)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 20 == 0 or step == total:
                log(f"step {step}/{total} seq {seq_len} loss {loss.item():.3f} ({time.monotonic() - t0:.0f}s)")
    model.eval()
    return model


def build_trained_model(dest: Path, *, seed: int = 0, log: Any = None) -> Path:
    """Built in a temporary folder and renamed into place, like the tiny model."""
    import torch
    from transformers import GenerationConfig

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    dest = Path(dest).expanduser().absolute()
    if is_complete(dest):
        return dest
    with building(dest) as tmp:
        t0 = time.monotonic()
        tokenizer = _train_tokenizer(seed)
        say(f"tokenizer trained ({time.monotonic() - t0:.0f}s)")
        model = _train(tokenizer, seed, say)
        model = model.to(torch.bfloat16)  # served in bf16; config.json records it
        from autotune.models.tiny import _quiet_transformers

        _quiet_transformers()
        model.save_pretrained(tmp, safe_serialization=True)
        cfg = model.config
        GenerationConfig(
            bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id
        ).save_pretrained(tmp)
        write_tokenizer(tmp, tokenizer, MODEL_SHAPE["max_position_embeddings"])
        recipe = {
            "recipe_version": RECIPE_VERSION,
            "seed": seed,
            "schedule": [list(s) for s in SCHEDULE],
            "held_out": sorted(HELD_OUT),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "build_s": round(time.monotonic() - t0, 1),
        }
        (tmp / "autotune_recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return dest


def ensure_trained_model() -> Path:
    return once(default_model_dir(), build_trained_model)


def main(argv: list[str] | None = None) -> int:
    return model_cli("autotune.models.trained", ensure_trained_model, build_trained_model, argv)


if __name__ == "__main__":
    raise SystemExit(main())
