"""Prompt building against real tokenizers trained here on a few KB of text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError
from tokenizers import AddedToken, ByteLevelBPETokenizer, Tokenizer, decoders, models, pre_tokenizers, trainers

from autotune.errors import UserError
from autotune.load.prompts import PromptTokenizer, build_requests, load_tokenizer
from autotune.load.workload import RequestSpec, Workload

SPECIALS: list[str | AddedToken] = ["<s>", "</s>", "<unk>"]

_WORDS = (
    "the quick brown fox jumps over lazy dog inference engine batch token cache "
    "latency throughput scheduler kernel memory prefill decode request server "
    "naïve café über straße 東京 数据 ünïcödé — “quoted” 123 4567 89"
).split()


def _corpus() -> list[str]:
    rnd = random.Random(1234)
    lines = []
    for _ in range(120):  # about 8 KB
        words = [rnd.choice(_WORDS) for _ in range(rnd.randint(4, 14))]
        lines.append(" ".join(words) + rnd.choice([".", ",", "!", "?", ";", "\n"]))
    return lines


@pytest.fixture(scope="module")
def bytelevel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(iter(_corpus()), vocab_size=500, min_frequency=2, special_tokens=SPECIALS)
    out = tmp_path_factory.mktemp("bytelevel")
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def metaspace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentencePiece-like tokenizer (Llama/Mistral style '▁' word prefix)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=500, min_frequency=2, special_tokens=SPECIALS)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    out = tmp_path_factory.mktemp("metaspace")
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def wordlevel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer without a decoder (as published model shapes get): decoding
    joins words with spaces and leaves no separator at the end of a text."""
    words = ["<s>", "</s>", "<unk>", *dict.fromkeys(_WORDS), *(f"w{i}" for i in range(500))]
    vocab = {name: i for i, name in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    out = tmp_path_factory.mktemp("wordlevel")
    tok.save(str(out / "tokenizer.json"))
    return out


def _own_count(model_dir: Path, text: str) -> list[int]:
    """Re-encode independently of the code under test, as the server would (minus BOS)."""
    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("which", ["bytelevel_dir", "metaspace_dir", "wordlevel_dir"])
@pytest.mark.parametrize(
    ("low", "high"),
    [(1, None), (7, None), (128, None), (5, 300)],
)
def test_prompts_reencode_to_exact_length(
    request: pytest.FixtureRequest, which: str, low: int, high: int | None
) -> None:
    model_dir: Path = request.getfixturevalue(which)
    tokenizer, vocab = load_tokenizer(model_dir)
    workload = Workload(prompt_tokens=low, prompt_tokens_max=high, output_tokens=3, output_tokens_max=9)
    specs = build_requests(workload, tokenizer, vocab, count=40)

    assert len(specs) == 40
    special_ids = {vocab_id for vocab_id in range(len(SPECIALS))}
    for spec in specs:
        ids = _own_count(model_dir, spec.prompt)
        assert len(ids) == spec.prompt_tokens
        assert special_ids.isdisjoint(ids)
        assert 3 <= spec.max_tokens <= 9
    lengths = [s.prompt_tokens for s in specs]
    if high is None:
        assert set(lengths) == {low}
    else:
        assert all(low <= n <= high for n in lengths)
        assert len(set(lengths)) > 10  # actually spread over the range
    assert len({s.prompt for s in specs}) == len(specs)


def test_fixed_output_length_is_exact(bytelevel_dir: Path) -> None:
    tokenizer, vocab = load_tokenizer(bytelevel_dir)
    specs = build_requests(Workload(prompt_tokens=16, output_tokens=33), tokenizer, vocab, count=5)
    assert [s.max_tokens for s in specs] == [33] * 5


def test_uniform_lengths_cover_both_ends(bytelevel_dir: Path) -> None:
    tokenizer, vocab = load_tokenizer(bytelevel_dir)
    workload = Workload(prompt_tokens=2, prompt_tokens_max=4, output_tokens=1, output_tokens_max=2)
    specs = build_requests(workload, tokenizer, vocab, count=60)
    assert {s.prompt_tokens for s in specs} == {2, 3, 4}
    assert {s.max_tokens for s in specs} == {1, 2}


def test_same_seed_same_requests(bytelevel_dir: Path) -> None:
    tokenizer, vocab = load_tokenizer(bytelevel_dir)
    workload = Workload(prompt_tokens=10, prompt_tokens_max=60, seed=7)
    first = build_requests(workload, tokenizer, vocab, count=20)
    again = build_requests(workload, *load_tokenizer(bytelevel_dir), count=20)
    assert first == again
    assert all(isinstance(s, RequestSpec) for s in first)

    other_seed = build_requests(workload.model_copy(update={"seed": 8}), tokenizer, vocab, count=20)
    other_offset = build_requests(workload, tokenizer, vocab, count=20, seed_offset=1)
    assert {s.prompt for s in first}.isdisjoint(s.prompt for s in other_seed)
    assert {s.prompt for s in first}.isdisjoint(s.prompt for s in other_offset)


def test_prompts_start_differently(bytelevel_dir: Path) -> None:
    """Distinct first tokens: a prefix cache must not serve one prompt from another."""
    tokenizer, vocab = load_tokenizer(bytelevel_dir)
    specs = build_requests(Workload(prompt_tokens=64), tokenizer, vocab, count=30)
    first_blocks = {tuple(tokenizer.encode(s.prompt)[:16]) for s in specs}
    assert len(first_blocks) == 30


def test_count_zero_is_empty(bytelevel_dir: Path) -> None:
    tokenizer, vocab = load_tokenizer(bytelevel_dir)
    assert build_requests(Workload(), tokenizer, vocab, count=0) == []


def test_missing_tokenizer_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)


