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
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from autotune.errors import UserError

__all__ = ["MAX_REQUESTS", "MAX_TOKENS", "DatasetEntry", "Lengths", "RequestSpec", "Workload", "load_dataset"]

#: No model holds more tokens than this in one request; a larger length is a typo,
#: and building its prompts would exhaust memory long before any engine saw them.
MAX_TOKENS = 10_000_000
#: Prompts are built before a run starts, all of them in memory: beyond this a count is a typo.
MAX_REQUESTS = 1_000_000


class Lengths(BaseModel):
    """A token-length distribution, drawn per request and rounded to whole tokens.

    ``fixed``: always ``mean``.  ``uniform``: any integer in ``[min, max]``.
    ``normal`` and ``lognormal``: ``mean`` and ``std`` are those of the lengths
    themselves (not of their logarithm), and draws outside ``[min, max]`` are
    clipped to the nearest bound, so ``min`` and ``max`` also bound the tails
    of a heavy lognormal.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dist: Literal["fixed", "uniform", "normal", "lognormal"]
    mean: float | None = Field(default=None, gt=0, le=MAX_TOKENS)
    std: float | None = Field(default=None, ge=0)
    min: int = Field(default=1, ge=1, le=MAX_TOKENS)
    max: int | None = Field(default=None, ge=1, le=MAX_TOKENS)

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

    @property
    def longest(self) -> int | None:
        """The longest draw possible; None for a normal or lognormal tail with no ``max``."""
        if self.dist == "fixed":
            return int(self.mean or 0)
        return self.max


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

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt_tokens: LengthField = Field(default=128)
    prompt_tokens_max: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    output_tokens: LengthField = Field(default=64)
    output_tokens_max: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    shared_prefix_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    dataset: Path | None = None
    arrival: Literal["concurrency", "poisson", "gamma"] = "concurrency"
    burstiness: float = Field(default=1.0, gt=0)
    concurrency: int = Field(default=16, ge=1)
    rate: float | None = Field(default=None, gt=0)
    num_requests: int = Field(default=64, ge=1, le=MAX_REQUESTS)
    duration_s: float | None = Field(default=None, gt=0)
    warmup_requests: int = Field(default=4, ge=0, le=MAX_REQUESTS)
    request_timeout_s: float = Field(default=120.0, gt=0)
    seed: int = Field(default=0, ge=0)

    @field_validator("prompt_tokens", "output_tokens")
    @classmethod
    def _positive(cls, v: int | Lengths) -> int | Lengths:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 token")
        if isinstance(v, int) and v > MAX_TOKENS:
            raise ValueError(f"{v} tokens is beyond any model's context (at most {MAX_TOKENS:,})")
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

    def overflow(self, context: int, where: str = "max_model_len") -> str | None:
        """Why the longest request would not fit a context of ``context`` tokens, or None.

        Every such request would be refused by the engine; refused up front, a
        study costs one line instead of a run of failed trials. A dataset's
        prompt lengths are not known before tokenizing and are not judged here.
        """
        prompt = None if self.dataset is not None else self.prompt_lengths.longest
        output = self.output_lengths.longest
        if prompt is None or output is None:
            return None
        total = self.shared_prefix_tokens + prompt + output
        if total <= context:
            return None
        prefix = f"shared prefix {self.shared_prefix_tokens} + " if self.shared_prefix_tokens else ""
        return (f"workload: requests of up to {prefix}prompt {prompt} + output {output} = {total} tokens "
                f"do not fit {where} {context}")


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

