"""Quality without an engine: the pass-key and perplexity grammar, exact-length
pass-key prompts, corpus windows, and which settings share a measurement."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from autotune import quality as q
from autotune.errors import UserError
from autotune.space import SearchSpace
from autotune.spec import parse_objectives, parse_slos


# -- grammar -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stat", "op", "threshold", "key"),
    [
        ("passkey@32k>=0.9", "32768", ">=", 0.9, "passkey_acc_32768"),
        ("passkey@1K >= 90%", "1024", ">=", 0.9, "passkey_acc_1024"),
        ("passkey@4096>0.5", "4096", ">", 0.5, "passkey_acc_4096"),
        ("passkey>=1", None, ">=", 1.0, "passkey_acc"),
    ],
)
def test_passkey_bounds_parse(text: str, stat: str | None, op: str, threshold: float, key: str) -> None:
    (c,) = parse_slos(text)
    assert (c.kind, c.metric, c.stat, c.op, c.attainment) == ("passkey", "passkey", stat, op, None)
    assert c.threshold == pytest.approx(threshold)
    assert c.figure_key() == key


def test_passkey_and_ppl_bounds_combine_with_latency() -> None:
    slos = parse_slos("p99(ttft)<1s, ppl<+5% and passkey@1k>=0.9")
    assert [c.kind for c in slos] == ["latency", "quality", "passkey"]
    assert [c.figure_key() for c in slos] == ["p99_ttft_ms", "ppl_rel_change", "passkey_acc_1024"]
    assert slos[1].threshold == pytest.approx(0.05) and slos[1].relative
    assert parse_slos("ppl<12.0")[0].figure_key() == "ppl"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("passkey@1k>=1.5", ["accuracy '1.5' out of range", "column 13"]),
        ("passkey@2x>=0.9", ["unknown length unit 'x'", "column 10"]),
        ("passkey@0.5>=0.9", ["not a whole number of tokens"]),
        ("passkey(1k)>=0.9", ["'passkey' takes no statistic"]),
        ("passkey@1k>=0.9@95%", ["attainment target '@' not allowed here"]),
        ("passkey@>=0.9", ["expected a prompt length after '@'"]),
        ("passkey@1k>=0.9ms", ["unexpected unit 'ms'"]),
        ("passkey@1k", ["expected an operator"]),
    ],
)
def test_bad_passkey_bounds_say_where(text: str, needles: list[str]) -> None:
    with pytest.raises(UserError) as e:
        parse_slos(text)
    for needle in needles:
        assert needle in str(e.value)


def test_passkey_violation_is_relative_and_a_missing_length_breaks_it() -> None:
    (c,) = parse_slos("passkey@1k>=0.8")
    assert c.violation({"passkey_acc_1024": 0.9}) < 0
    assert c.violation({"passkey_acc_1024": 0.4}) == pytest.approx(0.5)
    assert c.violation({"passkey_acc_1024": math.nan}) == math.inf  # longer than the served context


def test_quality_objectives() -> None:
    assert [o.metric for o in parse_objectives("min:ppl, max:passkey")] == ["ppl", "passkey_acc"]


def test_plan_reads_only_what_the_bounds_need() -> None:
    assert not q.plan_for(parse_slos("p99(ttft)<1s")).needed
    plan = q.plan_for(parse_slos("ppl<+5%, passkey@1k>=0.9, passkey@512>=0.5"))
    assert plan.perplexity and plan.passkey and plan.passkey_lengths == (512, 1024)
    assert q.plan_for([], parse_objectives("max:output_tps, min:ppl")).perplexity


# -- settings and the baseline --------------------------------------------------------


def test_only_quality_knobs_make_a_setting() -> None:
    space = SearchSpace.load("vllm").for_hardware("cpu", {"gpu_count": 1})
    knobs = q.quality_knobs(space)
    assert knobs == ["kv_cache_dtype"]
    a = q.setting_key({"kv_cache_dtype": "fp8_e5m2", "max_num_seqs": 4}, knobs)
    b = q.setting_key({"max_num_seqs": 64, "kv_cache_dtype": "fp8_e5m2"}, knobs)
    assert a == b != q.setting_key({"kv_cache_dtype": "auto", "max_num_seqs": 4}, knobs)


def test_baseline_is_unquantized_with_the_kv_cache_in_the_model_dtype() -> None:
    gpu = SearchSpace.load("vllm").for_hardware("cuda", {"gpu_count": 1})
    base = q.baseline_config({"kv_cache_dtype": "fp8", "quantization": "fp8", "max_num_seqs": 8}, gpu)
    assert base == {"kv_cache_dtype": "auto", "quantization": None, "max_num_seqs": 8}


def test_relative_change() -> None:
    rel = q.relative_to_baseline({"ppl": 11.0}, {"ppl": 10.0})
    assert rel["ppl_rel_change"] == pytest.approx(0.1) and rel["ppl_baseline"] == 10.0
    assert q.relative_to_baseline({"ppl": 11.0}, {}) == {}


# -- prompts and windows --------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([q.CORPUS.read_text()], trainer)
    return tok


@pytest.mark.parametrize("length", [256, 300, 1024])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompts_have_exact_lengths_and_the_key_at_its_depth(tokenizer, length: int, depth: float) -> None:  # type: ignore[no-untyped-def]
    builder = q.PasskeyBuilder(tokenizer, bos=0)
    ids, answer = builder.prompt(length, depth, "48213")
    assert len(ids) == length and ids[0] == 0
    text = tokenizer.decode(ids[1:])
    assert text.count("48213") == 2 and text.endswith("The pass key is")
    needle = " The pass key is 48213. Remember it. 48213 is the pass key."
    start, end = text.index("there.") + len("there."), text.index(" What is the pass key?")
    position = (text.index(needle) - start) / (end - start - len(needle))  # share of the filler before it
    assert abs(position - depth) < 0.05
    assert tokenizer.decode(answer).strip() == "48213"


def test_passkey_prompt_too_short_is_refused(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="shorter than"):
        q.PasskeyBuilder(tokenizer, bos=0).prompt(20, 0.5, "12345")


def test_ladder_doubles_up_to_the_served_context() -> None:
    assert q.passkey_ladder(2048) == [256, 512, 1024]
    assert q.passkey_ladder(512, [4096]) == [256, 4096]  # named lengths kept, judged unmeasurable later


def test_corpus_windows_cover_the_corpus_once(tokenizer) -> None:  # type: ignore[no-untyped-def]
    all_ids = tokenizer.encode(q.CORPUS.read_text(), add_special_tokens=False).ids
    windows = q.corpus_windows(tokenizer, 0, 512, max_tokens=10**9)
    assert all(w[0] == 0 and len(w) <= 512 for w in windows)
    joined = [i for w in windows for i in w[1:]]
    assert joined == all_ids[: len(joined)] and len(all_ids) - len(joined) < 511 // 4


def test_the_corpus_ships_with_its_licence() -> None:
    folder = Path(q.CORPUS).parent
    assert "Python Software Foundation" in (folder / "LICENSE-PSF.txt").read_text()
    assert "heldout.txt" in (folder / "README.md").read_text()
    assert len(q.CORPUS.read_text()) > 40_000


def test_offline_perplexity_of_random_weights_is_near_the_vocabulary(tmp_path: Path) -> None:
    """The reason for a trained model: untrained weights score near-uniform."""
    from autotune.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=0)
    tok = q.corpus_tokenizer(model)
    windows = q.corpus_windows(tok, q.bos_id(model), 256, max_tokens=1024)
    ppl = q.offline_perplexity(model, windows)
    assert ppl.source == "offline" and ppl.tokens == sum(len(w) - 1 for w in windows)
    assert 1000 < ppl.ppl < 4000  # vocabulary 2048


def test_random_keys_are_five_digits() -> None:
    rng = random.Random(0)
    keys = {q.PasskeyBuilder.random_key(rng) for _ in range(50)}
    assert all(len(k) == 5 and k.isdigit() for k in keys) and len(keys) > 40


def test_outlier_variant_computes_the_same_logits_with_keys_and_values_past_e4m3() -> None:
    """Scaling q/k and v/o by a power of two is exact in bf16: the same logits, while the
    keys and values the KV cache stores grow by the factor (past FP8 e4m3's 448)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from autotune.models.outliers import SCALE, scale_attention

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    scaled = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    scaled.load_state_dict(scale_attention(model.state_dict(), float(SCALE)))
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str):  # type: ignore[no-untyped-def]
        def hook(_module, _inputs, out) -> None:  # type: ignore[no-untyped-def]
            seen[key] = out.float()
        return hook

    for tag, m in (("", model), ("scaled ", scaled)):
        for proj in ("k_proj", "v_proj"):
            getattr(m.model.layers[0].self_attn, proj).register_forward_hook(keep(tag + proj))
    x = torch.randint(0, 64, (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, scaled(input_ids=x).logits)
    for proj in ("k_proj", "v_proj"):  # what the KV cache stores: exactly SCALE times larger
        assert torch.equal(seen["scaled " + proj], seen[proj] * SCALE)
        assert seen["scaled " + proj].abs().max() > 448 > seen[proj].abs().max()
    untouched = [n for n in model.state_dict() if not n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                                  "o_proj.weight"))]
    assert all(torch.equal(model.state_dict()[n], scaled.state_dict()[n]) for n in untouched)
