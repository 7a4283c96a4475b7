"""Shapes of public models: config figures, parameter counts and a whole-vocabulary tokenizer."""

from __future__ import annotations

import json
import random

import pytest

from autotune.models.shapes import SHAPES, build_shape_model, main, param_count

tokenizers = pytest.importorskip("tokenizers")

# Published parameter counts (billions), to the precision the figures give.
EXPECTED_PARAMS = {
    "llama-3.1-8b": 8.03,
    "llama-3.1-70b": 70.55,
    "qwen2.5-7b": 7.62,
    "mixtral-8x7b": 46.70,
    "smollm2-135m": 0.13,  # 134.5 M
}

FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json"}


def test_known_shapes():
    assert set(SHAPES) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_count(name):
    assert param_count(SHAPES[name]) / 1e9 == pytest.approx(EXPECTED_PARAMS[name], abs=0.005)


def test_llama_8b_exact_count():
    # 2*V*H + L*(attn + 3*H*I + 2*H) + H
    h, v, layers, inter, kv = 4096, 128256, 32, 14336, 1024
    attn = 2 * h * h + 2 * h * kv
    assert param_count(SHAPES["llama-3.1-8b"]) == 2 * v * h + layers * (attn + 3 * h * inter + 2 * h) + h


def test_mixtral_active_vs_total():
    cfg = SHAPES["mixtral-8x7b"]
    dense = dict(cfg, num_local_experts=0)
    # 8 experts of ~176M each per layer make the difference, plus the router.
    per_expert = 3 * cfg["hidden_size"] * cfg["intermediate_size"]
    diff = param_count(cfg) - param_count(dense)
    assert diff == cfg["num_hidden_layers"] * (7 * per_expert + cfg["hidden_size"] * 8)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_build_writes_config(tmp_path, name):
    dest = build_shape_model(name, tmp_path / name)
    assert dest == tmp_path / name
    assert {p.name for p in dest.iterdir()} == FILES
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg == SHAPES[name]
    gen = json.loads((dest / "generation_config.json").read_text())
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    gen_eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert set(eos) <= set(gen_eos)


