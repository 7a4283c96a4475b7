"""What load to offer, and the exact prompts that carry it.

A benchmark figure is only comparable between trials when every trial sends the
same token counts, so prompts are built to a *measured* length rather than a
guessed number of words: random token ids are decoded to text and the text is
re-encoded until its own encoding has exactly the requested length.

Token counts here are the text's own encoding **without special tokens**.  The
server usually adds some on top (Llama-family tokenizers prepend a BOS token,
so vLLM's ``usage.prompt_tokens`` reads one more than ``prompt_tokens`` here);
that offset is identical for every request and every trial.

Lengths are a fixed number, a uniform range, or a clipped normal or lognormal
distribution (``Lengths``); every draw is seeded, so two trials send the same
lengths.  Prompts can instead come from a JSONL dataset, and a shared prefix
(a common "system prompt" of exact length) can lead every prompt so that
prefix caching has something to reuse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from autotune.errors import UserError

__all__ = [
    "DatasetEntry",
    "Lengths",
    "PromptTokenizer",
    "RequestSpec",
    "Workload",
    "build_requests",
    "load_dataset",
    "load_tokenizer",
]

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


class Lengths(BaseModel):
    """A token-length distribution, drawn per request and rounded to whole tokens.

    ``fixed``: always ``mean``.  ``uniform``: any integer in ``[min, max]``.
    ``normal`` and ``lognormal``: ``mean`` and ``std`` are those of the lengths
    themselves (not of their logarithm), and draws outside ``[min, max]`` are
    clipped to the nearest bound, so ``min`` and ``max`` also bound the tails
    of a heavy lognormal.
    """

    model_config = ConfigDict(extra="forbid")

    dist: Literal["fixed", "uniform", "normal", "lognormal"]
    mean: float | None = Field(default=None, gt=0)
    std: float | None = Field(default=None, ge=0)
    min: int = Field(default=1, ge=1)
    max: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Lengths:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        if self.dist == "uniform":
            if self.max is None:
                raise ValueError("a uniform length needs min and max")
            if self.mean is not None or self.std is not None:
                raise ValueError("a uniform length takes min and max only (no mean or std)")
            return self
        if self.mean is None:
            raise ValueError(f"a {self.dist} length needs a mean")
        if self.dist == "fixed":
            if self.std is not None:
                raise ValueError("a fixed length takes no std")
            if self.mean != int(self.mean):
                raise ValueError("a fixed length must be a whole number of tokens")
        elif self.std is None:
            raise ValueError(f"a {self.dist} length needs a std")
        if self.mean < self.min or (self.max is not None and self.mean > self.max):
            raise ValueError(f"mean ({self.mean:g}) lies outside [min, max]")
        return self

    def draw(self, rng: np.random.Generator, count: int) -> list[int]:
        """``count`` lengths; ``fixed`` consumes no randomness."""
        if self.dist == "fixed":
            assert self.mean is not None
            return [int(self.mean)] * count
        if self.dist == "uniform":
            assert self.max is not None
            if self.max == self.min:
                return [self.min] * count
            return [int(x) for x in rng.integers(self.min, self.max, size=count, endpoint=True)]
        assert self.mean is not None and self.std is not None
        if self.dist == "normal":
            raw = rng.normal(self.mean, self.std, size=count)
        else:
            # Moments of the lognormal matched to the requested mean and std of the lengths.
            sigma2 = math.log1p((self.std / self.mean) ** 2)
            raw = rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), size=count)
        high = float(self.max) if self.max is not None else math.inf
        return [int(x) for x in np.clip(np.rint(raw), self.min, high)]


def _length_kind(value: Any) -> str:
    return "distribution" if isinstance(value, (dict, Lengths)) else "tokens"


# A whole number or a distribution; the discriminator keeps a bad mapping's error
# about the mapping, instead of "not a valid integer" from the other branch.
LengthField = Annotated[
    Union[Annotated[int, Tag("tokens")], Annotated[Lengths, Tag("distribution")]],
    Discriminator(_length_kind),
]


class Workload(BaseModel):
    """The load one trial offers; identical across trials so figures compare.

    Lengths are exact token counts (see the module docstring for what "token"
    means).  ``prompt_tokens`` and ``output_tokens`` are a whole number (with
    the older ``*_max`` fields: a uniform range) or a ``Lengths`` mapping.
    ``output_tokens`` becomes ``max_tokens`` and, with ``ignore_eos``, the
    exact generated length.

    Arrivals: ``concurrency`` is a closed loop with that many requests in
    flight.  ``poisson`` and ``gamma`` are open loops at ``rate`` requests/s;
    gamma gaps have shape ``burstiness`` and scale ``1 / (rate * burstiness)``
    as in ``vllm bench serve`` (1 is Poisson, below 1 burstier, above 1 more
    regular).  In an open loop ``concurrency`` caps the requests in flight so
    that an overloaded server cannot make the client open unbounded
    connections.

    A run sends ``num_requests`` measured requests, or fewer when
    ``duration_s`` runs out first (no new request is sent after it; those in
    flight finish and count).  ``warmup_requests`` go first and leave no trace
    in the figures.

    ``shared_prefix_tokens`` leads every prompt with the same text of that many
    tokens, on top of the drawn prompt length (as ``vllm bench serve``'s
    ``--random-prefix-len``).  ``dataset`` replaces random prompts with a JSONL
    file of ``{"prompt": ..., "output_tokens": optional}`` lines; a line
    without ``output_tokens`` takes a draw from ``output_tokens``.
    """

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: LengthField = Field(default=128)
    prompt_tokens_max: int | None = Field(default=None, ge=1)
    output_tokens: LengthField = Field(default=64)
    output_tokens_max: int | None = Field(default=None, ge=1)
    shared_prefix_tokens: int = Field(default=0, ge=0)
    dataset: Path | None = None
    arrival: Literal["concurrency", "poisson", "gamma"] = "concurrency"
    burstiness: float = Field(default=1.0, gt=0)
    concurrency: int = Field(default=16, ge=1)
    rate: float | None = Field(default=None, gt=0)
    num_requests: int = Field(default=64, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    warmup_requests: int = Field(default=4, ge=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    seed: int = Field(default=0, ge=0)

    @field_validator("prompt_tokens", "output_tokens")
    @classmethod
    def _positive(cls, v: int | Lengths) -> int | Lengths:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 token")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset_reads(cls, v: Path | None) -> Path | None:
        if v is not None:
            try:
                load_dataset(v)  # refuse a bad file now, with its line number, not mid-study
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _check_ranges(self) -> Workload:
        for name in ("prompt_tokens", "output_tokens"):
            value, high = getattr(self, name), getattr(self, f"{name}_max")
            if high is None:
                continue
            if isinstance(value, Lengths):
                raise ValueError(f"{name}_max goes with a whole-number {name}; put max inside {name} instead")
            if high < value:
                raise ValueError(f"{name}_max must be >= {name}")
        if self.arrival in ("poisson", "gamma") and self.rate is None:
            raise ValueError(f"arrival '{self.arrival}' needs a rate (requests/s) > 0")
        if self.burstiness != 1.0 and self.arrival != "gamma":
            raise ValueError("burstiness shapes gamma arrivals: set arrival: gamma")
        return self

    @property
    def open_loop(self) -> bool:
        """Requests go at scheduled times (Poisson or gamma), not as others finish."""
        return self.arrival in ("poisson", "gamma")

    @property
    def prompt_lengths(self) -> Lengths:
        """``prompt_tokens`` as a distribution, whichever way it was written."""
        return _as_lengths(self.prompt_tokens, self.prompt_tokens_max)

    @property
    def output_lengths(self) -> Lengths:
        return _as_lengths(self.output_tokens, self.output_tokens_max)


def _as_lengths(value: int | Lengths, high: int | None) -> Lengths:
    if isinstance(value, Lengths):
        return value
    if high is None or high == value:
        return Lengths(dist="fixed", mean=value)
    return Lengths(dist="uniform", min=value, max=high)


@dataclass(frozen=True)
class RequestSpec:
    """One request, fixed before the run so that sending costs no tokenizer time."""

    prompt: str
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class DatasetEntry:
    """One line of a prompt dataset."""

    prompt: str
    output_tokens: int | None


def load_dataset(path: Path) -> list[DatasetEntry]:
    """The prompts of a JSONL file; any problem is one line naming the file and line."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise UserError(f"dataset {path} not found") from None
    return list(_load_dataset(path.resolve(), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=8)
def _load_dataset(path: Path, _mtime_ns: int, _size: int) -> tuple[DatasetEntry, ...]:
    # Keyed on mtime and size too: an edited file is read again.
    entries: list[DatasetEntry] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read dataset {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"dataset {path} line {number}"
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"{where}: not a JSON object") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: not a JSON object")
        unknown = sorted(set(row) - {"prompt", "output_tokens"})
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (expected prompt, output_tokens)")
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise UserError(f"{where}: 'prompt' must be a non-empty string")
        out = row.get("output_tokens")
        if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
            raise UserError(f"{where}: 'output_tokens' must be a whole number >= 1")
        entries.append(DatasetEntry(prompt, out))
    if not entries:
        raise UserError(f"dataset {path} holds no prompts")
    return tuple(entries)


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