class _NoRoundTrip:
    """A tokenizer whose text never re-encodes to the drawn length."""

    def encode(self, text: str) -> list[int]:
        return [0] * (2 * len(text) + 1)

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)


def test_unreachable_length_is_reported_not_looped() -> None:
    tokenizer: PromptTokenizer = _NoRoundTrip()
    with pytest.raises(UserError, match="exactly 4 tokens"):
        build_requests(Workload(prompt_tokens=4), tokenizer, 10, count=1)


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt_tokens": 0},
        {"output_tokens": 0},
        {"prompt_tokens": 10, "prompt_tokens_max": 9},
        {"output_tokens": 10, "output_tokens_max": 2},
        {"concurrency": 0},
        {"num_requests": 0},
        {"warmup_requests": -1},
        {"request_timeout_s": 0},
        {"seed": -1},
        {"arrival": "poisson"},
        {"arrival": "poisson", "rate": 0},
        {"arrival": "poisson", "rate": -2.0},
        {"arrival": "burst"},
        {"prompt_len": 5},
    ],
)
def test_bad_workloads_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Workload(**fields)  # type: ignore[arg-type]


def test_good_workloads_are_accepted() -> None:
    w = Workload(arrival="poisson", rate=2.5, concurrency=8, prompt_tokens=5, prompt_tokens_max=5, warmup_requests=0)
    assert w.rate == 2.5 and w.prompt_tokens_max == 5
    assert Workload.model_validate({"num_requests": 3}).num_requests == 3


def test_shared_prefix_survives_a_word_level_tokenizer(wordlevel_dir: Path) -> None:
    """Its decoder leaves no space after the prefix's last word, which the next word would
    otherwise run into (an unknown word), changing the prefix in every prompt."""
    tokenizer, vocab = load_tokenizer(wordlevel_dir)
    specs = build_requests(Workload(prompt_tokens=12, shared_prefix_tokens=40), tokenizer, vocab, count=20)
    encoded = [_own_count(wordlevel_dir, s.prompt) for s in specs]
    assert all(len(ids) == 52 == s.prompt_tokens for ids, s in zip(encoded, specs, strict=True))
    assert len({tuple(ids[:40]) for ids in encoded}) == 1
    assert 2 not in {i for ids in encoded for i in ids}  # no word ran into another
    assert len({tuple(ids[40:]) for ids in encoded}) == 20
