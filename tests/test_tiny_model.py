"""The tiny model stands in for a real one in every engine test, so it must be
reproducible and loadable by the same libraries the engines use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autotune.models import tiny


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0)


def test_folder_is_complete_and_nothing_left_behind(built: Path) -> None:
    names = {p.name for p in built.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    } <= names
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no temp dirs
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["vocab_size"] == 2048
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "chat_template" in json.loads((built / "tokenizer_config.json").read_text())


def test_same_seed_same_model(built: Path, tmp_path: Path) -> None:
    again = tiny.build_tiny_model(tmp_path / "again", seed=0)
    assert (again / "config.json").read_text() == (built / "config.json").read_text()
    vocab = json.loads((built / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((again / "tokenizer.json").read_text())["model"]["vocab"] == vocab
    assert (again / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()


def test_other_seed_other_weights(built: Path, tmp_path: Path) -> None:
    other = tiny.build_tiny_model(tmp_path / "other", seed=1)
    assert (other / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (built / "model.safetensors").read_bytes()


def test_existing_model_is_reused(built: Path) -> None:
    before = (built / "model.safetensors").stat().st_mtime_ns
    assert tiny.build_tiny_model(built, seed=1) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == before


def test_tokenizer_round_trips(built: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    text = "def f(x):\n    return x * 2  # héllo, 世界 🙂\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|assistant|>\n") and "hi" in chat


def test_model_loads_and_gives_logits(built: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(built)
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(torch.tensor([[0, 5, 6, 7]])).logits
    assert logits.shape == (1, 4, 2048)
    assert torch.isfinite(logits).all()


def test_default_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    assert tiny.default_model_dir() == tmp_path / "models" / "tiny-llama"
    monkeypatch.delenv("AUTOTUNE_CACHE")
    assert tiny.default_model_dir() == Path(os.path.expanduser("~/.cache/autotune/models/tiny-llama"))


def test_ensure_reuses_a_finished_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, built: Path) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    dest = tiny.default_model_dir()
    dest.parent.mkdir(parents=True)
    os.symlink(built, dest)
    assert tiny.ensure_tiny_model() == dest
