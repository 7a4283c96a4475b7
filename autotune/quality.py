"""Quality of a served model: perplexity over a fixed corpus and pass-key retrieval.

Speed bought by quantizing the weights or the KV cache is worth nothing if the
answers degrade, so a study can bound quality the way it bounds latency
(``ppl<+5%``, ``passkey@1k>=0.9``). Both figures are measured through the
engine's own server, on the configuration being tuned:

- **Perplexity** from the engine's logprobs of the prompt tokens
  (``prompt_logprobs`` on ``/v1/completions``, one generated token), over the
  held-out text in ``autotune/data/corpus``, sent as token ids so that the
  tokens scored are exactly the ones counted. The text is cut into windows,
  each ``BOS`` plus at most ``window - 1`` tokens, no longer than the served
  context allows. An engine that cannot return prompt logprobs gets the figure
  from transformers on the same weights and dtype, labelled ``offline``.
- **Pass-key retrieval** (Mohtashami and Jaggi, 2023): a five-digit key hidden
  at a chosen depth in filler text of an exact token length, then asked for;
  greedy decoding must give it back. Accuracy per length, over several depths.

A measurement depends only on the quality-relevant settings (the knobs marked
``quality: true`` in the search space), so the study measures each setting once
and every trial sharing it reuses the figures (``autotune/tuning/quality_cache.py``).
"""

from __future__ import annotations

import json
import math
import random
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from autotune.spec import Constraint, Objective

CORPUS = Path(__file__).resolve().parent / "data" / "corpus" / "heldout.txt"

#: Longest perplexity window: long enough for context to matter, short enough for small models.
PPL_WINDOW = 1024
#: Tokens of the corpus scored at most (the shipped text is about 15K tokens of the tiny tokenizers).
PPL_MAX_TOKENS = 16384

#: Depths (fraction of the filler before the key) tried at every pass-key length.
PASSKEY_DEPTHS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
#: Keys per (length, depth).
PASSKEY_KEYS_PER_DEPTH = 2
#: Shortest length of the default ladder (lengths double up to the served context).
PASSKEY_MIN_LENGTH = 256
#: Tokens kept free after a pass-key prompt for the answer.
PASSKEY_ANSWER_ROOM = 16

_PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there."
)
_PASSKEY_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
_PASSKEY_QUESTION = " What is the pass key? The pass key is"


class QualityError(RuntimeError):
    """The server did not give what a quality figure needs (an error, no logprobs)."""


# --------------------------------------------------------------------------- what to measure


@dataclass(frozen=True)
class QualityPlan:
    """Which quality figures a study needs: perplexity, and pass-key accuracy at which lengths.

    ``passkey_lengths`` empty with ``passkey`` True means the default ladder
    (powers of two from 256 up to the served context).
    """

    perplexity: bool = False
    passkey: bool = False
    passkey_lengths: tuple[int, ...] = ()

    @property
    def needed(self) -> bool:
        return self.perplexity or self.passkey


def plan_for(constraints: Iterable[Constraint], objectives: Iterable[Objective] = ()) -> QualityPlan:
    """The figures the SLOs and objectives read; nothing is measured that nothing reads."""
    ppl = passkey = False
    lengths: set[int] = set()
    for c in constraints:
        if c.kind == "quality":
            ppl = True
        elif c.kind == "passkey":
            passkey = True
            if c.stat is not None:
                lengths.add(int(c.stat))
    for o in objectives:
        if o.metric.startswith("ppl"):
            ppl = True
        elif o.metric.startswith("passkey"):
            passkey = True
    return QualityPlan(perplexity=ppl, passkey=passkey, passkey_lengths=tuple(sorted(lengths)))


def passkey_ladder(max_model_len: int, extra: Iterable[int] = ()) -> list[int]:
    """Powers of two from 256 while a prompt and its answer fit the served context,
    plus the lengths the SLOs name (those that do not fit are reported as unmeasurable)."""
    lengths = set(extra)
    length = PASSKEY_MIN_LENGTH
    while length + PASSKEY_ANSWER_ROOM <= max_model_len:
        lengths.add(length)
        length *= 2
    return sorted(lengths)


