"""What a diagnosis is made of: a trial's signals, the thresholds the rules apply, and the verdict types.

Locate: name a trial's bottleneck from its signals, and say what to change next.

Each rule reads the figures a trial left behind (load-generator figures,
engine metrics, GPU telemetry, the configuration) and either stays silent or
returns a ``Diagnosis``: the bottleneck, the evidence that points to it (each
item a figure and its value, so a reader can check it), a confidence, and
the knobs to turn, in which direction. Rules are independent; several may
fire, ranked by confidence. A rule whose signals are missing stays silent
rather than guess (a CPU engine has no NVML figures, so the memory-bandwidth
and compute rules cannot speak there).

The study-level half is the parameter importances: which knobs moved the
objectives, by Optuna's fANOVA and PED-ANOVA evaluators.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping

__all__ = ["Advice", "Diagnosis", "Evidence", "Importance", "Rule", "Signals", "StudyDiagnosis", "TrialDiagnosis"]

Direction = Literal["increase", "decrease", "enable", "disable", "set"]

# Thresholds, in one place so that a reader can see what "near full" means.
KV_FULL = 0.90  # KV-cache usage (fraction) counted as full
KV_BUSY = 0.50  # usage above which blocked admissions are blamed on the cache
QUEUE_SHARE_HIGH = 0.50  # queue time as a share of the engine's time to first token
QUEUE_SHARE_SOME = 0.20
ITL_SPIKE = 5.0  # p99 / median inter-token latency
TTFT_SPIKE = 3.0  # p99 / median time to first token
BATCH_FULL = 0.9  # sequences per step, as a share of max_num_seqs, counted as full
STEP_SPREAD = 4.0  # p99 / mean tokens per engine step: a few large prefill steps among decode steps
MEM_BW_HIGH = 60.0  # NVML memory utilisation (% of time the DRAM was busy)
SM_HIGH = 85.0  # NVML GPU utilisation (% of time a kernel ran)
MEM_BW_LOW = 50.0
PCIE_BUSY_GBPS = 10.0  # per GPU, both directions: a large share of a x16 link
CLIENT_CPU_BUSY = 0.90  # load-generator CPU seconds per wall second (one core)
CLIENT_STARVED_S = 0.5  # a sampler thread waking this late: the client process did not get a core
RATE_SHORTFALL = 0.90  # sends against the schedule (1.0: on time)
FRONTEND_GAP_MS = 50.0  # client TTFT minus the engine's own TTFT
FRONTEND_SHARE = 0.5
FIRE = 0.4  # a rule reports when its score reaches this


@dataclass
class Evidence:
    """One signal behind a diagnosis: the figure's name, its value, and what it says."""

    signal: str
    value: float | None
    text: str


@dataclass
class Advice:
    """What to change next: a knob and a direction, or (knob None) something outside the engine."""

    knob: str | None
    direction: Direction | None
    text: str


@dataclass
class Diagnosis:
    bottleneck: str  # kv_cache, queueing, prefill_interference, memory_bandwidth, compute, communication, load_generator, frontend, headroom
    title: str
    confidence: float  # 0..1: how much of the rule's evidence is present
    evidence: list[Evidence] = field(default_factory=list)
    advice: list[Advice] = field(default_factory=list)


@dataclass
class TrialDiagnosis:
    trial: int | None
    config: dict[str, Any]
    diagnoses: list[Diagnosis]
    missing: list[str] = field(default_factory=list)  # signal groups that were not there to judge
    startup: dict[str, Any] | None = None  # the engine start's phases, from its own log

    @property
    def primary(self) -> Diagnosis | None:
        return self.diagnoses[0] if self.diagnoses else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Importance:
    evaluator: str  # "fanova" or "ped_anova"
    objective: str
    importances: dict[str, float]


@dataclass
class StudyDiagnosis:
    study: str
    trials: list[TrialDiagnosis]
    importances: list[Importance]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Signals:
    """Everything one trial left behind, read by name: telemetry first, then load figures."""

    def __init__(
        self,
        figures: Mapping[str, Any] | None = None,
        telemetry: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
    ) -> None:
        self.figures = dict(figures or {})
        self.telemetry = dict(telemetry or {})
        self.config = dict(config or {})
        self.environment = dict(environment or {})

    def get(self, name: str) -> float | None:
        for source in (self.telemetry, self.figures):
            value = source.get(name)
            if isinstance(value, bool):
                return float(value)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
        return None

    def knob(self, name: str) -> Any:
        return self.config.get(name)

    @property
    def on_gpu(self) -> bool:
        if self.environment.get("device") in ("cpu", "cuda"):
            return self.environment["device"] == "cuda"
        return self.get("gpu_count") is not None or "kv_cache_space_gib" not in self.config

    @property
    def max_num_seqs(self) -> float | None:
        value = self.knob("max_num_seqs")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def gpus_per_replica(self) -> int:
        tp = self.knob("tensor_parallel_size") or 1
        pp = self.knob("pipeline_parallel_size") or 1
        try:
            return int(tp) * int(pp)
        except (TypeError, ValueError):
            return 1


Rule = Callable[[Signals], "Diagnosis | None"]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 10 or x == int(x) else f"{x:,.2f}"


# --------------------------------------------------------------------------- rules


