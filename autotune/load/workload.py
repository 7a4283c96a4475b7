"""What load to offer, and the exact prompts that carry it.

A benchmark figure is only comparable between trials when every trial sends the
same token counts, so prompts are built to a *measured* length rather than a
guessed number of words: random token ids are decoded to text and the text is
re-encoded until its own encoding has exactly the requested length.

Token counts here are the text's own encoding **without special tokens**.  The
server usually adds some on top (Llama-family tokenizers prepend a BOS token,
so vLLM's ``usage.prompt_tokens`` reads one more than ``prompt_tokens`` here);
that offset is identical for every request and every trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from autotune.errors import UserError

__all__ = [
    "PromptTokenizer",
    "RequestSpec",
    "Workload",
    "build_requests",
    "load_tokenizer",
]

# Rounds of decode -> re-encode -> trim/extend before a prompt is abandoned for a
# fresh random draw, and fresh draws before we give up on the tokenizer.
_MAX_ROUNDS = 12
_MAX_DRAWS = 20
# Fresh draws spent trying to avoid a prompt identical to an earlier one.
_MAX_DUPLICATE_DRAWS = 5


class Workload(BaseModel):
    """The load one trial offers; identical across trials so figures compare.

    Lengths are exact token counts (see the module docstring for what "token"
    means).  ``output_tokens`` becomes ``max_tokens`` and, with ``ignore_eos``,
    the exact generated length.  ``rate`` is only read when ``arrival`` is
    ``"poisson"``; there ``concurrency`` caps the requests in flight so that an
    overloaded server cannot make the client open unbounded connections.
    """

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(default=128, ge=1)
    prompt_tokens_max: int | None = Field(default=None, ge=1)
    output_tokens: int = Field(default=64, ge=1)
    output_tokens_max: int | None = Field(default=None, ge=1)
    arrival: Literal["concurrency", "poisson"] = "concurrency"
    concurrency: int = Field(default=16, ge=1)
    rate: float | None = Field(default=None, gt=0)
    num_requests: int = Field(default=64, ge=1)
    warmup_requests: int = Field(default=4, ge=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check_ranges(self) -> Workload:
        if self.prompt_tokens_max is not None and self.prompt_tokens_max < self.prompt_tokens:
            raise ValueError("prompt_tokens_max must be >= prompt_tokens")
        if self.output_tokens_max is not None and self.output_tokens_max < self.output_tokens:
            raise ValueError("output_tokens_max must be >= output_tokens")
        if self.arrival == "poisson" and self.rate is None:
            raise ValueError("arrival 'poisson' needs a rate (requests/s) > 0")
        return self


@dataclass(frozen=True)
class RequestSpec:
    """One request, fixed before the run so that sending costs no tokenizer time."""

    prompt: str
    prompt_tokens: int
    max_tokens: int


class PromptTokenizer(Protocol):
    """The two operations prompt building needs; ``encode`` adds no special tokens.

    An implementation may also carry ``special_ids`` (a collection of ints):
    those ids are never drawn, since their text would not survive a round trip.
    """

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class _TokenizersAdapter:
    """Binds a ``tokenizers.Tokenizer`` to the protocol with the server's view of text.

    Added tokens are kept out of the draw (``special_ids``) and out of decoded
    text, because a string such as ``<|eot_id|>`` in a prompt would be parsed
    back into a control token by the server.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.special_ids: frozenset[int] = frozenset(tokenizer.get_added_tokens_decoder())

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


def load_tokenizer(model_dir: Path) -> tuple[PromptTokenizer, int]:
    """Load the model's own ``tokenizer.json`` so our counts match the server's.

    Returns the tokenizer and the vocabulary size including added tokens (the
    range ids are drawn from; added tokens themselves are excluded).
    """
    from tokenizers import Tokenizer  # deferred: only prompt building needs it

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"no tokenizer.json in {model_dir} (a fast tokenizer file is needed to size prompts)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises bare Exception subclasses
        raise UserError(f"cannot read {path}: {exc}") from exc
    return _TokenizersAdapter(tokenizer), int(tokenizer.get_vocab_size(with_added_tokens=True))