# --------------------------------------------------------------------------- settings and reuse


def quality_knobs(space: Any) -> list[str]:
    """Names of the knobs that change the model's answers (``quality: true``)."""
    return sorted(name for name, knob in space.knobs.items() if getattr(knob, "quality", False))


def setting_key(config: Mapping[str, Any], knobs: Sequence[str]) -> str:
    """The quality-relevant part of a configuration, as a stable string key."""
    return json.dumps({k: config.get(k) for k in sorted(knobs)}, sort_keys=True)


def baseline_value(knob: Any) -> Any:
    """The setting that leaves the model as its checkpoint is: no quantization (None),
    the KV cache in the model's dtype ("auto"); else the knob's first choice."""
    choices = list(knob.choices or [])
    if None in choices or not choices:
        return None
    for neutral in ("auto", "none"):
        if neutral in choices:
            return neutral
    return choices[0]


def baseline_config(config: Mapping[str, Any], space: Any) -> dict[str, Any]:
    """The configuration with every quality knob at its baseline; the rest unchanged."""
    out = dict(config)
    for name in quality_knobs(space):
        out[name] = baseline_value(space.knobs[name])
    return out


# --------------------------------------------------------------------------- HTTP


def _post(base_url: str, path: str, body: Mapping[str, Any], api_key: str | None, timeout_s: float) -> Any:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(base_url + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise QualityError(f"{path} answered HTTP {e.code}: {' '.join(detail.split())}") from None
    except OSError as e:
        raise QualityError(f"{path} failed: {e}") from None


# --------------------------------------------------------------------------- perplexity


@dataclass(frozen=True)
class Perplexity:
    """exp(mean negative log-likelihood) over ``tokens`` scored tokens in ``windows`` windows."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    source: str  # "server": the engine's logprobs; "offline": transformers on the same weights

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def corpus_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The model's own tokenizer, ids exactly as the server counts them (special tokens included)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))


def bos_id(model_dir: str | Path) -> int | None:
    """The model's BOS token id (config.json), which every window starts with."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("bos_token_id")
    return int(value) if isinstance(value, int) else None


def corpus_windows(
    tokenizer: Tokenizer, bos: int | None, window: int, *, max_tokens: int = PPL_MAX_TOKENS, text: str | None = None
) -> list[list[int]]:
    """The corpus as consecutive windows of ``window`` ids, each starting with BOS.

    Non-overlapping, so every corpus token is scored once; the last, shorter
    window is kept when it holds at least a quarter of a window.
    """
    if window < 8:
        raise ValueError(f"perplexity window {window} is too short")
    ids = tokenizer.encode(text if text is not None else CORPUS.read_text(), add_special_tokens=False).ids
    ids = ids[:max_tokens]
    step = window - (1 if bos is not None else 0)
    out = []
    for start in range(0, len(ids), step):
        chunk = ids[start : start + step]
        if len(chunk) < max(8, step // 4) and out:
            break
        out.append(([bos] if bos is not None else []) + chunk)
    return out


def server_perplexity(
    base_url: str, model: str, windows: Sequence[Sequence[int]], *, api_key: str | None = None,
    timeout_s: float = 300.0,
) -> Perplexity:
    """From the engine's own prompt logprobs: the logprob it gives each prompt token
    after the ones before it (vLLM's ``prompt_logprobs``, an extension to the
    OpenAI API, always returns the actual token beside the top-k)."""
    total, count = 0.0, 0
    for ids in windows:
        body = {
            "model": model, "prompt": list(ids), "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0,
        }
        reply = _post(base_url, "/v1/completions", body, api_key, timeout_s)
        try:
            entries = reply["choices"][0]["prompt_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise QualityError("the server returned no prompt_logprobs") from None
        if not isinstance(entries, list) or len(entries) != len(ids):
            raise QualityError(f"prompt_logprobs has {len(entries or [])} entries for {len(ids)} prompt tokens")
        for position in range(1, len(ids)):
            entry = entries[position] or {}
            scored = entry.get(str(ids[position]))
            if scored is None:
                raise QualityError(f"no logprob for prompt token {ids[position]} at position {position}")
            total -= float(scored["logprob"] if isinstance(scored, dict) else scored)
            count += 1
    return _perplexity(total, count, len(windows), "server")


def offline_perplexity(model_dir: str | Path, windows: Sequence[Sequence[int]], dtype: str | None = None) -> Perplexity:
    """transformers on the same weights, in ``dtype`` (the checkpoint's when None), on the CPU
    unless a GPU is there; log-softmax in float32, as the engines compute logprobs."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = _torch_dtype(model_dir, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype).to(device)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            x = torch.tensor([list(ids)], dtype=torch.long, device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            picked = logprobs.gather(1, x[0, 1:].unsqueeze(1))
            total -= float(picked.sum())
            count += len(ids) - 1
    return _perplexity(total, count, len(windows), "offline")


def _torch_dtype(model_dir: str | Path, dtype: str | None) -> Any:
    import torch

    name = dtype if dtype not in (None, "auto") else None
    if name is None:
        try:
            config = json.loads((Path(model_dir) / "config.json").read_text())
            name = config.get("dtype") or config.get("torch_dtype") or "float32"
        except (OSError, ValueError):
            name = "float32"
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32", "fp32": "float32"}
    return getattr(torch, aliases.get(str(name), str(name)))


def _perplexity(total_nll: float, count: int, windows: int, source: str) -> Perplexity:
    if count == 0:
        raise QualityError("no tokens were scored")
    nll = total_nll / count
    return Perplexity(ppl=math.exp(nll), nll=nll, tokens=count, windows=windows, source=source)


# --------------------------------------------------------------------------- pass-key retrieval


class PasskeyBuilder:
    """Pass-key prompts of an exact token length: BOS, the intro, filler cut at a token
    boundary around the needle, then the question. Pieces are tokenised separately and
    joined as ids, so the length is exact whatever the tokenizer does at the seams."""

    def __init__(self, tokenizer: Tokenizer, bos: int | None) -> None:
        self.tokenizer = tokenizer
        self.head = ([bos] if bos is not None else []) + self._ids(_PASSKEY_INTRO)
        self.question = self._ids(_PASSKEY_QUESTION)
        self.filler_unit = self._ids(_PASSKEY_FILLER)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    @staticmethod
    def random_key(rng: random.Random) -> str:
        return str(rng.randint(10000, 99999))

    def prompt(self, length: int, depth: float, key: str) -> tuple[list[int], list[int]]:
        """(prompt ids of exactly ``length`` tokens, ids of the expected answer)."""
        needle = self._ids(_PASSKEY_NEEDLE.format(key=key))
        filler_len = length - len(self.head) - len(needle) - len(self.question)
        if filler_len < 0:
            raise ValueError(f"pass-key length {length} is shorter than the prompt's fixed parts")
        repeats = filler_len // len(self.filler_unit) + 1
        filler = (self.filler_unit * repeats)[:filler_len]
        before = round(filler_len * min(max(depth, 0.0), 1.0))
        ids = self.head + filler[:before] + needle + filler[before:] + self.question
        assert len(ids) == length
        return ids, self._ids(f" {key}")


@dataclass
class PasskeyResult:
    """Accuracy per length (the share of prompts whose greedy answer starts with the key)."""

    accuracy: dict[int, float] = field(default_factory=dict)
    trials: dict[int, int] = field(default_factory=dict)
    unmeasurable: list[int] = field(default_factory=list)  # longer than the served context allows

    @property
    def overall(self) -> float:
        done = sum(self.trials.values())
        return sum(self.accuracy[n] * self.trials[n] for n in self.accuracy) / done if done else math.nan


def server_passkey(
    base_url: str, model: str, builder: PasskeyBuilder, lengths: Sequence[int], max_model_len: int, *,
    token_ids: bool = True, api_key: str | None = None, seed: int = 0, timeout_s: float = 300.0,
) -> PasskeyResult:
    """Greedy answers from the server. Without token-id prompts the ids are decoded to
    text (BOS left to the server), so the length is then only as exact as re-tokenising."""
    rng = random.Random(seed)
    result = PasskeyResult()
    for length in lengths:
        if length + PASSKEY_ANSWER_ROOM > max_model_len:
            result.unmeasurable.append(length)
            continue
        hits = n = 0
        for depth in PASSKEY_DEPTHS:
            for _ in range(PASSKEY_KEYS_PER_DEPTH):
                key = builder.random_key(rng)
                ids, answer = builder.prompt(length, depth, key)
                prompt: Any = ids if token_ids else builder.tokenizer.decode(ids[1:], skip_special_tokens=False)
                body = {
                    "model": model, "prompt": prompt, "max_tokens": len(answer) + 2, "temperature": 0.0,
                }
                reply = _post(base_url, "/v1/completions", body, api_key, timeout_s)
                try:
                    text = reply["choices"][0]["text"]
                except (KeyError, IndexError, TypeError):
                    raise QualityError("the server returned no completion text") from None
                hits += text.strip().startswith(key)
                n += 1
        result.accuracy[length] = hits / n
        result.trials[length] = n
    return result


# --------------------------------------------------------------------------- one measurement


@dataclass
class QualityResult:
    """Figures (numbers, as SLOs read them) and how they were obtained."""

    figures: dict[str, float]
    info: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"figures": self.figures, "info": self.info}


def passkey_figure(length: int | None) -> str:
    """Figure key of pass-key accuracy at one length, or over all lengths."""
    return "passkey_acc" if length is None else f"passkey_acc_{length}"


def measure_quality(
    base_url: str, model: str, model_dir: str | Path, plan: QualityPlan, *, max_model_len: int,
    prompt_logprobs: bool = True, token_ids: bool = True, dtype: str | None = None,
    api_key: str | None = None, seed: int = 0,
) -> QualityResult:
    """Everything ``plan`` asks for, on the server at ``base_url``."""
    tokenizer = corpus_tokenizer(model_dir)
    bos = bos_id(model_dir)
    figures: dict[str, float] = {}
    info: dict[str, Any] = {}
    if plan.perplexity:
        window = min(PPL_WINDOW, max_model_len - 1)
        windows = corpus_windows(tokenizer, bos, window)
        if prompt_logprobs and token_ids:
            ppl = server_perplexity(base_url, model, windows, api_key=api_key)
        else:  # the engine cannot score prompt tokens: same weights and dtype, offline
            ppl = offline_perplexity(model_dir, windows, dtype)
        figures.update({"ppl": ppl.ppl, "ppl_tokens": float(ppl.tokens)})
        info["perplexity"] = {**ppl.to_json(), "window": window, "corpus": CORPUS.name}
    if plan.passkey:
        lengths = passkey_ladder(max_model_len, plan.passkey_lengths)
        pk = server_passkey(
            base_url, model, PasskeyBuilder(tokenizer, bos), lengths, max_model_len,
            token_ids=token_ids, api_key=api_key, seed=seed,
        )
        for length, acc in pk.accuracy.items():
            figures[passkey_figure(length)] = acc
        for length in pk.unmeasurable:
            figures[passkey_figure(length)] = math.nan  # breaks any bound on it, never meets one
        figures[passkey_figure(None)] = pk.overall
        info["passkey"] = {
            "accuracy": {str(k): v for k, v in pk.accuracy.items()},
            "prompts": {str(k): v for k, v in pk.trials.items()},
            "unmeasurable": pk.unmeasurable,
            "depths": list(PASSKEY_DEPTHS),
            "token_ids": token_ids,
        }
    return QualityResult(figures, info)


def relative_to_baseline(figures: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """``ppl_rel_change``: this setting's perplexity over the baseline's, minus one."""
    ppl, base = figures.get("ppl"), baseline.get("ppl")
    if ppl is None or base is None or not base:
        return {}
    return {"ppl_baseline": float(base), "ppl_rel_change": float(ppl) / float(base) - 1.0}
