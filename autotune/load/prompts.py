"""The exact prompts that carry a workload: random token ids decoded to text of a measured length.

See ``autotune.load.workload`` for why lengths are measured, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from autotune.errors import UserError
from autotune.load.workload import RequestSpec, Workload, load_dataset

__all__ = ["PromptTokenizer", "build_requests", "load_tokenizer"]

# Rounds of decode -> re-encode -> trim/extend before a prompt is abandoned for a
# fresh random draw, and fresh draws before we give up on the tokenizer.
_MAX_ROUNDS = 12
_MAX_DRAWS = 20
# Fresh draws spent trying to avoid a prompt identical to an earlier one.
_MAX_DUPLICATE_DRAWS = 5
# Mixed into the workload seed so the shared prefix is the same for every request
# set (warm-up, measured, each goodput level) and unrelated to the prompts' stream.
_PREFIX_STREAM = 0x50524658
# Tokens of the throwaway prompt that checks a shared prefix can be extended.
_PREFIX_PROBE_TOKENS = 8

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


@dataclass(frozen=True)
class _Prefix:
    """Text every prompt starts with, and the ids it must keep once extended."""

    text: str
    ids: list[int]


_NO_PREFIX = _Prefix("", [])


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
    come from independent random streams, so changing one length distribution
    does not reshuffle every prompt.  The shared prefix depends on
    ``workload.seed`` only, so every set shares it.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if seed_offset < 0:
        raise ValueError("seed_offset must be >= 0")
    special = frozenset(int(i) for i in getattr(tokenizer, "special_ids", ()))
    allowed = _allowed_ids(vocab_size, special)
    lengths_seq, tokens_seq = np.random.SeedSequence([workload.seed, seed_offset]).spawn(2)
    lengths_rng = np.random.default_rng(lengths_seq)
    prompt_lens = workload.prompt_lengths.draw(lengths_rng, count)
    output_lens = workload.output_lengths.draw(lengths_rng, count)

    prefix = _NO_PREFIX
    if workload.shared_prefix_tokens:
        prefix = _shared_prefix(tokenizer, allowed, special, workload.shared_prefix_tokens, workload.seed)

    rng = np.random.default_rng(tokens_seq)
    if workload.dataset is not None:
        return _dataset_requests(workload.dataset, tokenizer, rng, prefix, output_lens)

    seen: set[str] = set()
    specs: list[RequestSpec] = []
    n_prefix = len(prefix.ids)
    for n_prompt, n_out in zip(prompt_lens, output_lens, strict=True):
        prompt = _distinct_prompt(tokenizer, rng, allowed, special, n_prompt, seen, prefix)
        seen.add(prompt)
        specs.append(RequestSpec(prompt=prompt, prompt_tokens=n_prefix + n_prompt, max_tokens=n_out))
    return specs


def _dataset_requests(
    path: Path,
    tokenizer: PromptTokenizer,
    rng: np.random.Generator,
    prefix: _Prefix,
    output_lens: list[int],
) -> list[RequestSpec]:
    """Dataset prompts in a seeded order, cycling through the file if it is short.

    The prompt's token count is its measured encoding (shared prefix included);
    the text is sent as written.
    """
    entries = load_dataset(path)
    order: list[int] = []
    while len(order) < len(output_lens):
        order.extend(int(i) for i in rng.permutation(len(entries)))
    specs: list[RequestSpec] = []
    for index, drawn_out in zip(order, output_lens, strict=False):
        entry = entries[index]
        text = prefix.text + entry.prompt
        n_out = entry.output_tokens if entry.output_tokens is not None else drawn_out
        specs.append(RequestSpec(prompt=text, prompt_tokens=len(tokenizer.encode(text)), max_tokens=n_out))
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


def _shared_prefix(
    tokenizer: PromptTokenizer, allowed: np.ndarray, special: frozenset[int], n_tokens: int, seed: int
) -> _Prefix:
    """A prefix of exactly ``n_tokens`` that random text can follow without disturbing it.

    Some endings merge with whatever comes next (a byte-level BPE folds a
    trailing space into the following word), which would change the prefix's
    last token in every prompt and defeat the cache; such a prefix is
    redrawn.
    """
    rng = np.random.default_rng([seed, _PREFIX_STREAM])
    for _ in range(_MAX_DRAWS):
        text = _exact_prompt(tokenizer, rng, allowed, special, n_tokens, _NO_PREFIX)
        ids = tokenizer.encode(text)
        # A word-level tokenizer decodes without a trailing separator, so the next word
        # would run into the prefix's last one: the same text with a space after it
        # encodes to the same tokens and keeps the two apart.
        for candidate in (_Prefix(text, ids), _Prefix(text + " ", ids)):
            if tokenizer.encode(candidate.text) != ids:
                continue
            try:
                _exact_prompt(tokenizer, rng, allowed, special, _PREFIX_PROBE_TOKENS, candidate)
            except UserError:
                continue
            return candidate
    raise UserError(f"could not build a shared prefix of exactly {n_tokens} tokens with this tokenizer")


def _distinct_prompt(
    tokenizer: PromptTokenizer,
    rng: np.random.Generator,
    allowed: np.ndarray,
    special: frozenset[int],
    n_tokens: int,
    seen: set[str],
    prefix: _Prefix,
) -> str:
    """A prompt unlike earlier ones, so prefix caching cannot serve it for free.

    Random leading tokens already make collisions vanishingly rare for real
    vocabularies; the retries only matter for tiny vocabularies or very short
    prompts, where a duplicate is accepted once distinct ones are exhausted.
    """
    prompt = _exact_prompt(tokenizer, rng, allowed, special, n_tokens, prefix)
    for _ in range(_MAX_DUPLICATE_DRAWS):
        if prompt not in seen:
            break
        prompt = _exact_prompt(tokenizer, rng, allowed, special, n_tokens, prefix)
    return prompt


def _exact_prompt(
    tokenizer: PromptTokenizer,
    rng: np.random.Generator,
    allowed: np.ndarray,
    special: frozenset[int],
    n_tokens: int,
    prefix: _Prefix,
) -> str:
    """``prefix.text`` plus text, encoding to exactly ``prefix.ids`` and ``n_tokens`` more.

    Decoding random ids and re-encoding rarely round-trips (merges form across
    token boundaries, invalid byte sequences become U+FFFD), so we converge:
    trim the re-encoding when it is too long, append fresh random ids when it
    is too short.  A tail that cannot survive the round trip (half of a
    multi-byte character) makes plain trimming oscillate, so each further
    overshoot cuts deeper before refilling.  A draw that still does not
    settle, that changes the prefix's tokens, or whose text spells a special
    token (the server would read it as a control token), is dropped for a
    new one.
    """
    head = len(prefix.ids)
    for _ in range(_MAX_DRAWS):
        ids = _draw_ids(rng, allowed, n_tokens)
        cut = 0
        for _ in range(_MAX_ROUNDS):
            text = prefix.text + tokenizer.decode(ids)
            encoded = tokenizer.encode(text)
            if special and not special.isdisjoint(encoded):
                break
            if encoded[:head] != prefix.ids:
                break
            tail = encoded[head:]
            if len(tail) == n_tokens:
                return text
            if len(tail) > n_tokens:
                ids = tail[: max(0, n_tokens - cut)]
                cut = max(1, 2 * cut)
            else:
                ids = tail + _draw_ids(rng, allowed, n_tokens - len(tail))
    raise UserError(f"could not build a prompt of exactly {n_tokens} tokens with this tokenizer")


def _draw_ids(rng: np.random.Generator, allowed: np.ndarray, n: int) -> list[int]:
    return [int(i) for i in allowed[rng.integers(0, allowed.size, size=n)]]
