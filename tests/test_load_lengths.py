"""Length distributions, JSONL datasets and shared prefixes, in the tiny model's own tokens.

Every prompt is re-encoded here with a separately loaded copy of the model's
``tokenizer.json`` (as the server would, less its BOS token), so "exact" means
exact in the tokens the engine will count.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from tokenizers import Tokenizer

from autotune.errors import UserError
from autotune.load.workload import Lengths, Workload, load_dataset
from autotune.load.prompts import PromptTokenizer, build_requests, load_tokenizer
from autotune.spec import load_spec

COUNT = 300


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> tuple[PromptTokenizer, int]:
    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model / "tokenizer.json"))


def _ids(reference: Tokenizer, text: str) -> list[int]:
    return reference.encode(text, add_special_tokens=False).ids


DISTRIBUTIONS = {
    "fixed": {"dist": "fixed", "mean": 48},
    "uniform": {"dist": "uniform", "min": 8, "max": 120},
    "normal": {"dist": "normal", "mean": 64, "std": 12, "min": 4, "max": 200},
    "lognormal": {"dist": "lognormal", "mean": 60, "std": 30, "min": 4, "max": 400},
}


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_prompts_hit_each_distribution_in_exact_tokens(
    name: str, tok: tuple[PromptTokenizer, int], reference: Tokenizer
) -> None:
    spec = DISTRIBUTIONS[name]
    workload = Workload(prompt_tokens=spec, output_tokens=spec, seed=3)
    requests = build_requests(workload, *tok, count=COUNT)
    prompt_lens = np.array([r.prompt_tokens for r in requests])
    for r in requests:
        assert len(_ids(reference, r.prompt)) == r.prompt_tokens  # exact, in the server's tokens
    assert len({r.prompt for r in requests}) == COUNT
    output_lens = np.array([r.max_tokens for r in requests])
    for lens in (prompt_lens, output_lens):
        _check_moments(name, spec, lens)


def _check_moments(name: str, spec: dict, lens: np.ndarray) -> None:
    low, high = spec.get("min", 1), spec.get("max", math.inf)
    assert lens.min() >= low and lens.max() <= high
    if name == "fixed":
        assert set(lens.tolist()) == {spec["mean"]}
    elif name == "uniform":
        assert lens.min() == low or lens.max() == high or len(set(lens.tolist())) > 50
        assert lens.mean() == pytest.approx((low + high) / 2, abs=4 * (high - low) / math.sqrt(12 * COUNT))
    else:
        # Clipping is negligible at these settings: the lengths carry the requested mean and std.
        se = spec["std"] / math.sqrt(COUNT)
        assert lens.mean() == pytest.approx(spec["mean"], abs=4 * se + 0.5)
        assert lens.std() == pytest.approx(spec["std"], rel=0.2)
    if name == "lognormal":
        # Right-skewed: the median sits below the mean, unlike a normal's.
        assert np.median(lens) < lens.mean()


def test_clipping_piles_draws_on_the_bounds(tok: tuple[PromptTokenizer, int], reference: Tokenizer) -> None:
    workload = Workload(prompt_tokens={"dist": "normal", "mean": 30, "std": 40, "min": 20, "max": 45}, output_tokens=2)
    requests = build_requests(workload, *tok, count=200)
    lens = [r.prompt_tokens for r in requests]
    assert min(lens) == 20 and max(lens) == 45
    assert lens.count(20) > 40 and lens.count(45) > 20  # the tails were clipped, not redrawn
    assert all(len(_ids(reference, r.prompt)) == r.prompt_tokens for r in requests)


def test_lengths_are_seeded(tok: tuple[PromptTokenizer, int]) -> None:
    spec = DISTRIBUTIONS["lognormal"]
    a = build_requests(Workload(prompt_tokens=spec, seed=1), *tok, count=30)
    b = build_requests(Workload(prompt_tokens=spec, seed=1), *tok, count=30)
    c = build_requests(Workload(prompt_tokens=spec, seed=2), *tok, count=30)
    assert a == b
    assert [r.prompt_tokens for r in a] != [r.prompt_tokens for r in c]


def test_the_old_range_fields_still_mean_uniform() -> None:
    w = Workload(prompt_tokens=10, prompt_tokens_max=20, output_tokens=5)
    assert w.prompt_lengths == Lengths(dist="uniform", min=10, max=20)
    assert w.output_lengths == Lengths(dist="fixed", mean=5)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"dist": "normal", "mean": 50}, "needs a std"),
        ({"dist": "lognormal", "std": 5}, "needs a mean"),
        ({"dist": "uniform", "min": 5}, "needs min and max"),
        ({"dist": "uniform", "min": 5, "max": 9, "mean": 7}, "min and max only"),
        ({"dist": "fixed", "mean": 7.5}, "whole number"),
        ({"dist": "normal", "mean": 500, "std": 5, "max": 100}, "outside [min, max]"),
        ({"dist": "normal", "mean": 50, "std": 5, "min": 60, "max": 40}, "must be >= min"),
        ({"dist": "zipf", "mean": 5}, "dist"),
        ({"dist": "normal", "mean": 50, "std": 5, "skew": 1}, "skew"),
    ],
)
def test_bad_distributions_are_one_line_errors(value: dict, needle: str) -> None:
    with pytest.raises(UserError) as info:
        load_spec(None, {"workload": {"prompt_tokens": value}})
    message = str(info.value)
    assert needle in message and "workload.prompt_tokens" in message and "\n" not in message


def test_distributions_read_well_in_yaml(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "workload:\n"
        "  prompt_tokens: {dist: lognormal, mean: 512, std: 200, min: 16, max: 2048}\n"
        "  output_tokens: 64\n"
    )
    w = load_spec(spec).workload
    assert w.prompt_lengths.dist == "lognormal" and w.output_tokens == 64
    assert Workload.model_validate(w.model_dump()) == w


# --- shared prefix ------------------------------------------------------------


def test_shared_prefix_is_exact_and_common(tok: tuple[PromptTokenizer, int], reference: Tokenizer) -> None:
    n_prefix = 37
    workload = Workload(prompt_tokens={"dist": "uniform", "min": 5, "max": 40}, shared_prefix_tokens=n_prefix)
    requests = build_requests(workload, *tok, count=60)
    encoded = [_ids(reference, r.prompt) for r in requests]
    heads = {tuple(ids[:n_prefix]) for ids in encoded}
    assert len(heads) == 1  # the same token ids, so a prefix cache can reuse them
    for r, ids in zip(requests, encoded, strict=True):
        assert len(ids) == r.prompt_tokens and 5 + n_prefix <= r.prompt_tokens <= 40 + n_prefix
    tails = {tuple(ids[n_prefix : n_prefix + 4]) for ids in encoded}
    assert len(tails) == 60  # and nothing after it is shared


def test_every_request_set_shares_the_prefix(tok: tuple[PromptTokenizer, int], reference: Tokenizer) -> None:
    workload = Workload(prompt_tokens=16, shared_prefix_tokens=64, seed=9)
    first = build_requests(workload, *tok, count=3, seed_offset=0)
    later = build_requests(workload, *tok, count=3, seed_offset=7)  # e.g. another goodput level
    other = build_requests(workload.model_copy(update={"seed": 10}), *tok, count=3)
    prefix = lambda r: tuple(_ids(reference, r.prompt)[:64])  # noqa: E731
    assert {prefix(r) for r in first + later} == {prefix(first[0])}
    assert prefix(other[0]) != prefix(first[0])
    assert {r.prompt for r in first}.isdisjoint(r.prompt for r in later)


# --- JSONL datasets ------------------------------------------------------------


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_dataset_prompts_are_counted_and_cycled(
    tmp_path: Path, tok: tuple[PromptTokenizer, int], reference: Tokenizer
) -> None:
    rows = [
        {"prompt": "Summarise the following report in three sentences.", "output_tokens": 40},
        {"prompt": "Translate into French: the cache is warm."},
        {"prompt": "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", "output_tokens": 7},
    ]
    path = _write(tmp_path / "prompts.jsonl", [*rows[:2], "", rows[2]])  # blank lines are skipped
    workload = Workload(dataset=path, output_tokens=13)
    requests = build_requests(workload, *tok, count=7)
    texts = [r.prompt for r in requests]
    assert set(texts) == {row["prompt"] for row in rows}  # type: ignore[index]
    assert sorted(texts[:3]) == sorted(row["prompt"] for row in rows)  # type: ignore[index]  # each once per pass
    wanted = {row["prompt"]: row.get("output_tokens", 13) for row in rows}  # type: ignore[union-attr,index]
    for r in requests:
        assert r.max_tokens == wanted[r.prompt]
        assert r.prompt_tokens == len(_ids(reference, r.prompt))
    assert build_requests(workload, *tok, count=7) == requests  # seeded order
    assert [r.prompt for r in build_requests(workload, *tok, count=7, seed_offset=1)] != texts


def test_dataset_with_shared_prefix(tmp_path: Path, tok: tuple[PromptTokenizer, int], reference: Tokenizer) -> None:
    path = _write(tmp_path / "p.jsonl", [{"prompt": " What is in the document?"}, {"prompt": " Who wrote it?"}])
    requests = build_requests(Workload(dataset=path, shared_prefix_tokens=50), *tok, count=4)
    heads = {tuple(_ids(reference, r.prompt)[:50]) for r in requests}
    assert len(heads) == 1
    assert all(r.prompt_tokens == len(_ids(reference, r.prompt)) > 50 for r in requests)


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["not json"], "line 1: not a JSON object"),
        ([{"prompt": "a"}, [1, 2]], "line 2: not a JSON object"),
        ([{"text": "a"}], "unknown key(s) text"),
        ([{"prompt": ""}], "'prompt' must be a non-empty string"),
        ([{"prompt": "a", "output_tokens": 0}], "'output_tokens' must be a whole number"),
        ([{"prompt": "a", "output_tokens": 2.5}], "'output_tokens' must be a whole number"),
        ([""], "holds no prompts"),
    ],
)
def test_bad_datasets_are_one_line_errors(tmp_path: Path, lines: list[object], needle: str) -> None:
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UserError, match="dataset") as info:
        load_dataset(path)
    assert needle in str(info.value)
    with pytest.raises(UserError) as spec_info:
        load_spec(None, {"workload.dataset": str(path)})
    assert needle in str(spec_info.value) and "\n" not in str(spec_info.value)
    with pytest.raises(ValidationError):
        Workload(dataset=path)


def test_missing_dataset_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_spec(None, {"workload.dataset": str(tmp_path / "nope.jsonl")})