def test_llama_8b_figures(tmp_path):
    cfg = json.loads((build_shape_model("llama-3.1-8b", tmp_path / "m") / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]) == \
        (4096, 32, 32, 8, 14336, 128256)
    assert cfg["max_position_embeddings"] == 131072
    assert cfg["rope_theta"] == 500000.0
    assert cfg["rope_scaling"] == {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["torch_dtype"] == "bfloat16"
    assert cfg["bos_token_id"] == 128000 and {128001, 128009} <= set(cfg["eos_token_id"])


def test_other_figures():
    big = SHAPES["llama-3.1-70b"]
    assert (big["hidden_size"], big["num_hidden_layers"], big["num_attention_heads"],
            big["num_key_value_heads"], big["intermediate_size"]) == (8192, 80, 64, 8, 28672)
    assert big["rope_scaling"] == SHAPES["llama-3.1-8b"]["rope_scaling"]
    qwen = SHAPES["qwen2.5-7b"]
    assert qwen["architectures"] == ["Qwen2ForCausalLM"]
    assert (qwen["hidden_size"], qwen["num_hidden_layers"], qwen["num_attention_heads"],
            qwen["num_key_value_heads"], qwen["intermediate_size"], qwen["vocab_size"],
            qwen["max_position_embeddings"], qwen["rope_theta"]) == \
        (3584, 28, 28, 4, 18944, 152064, 32768, 1e6)
    assert qwen["tie_word_embeddings"] is False and qwen["use_sliding_window"] is False
    mix = SHAPES["mixtral-8x7b"]
    assert mix["architectures"] == ["MixtralForCausalLM"]
    assert (mix["num_local_experts"], mix["num_experts_per_tok"], mix["vocab_size"],
            mix["max_position_embeddings"], mix["rope_theta"]) == (8, 2, 32000, 32768, 1e6)


def test_shapes_not_mutated_by_override(tmp_path):
    dest = build_shape_model("llama-3.1-8b", tmp_path / "m", max_position_embeddings=4096)
    assert json.loads((dest / "config.json").read_text())["max_position_embeddings"] == 4096
    assert json.loads((dest / "tokenizer_config.json").read_text())["model_max_length"] == 4096
    assert SHAPES["llama-3.1-8b"]["max_position_embeddings"] == 131072


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_tokenizer_covers_vocab(tmp_path, name):
    dest = build_shape_model(name, tmp_path / "m")
    cfg = SHAPES[name]
    tok = tokenizers.Tokenizer.from_file(str(dest / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    assert tok.get_vocab_size(with_added_tokens=True) == cfg["vocab_size"]
    assert sorted(vocab.values()) == list(range(cfg["vocab_size"]))
    tcfg = json.loads((dest / "tokenizer_config.json").read_text())
    assert "chat_template" in tcfg
    # BOS/EOS names sit at the config's ids
    if cfg.get("bos_token_id") is not None and tcfg["bos_token"]:
        assert vocab[tcfg["bos_token"]] == cfg["bos_token_id"]
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    assert vocab[tcfg["eos_token"]] in eos
    # Random ordinary ids decode to text that encodes back to the same ids (ids
    # under 256 are single bytes in Qwen's byte-level vocabulary: not text alone).
    special = {vocab[t["content"]] for t in tcfg["added_tokens_decoder"].values()}
    rng = random.Random(0)
    ids = [i for i in (rng.randrange(256, cfg["vocab_size"]) for _ in range(600)) if i not in special][:500]
    text = tok.decode(ids)
    assert tok.encode(text, add_special_tokens=False).ids == ids
    # The highest id is reachable too.
    top = cfg["vocab_size"] - 1
    if top not in special:
        assert tok.encode(tok.decode([top]), add_special_tokens=False).ids == [top]


def test_word_tokenizer_encodes_words_and_bos(tmp_path):
    dest = build_shape_model("llama-3.1-8b", tmp_path / "m")
    tok = tokenizers.Tokenizer.from_file(str(dest / "tokenizer.json"))
    enc = tok.encode("w5 w17 w128255")
    assert enc.ids == [128000, 5, 17, 128255]
    assert tok.decode(enc.ids) == "w5 w17 w128255"
    assert tok.encode("zzz", add_special_tokens=False).ids == [128002]  # unknown word


def test_qwen_tokenizer_is_byte_level(tmp_path):
    dest = build_shape_model("qwen2.5-7b", tmp_path / "m")
    tok = tokenizers.Tokenizer.from_file(str(dest / "tokenizer.json"))
    text = "Hello, wörld 42 <|im_end|>"
    enc = tok.encode(text, add_special_tokens=False)
    assert enc.ids[-1] == 151645
    assert tok.decode(enc.ids, skip_special_tokens=False) == text
    assert len(tok.encode(" abc", add_special_tokens=False).ids) == 1


def test_idempotent_and_replaces(tmp_path):
    dest = tmp_path / "m"
    build_shape_model("mixtral-8x7b", dest)
    mtime = (dest / "tokenizer.json").stat().st_mtime_ns
    build_shape_model("mixtral-8x7b", dest)
    assert (dest / "tokenizer.json").stat().st_mtime_ns == mtime  # untouched
    (dest / "stray.txt").write_text("x")
    build_shape_model("llama-3.1-8b", dest)  # different shape: replaced wholesale
    assert json.loads((dest / "config.json").read_text())["vocab_size"] == 128256
    assert {p.name for p in dest.iterdir()} == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_unknown_shape(tmp_path):
    with pytest.raises(KeyError, match="llama-3.1-8b"):
        build_shape_model("gpt-5", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_cli(tmp_path, capsys):
    assert main(["qwen2.5-7b", str(tmp_path / "q"), "--max-position-embeddings", "8192"]) == 0
    assert "7.62B" in capsys.readouterr().out
    assert json.loads((tmp_path / "q" / "config.json").read_text())["max_position_embeddings"] == 8192


def test_transformers_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    for name in ("llama-3.1-8b", "qwen2.5-7b"):
        dest = build_shape_model(name, tmp_path / name)
        tok = transformers.AutoTokenizer.from_pretrained(str(dest))
        assert len(tok) == SHAPES[name]["vocab_size"]
        ids = tok.encode(tok.decode([1000, 2000, 3000]), add_special_tokens=False)
        assert ids == [1000, 2000, 3000]
        assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True)
