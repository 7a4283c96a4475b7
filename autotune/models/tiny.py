"""A tiny Llama model built on the machine, so studies and tests need no model hub.

The tuner measures a real engine under load; what it measures is how the engine
schedules, batches and caches, not what the model says. A 2-layer Llama with
random weights exercises the same code paths as a real one at a fraction of the
cost, and building it locally keeps CI offline and reproducible.

Run ``python -m autotune.models.tiny [DEST]`` to build one and print its path.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.models.cache import building, cache_root, is_complete, model_cli, once

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"

#: Enough text for a 2K vocabulary, little enough to train in about a second on 2 cores.
TRAINING_TEXT_CHARS = 4_000_000

#: Plain role-tagged turns: the model is random, the template only has to render.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_MODEL_SHAPE: dict[str, int] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
}


def default_model_dir() -> Path:
    return cache_root() / "models" / "tiny-llama"


def _training_text(max_chars: int = TRAINING_TEXT_CHARS) -> Iterator[str]:
    """Stdlib sources are on every Python install, so no corpus has to be fetched.

    Files are read in sorted order and capped, so the same interpreter gives the
    same text (and the same vocabulary); a different Python version may differ.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(stdlib.rglob("*.py")) if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return read_texts(files, max_chars)


def read_texts(paths: Iterable[Path], max_chars: int) -> Iterator[str]:
    """The files' texts until ``max_chars``; invalid UTF-8 is dropped because the trainer stops on it."""
    total = 0
    for path in paths:
        try:
            text = path.read_bytes().decode("utf-8", errors="ignore")
        except OSError:
            continue
        if not text:
            continue
        yield text
        total += len(text)
        if total >= max_chars:
            return


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    return train_bpe_tokenizer(_training_text(), vocab_size)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE never meets an unknown character, so any prompt tokenizes.

    Like Llama, prompts start with BOS, which the engine counts as a prompt token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN, EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    bos_id = _token_id(tokenizer, BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    """The trainer puts special tokens first; a missing one would silently break EOS."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise RuntimeError(f"tokenizer has no {token!r}")
    return token_id


def _write_model(tmp: Path, *, seed: int, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> None:
    """Weights come from our own seeded generator, not transformers' init, so they
    stay the same across transformers versions."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        **_MODEL_SHAPE,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                values = torch.empty(param.shape, dtype=torch.float32)
                values.normal_(mean=0.0, std=0.02, generator=generator)
                param.copy_(values)
    # save_pretrained records the parameters' dtype in config.json ("dtype"/"torch_dtype").
    model = model.to(torch.bfloat16)
    _quiet_transformers()
    model.save_pretrained(tmp, safe_serialization=True)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id).save_pretrained(tmp)


def write_tokenizer(tmp: Path, tokenizer: Tokenizer, max_length: int) -> None:
    """Written by hand rather than via save_pretrained, so the files do not depend
    on the transformers version and the chat template sits in tokenizer_config.json."""
    tokenizer.save(str(tmp / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def build_tiny_model(dest: Path, *, seed: int = 0, vocab_size: int = 2048) -> Path:
    """Build into a temporary folder beside ``dest`` and rename it into place, so a
    killed build never leaves a half model that an engine would try to load."""
    dest = Path(dest).expanduser().absolute()
    if is_complete(dest):
        return dest
    with building(dest) as tmp:
        tokenizer = _train_tokenizer(vocab_size)
        ids = {tok: _token_id(tokenizer, tok) for tok in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)}
        write_tokenizer(tmp, tokenizer, _MODEL_SHAPE["max_position_embeddings"])
        _write_model(
            tmp,
            seed=seed,
            vocab_size=vocab_size,
            bos_id=ids[BOS_TOKEN],
            eos_id=ids[EOS_TOKEN],
            pad_id=ids[PAD_TOKEN],
        )
    return dest


def ensure_tiny_model() -> Path:
    return once(default_model_dir(), build_tiny_model)


def main(argv: list[str] | None = None) -> int:
    return model_cli("autotune.models.tiny", ensure_tiny_model, build_tiny_model, argv)


def _quiet_transformers() -> None:
    """No progress bars on stderr: a command's output must stay one line on error."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
