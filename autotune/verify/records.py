"""What a verification keeps: each fresh start, each SLO judged, stored in the study's own storage."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from autotune.cost import COST_KEY, cost_per_1k_tokens
from autotune.json_safe import json_safe
from autotune.load.goodput import wilson_interval
from autotune.load.stats import Summary
from autotune.measure import KEY_FIGURES
from autotune.tuning import StudyResults

SHOWN_FIGURES = [
    "goodput", "output_throughput", "request_throughput", COST_KEY, "p50_ttft_ms", "p99_ttft_ms",
    "mean_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "startup_s",
]


@dataclass
class Start:
    """One fresh start of the engine and one measurement on it."""

    status: str  # "ok" or "failed" (a failed start, a crash, every request failed)
    reason: str | None = None
    figures: dict[str, float] = field(default_factory=dict)
    attainment: dict[str, list[int]] = field(default_factory=dict)  # SLO text -> [met, requests]
    folder: str | None = None
    finished_at: str | None = None
    seed_offset: int | None = None  # its prompts and arrival schedule (None: kept before starts drew their own)


@dataclass
class Check:
    """One SLO judged with confidence."""

    slo: str
    basis: str  # what was compared with the limit, in words
    value: float | None  # the bound compared (ms for latencies, a fraction for attainment)
    limit: float
    unit: str
    holds: bool
    reason: str | None = None


@dataclass
class Verification:
    trial: int
    config: dict[str, Any]
    command: str | None
    repeats_wanted: int
    starts: list[Start] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    slo: str = ""
    price_per_gpu_hour: float | None = None
    gpus: int = 1  # GPUs the configuration occupies, for its cost
    checks: list[Check] = field(default_factory=list)
    verified: bool = False
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    updated_at: str | None = None
    # A goodput search on each start begins at the study's reading of this configuration, one
    # resolution step first (None: the study's own search, as verifications stored before it began).
    search_from: float | None = None
    # Each start searched its goodput in this unit: its SLOs were judged by its own level test
    # (``autotune.verify.judge``), so a re-judgement of the record applies the same rule.
    goodput_unit: str | None = None
    # Each start draws its own prompts and arrival schedule, start i the same for every configuration
    # (``autotune.verify.run.schedule_of``), so the spread over starts holds the arrival process's and
    # the configurations still meet the same traffic. False: every start replayed the study's schedule.
    own_schedules: bool = False
    # Perplexity and pass-key figures of the configuration's quality setting, as the
    # study measured them once (they depend on the setting, not on the start).
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def ok_starts(self) -> list[Start]:
        return [s for s in self.starts if s.status == "ok"]

    def summary(self) -> dict[str, Summary]:
        """Mean, std and 95% interval of each figure over the starts that measured.

        Cost comes from each start's throughput and the price given now, so a price
        added after the starts were measured still yields a cost with its interval.
        """
        ok = self.ok_starts
        figures = [dict(s.figures) for s in ok]
        for f in figures:
            cost = cost_per_1k_tokens(f.get("output_throughput"), self.gpus, self.price_per_gpu_hour)
            f.pop(COST_KEY, None)
            if cost is not None:
                f[COST_KEY] = cost
        keys = [k for k in [*SHOWN_FIGURES, *KEY_FIGURES] if any(k in f for f in figures)]
        keys = list(dict.fromkeys(keys))
        return {k: Summary.of([f[k] for f in figures if f.get(k) is not None]) for k in keys}

    def attainment(self) -> dict[str, tuple[int, int, float, float]]:
        """Per attainment SLO: requests met, requests, and the Wilson 95% interval, pooled."""
        out: dict[str, tuple[int, int, float, float]] = {}
        for text in dict.fromkeys(t for s in self.ok_starts for t in s.attainment):
            met = sum(s.attainment[text][0] for s in self.ok_starts if text in s.attainment)
            n = sum(s.attainment[text][1] for s in self.ok_starts if text in s.attainment)
            lo, hi = wilson_interval(met, n)
            out[text] = (met, n, lo, hi)
        return out

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["summary"] = {k: s.to_json() for k, s in self.summary().items()}
        out["attainment"] = {k: {"met": m, "n": n, "wilson95": [lo, hi]} for k, (m, n, lo, hi) in self.attainment().items()}
        return json_safe(out)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Verification":
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["starts"] = [Start(**s) for s in data.get("starts", [])]
        fields["checks"] = [Check(**c) for c in data.get("checks", [])]
        return cls(**fields)


def stored(results: StudyResults) -> dict[int, Verification]:
    """Verifications kept in the study's storage, by trial number."""
    out = {}
    for number, value in results.verifications().items():
        try:
            out[number] = Verification.from_json(value)
        except (TypeError, ValueError):
            continue
    return out


def save(results: StudyResults, result: Verification) -> None:
    """Stored after every start, so an interrupted verification keeps what it measured."""
    result.updated_at = _now()
    results.save_verification(result.trial, result.to_json())


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