def build_requests(
    workload: Workload,
    tokenizer: PromptTokenizer,
    vocab_size: int,
    *,
    count: int,
    seed_offset: int = 0,
) -> list[RequestSpec]:
    """Build ``count`` distinct requests, deterministic in ``(workload.seed, seed_offset)``.

    Use a different ``seed_offset`` for sets that must not share prompts (e.g.
    warm-up vs. measured, when built separately).  Lengths and prompt tokens
    come from independent random streams, so changing one length range does not
    reshuffle every prompt.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if seed_offset < 0:
        raise ValueError("seed_offset must be >= 0")
    special = frozenset(int(i) for i in getattr(tokenizer, "special_ids", ()))
    allowed = _allowed_ids(vocab_size, special)
    lengths_seq, tokens_seq = np.random.SeedSequence([workload.seed, seed_offset]).spawn(2)
    lengths_rng = np.random.default_rng(lengths_seq)
    prompt_lens = _draw_lengths(lengths_rng, workload.prompt_tokens, workload.prompt_tokens_max, count)
    output_lens = _draw_lengths(lengths_rng, workload.output_tokens, workload.output_tokens_max, count)

    rng = np.random.default_rng(tokens_seq)
    seen: set[str] = set()
    specs: list[RequestSpec] = []
    for n_prompt, n_out in zip(prompt_lens, output_lens, strict=True):
        prompt = _distinct_prompt(tokenizer, rng, allowed, special, n_prompt, seen)
        seen.add(prompt)
        specs.append(RequestSpec(prompt=prompt, prompt_tokens=n_prompt, max_tokens=n_out))
    return specs


def _allowed_ids(vocab_size: int, special: frozenset[int]) -> np.ndarray:
    """Ids safe to draw: in range and not a special/added token."""
    if vocab_size < 1:
        raise ValueError("vocab_size must be >= 1")
    ids = np.arange(vocab_size, dtype=np.int64)
    if special:
        ids = ids[~np.isin(ids, np.fromiter(special, dtype=np.int64))]
    if ids.size == 0:
        raise UserError("the tokenizer has no ordinary (non-special) tokens to build prompts from")
    return ids


def _draw_lengths(rng: np.random.Generator, low: int, high: int | None, count: int) -> list[int]:
    """Fixed length, or uniform over the inclusive range ``[low, high]``."""
    if high is None or high == low:
        return [low] * count
    return [int(x) for x in rng.integers(low, high, size=count, endpoint=True)]


def _distinct_prompt(
    tokenizer: PromptTokenizer,
    rng: np.random.Generator,
    allowed: np.ndarray,
    special: frozenset[int],
    n_tokens: int,
    seen: set[str],
) -> str:
    """A prompt unlike earlier ones, so prefix caching cannot serve it for free.

    Random leading tokens already make collisions vanishingly rare for real
    vocabularies; the retries only matter for tiny vocabularies or very short
    prompts, where a duplicate is accepted once distinct ones are exhausted.
    """
    prompt = _exact_prompt(tokenizer, rng, allowed, special, n_tokens)
    for _ in range(_MAX_DUPLICATE_DRAWS):
        if prompt not in seen:
            break
        prompt = _exact_prompt(tokenizer, rng, allowed, special, n_tokens)
    return prompt


def _exact_prompt(
    tokenizer: PromptTokenizer,
    rng: np.random.Generator,
    allowed: np.ndarray,
    special: frozenset[int],
    n_tokens: int,
) -> str:
    """Text whose own encoding is exactly ``n_tokens`` long.

    Decoding random ids and re-encoding rarely round-trips (merges form across
    token boundaries, invalid byte sequences become U+FFFD), so we converge:
    trim the re-encoding when it is too long, append fresh random ids when it
    is too short.  A tail that cannot survive the round trip (half of a
    multi-byte character) makes plain trimming oscillate, so each further
    overshoot cuts deeper before refilling.  A draw that still does not
    settle, or whose text spells a special token (the server would read it as
    a control token), is dropped for a new one.
    """
    for _ in range(_MAX_DRAWS):
        ids = _draw_ids(rng, allowed, n_tokens)
        cut = 0
        for _ in range(_MAX_ROUNDS):
            text = tokenizer.decode(ids)
            encoded = tokenizer.encode(text)
            if special and not special.isdisjoint(encoded):
                break
            if len(encoded) == n_tokens:
                return text
            if len(encoded) > n_tokens:
                ids = encoded[: max(0, n_tokens - cut)]
                cut = max(1, 2 * cut)
            else:
                ids = encoded + _draw_ids(rng, allowed, n_tokens - len(encoded))
    raise UserError(f"could not build a prompt of exactly {n_tokens} tokens with this tokenizer")


def _draw_ids(rng: np.random.Generator, allowed: np.ndarray, n: int) -> list[int]:
    return [int(i) for i in allowed[rng.integers(0, allowed.size, size=n)]]
