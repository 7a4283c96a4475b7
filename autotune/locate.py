"""Locate: name a trial's bottleneck from its signals, and say what to change next.

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
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

__all__ = [
    "Advice",
    "Diagnosis",
    "Evidence",
    "Importance",
    "Signals",
    "StudyDiagnosis",
    "TrialDiagnosis",
    "RULES",
    "diagnose",
    "locate_study",
    "locate_trial",
    "parameter_importances",
]

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


def rule_kv_cache(s: Signals) -> Diagnosis | None:
    kv, pre = s.get("kv_cache_usage_peak"), s.get("preemptions")
    waiting, running, mns = s.get("waiting_peak"), s.get("running_peak"), s.max_num_seqs
    score, ev = 0.0, []
    if pre is not None and pre > 0:
        score += 0.6
        ev.append(Evidence("preemptions", pre, f"{_n(pre)} preemption(s): running requests were evicted to free KV blocks"))
    if kv is not None and kv >= KV_FULL:
        score += 0.3
        ev.append(Evidence("kv_cache_usage_peak", kv, f"KV-cache usage peaked at {_pct(kv)}"))
    slots_free = waiting is not None and running is not None and mns is not None and waiting > 0 and running < mns
    batch, share = s.get("batch_mean"), s.get("queue_share_of_ttft")
    if not slots_free and batch is not None and mns is not None and share is not None and (pre or (kv or 0) >= KV_BUSY):
        if batch < 0.5 * mns and share >= QUEUE_SHARE_HIGH:
            score += 0.2
            ev.append(Evidence(
                "batch_mean", batch,
                f"engine steps ran {batch:.1f} of {_n(mns)} sequence slots on average while queueing took "
                f"{_pct(share)} of the time to first token",
            ))
    if slots_free and kv is not None and kv >= KV_BUSY:
        assert waiting is not None and running is not None and mns is not None
        score += 0.4
        if kv < KV_FULL:
            ev.append(Evidence("kv_cache_usage_peak", kv, f"KV-cache usage peaked at {_pct(kv)}"))
        ev.append(Evidence(
            "waiting_peak", waiting,
            f"up to {_n(waiting)} request(s) waited while at most {_n(running)} of {_n(mns)} sequence slots "
            "were in use: admission was held back by free KV blocks, not by max_num_seqs",
        ))
    if score < FIRE:
        return None
    advice = [
        Advice("kv_cache_space_gib", "increase", "give the engine more KV-cache memory")
        if not s.on_gpu
        else Advice("gpu_memory_utilization", "increase", "leave more GPU memory to the KV cache"),
    ]
    dtype = s.knob("kv_cache_dtype")
    if (s.on_gpu or dtype is not None) and not str(dtype or "").startswith("fp8"):
        advice.append(Advice("kv_cache_dtype", "set", "fp8 KV cache: twice the tokens in the same memory (bound the quality)"))
    if s.on_gpu:
        advice.append(Advice("tensor_parallel_size", "increase", "more GPUs per replica: more memory for KV blocks"))
    if pre:
        advice.append(Advice("max_num_seqs", "decrease", "admit fewer sequences than the cache can hold to the end, so none is preempted"))
    if s.knob("enable_prefix_caching") is False:
        advice.append(Advice("enable_prefix_caching", "enable", "shared prompt prefixes then share KV blocks"))
    return Diagnosis("kv_cache", "KV-cache capacity", min(1.0, score), ev, advice)


def rule_queueing(s: Signals) -> Diagnosis | None:
    share, waiting, running, mns = s.get("queue_share_of_ttft"), s.get("waiting_peak"), s.get("running_peak"), s.max_num_seqs
    kv, queue_ms = s.get("kv_cache_usage_peak"), s.get("queue_time_mean_ms")
    score, ev, advice = 0.0, [], []
    batch = s.get("batch_mean")
    seen_full = waiting is not None and running is not None and mns is not None and waiting > 0 and running >= mns
    # The polls may miss the moment; the counters do not: steps that always ran every slot, with a queue.
    steps_full = (
        batch is not None and mns is not None and batch >= BATCH_FULL * mns
        and share is not None and share >= QUEUE_SHARE_SOME
    )
    slots_full = seen_full or steps_full
    kv_blocked = (
        waiting is not None and running is not None and mns is not None and waiting > 0 and running < mns
        and kv is not None and kv >= KV_BUSY
    )
    if seen_full:
        assert waiting is not None and mns is not None
        ev.append(Evidence(
            "waiting_peak", waiting,
            f"all {_n(mns)} sequence slot(s) busy (max_num_seqs) with up to {_n(waiting)} request(s) waiting",
        ))
    if steps_full:
        assert batch is not None and mns is not None
        ev.append(Evidence(
            "batch_mean", batch,
            f"engine steps ran {batch:.1f} sequences on average: max_num_seqs={_n(mns)} was full throughout",
        ))
    if slots_full:
        score += 0.5
        advice.append(Advice("max_num_seqs", "increase", "let more requests run in one batch"))
    if share is not None and not kv_blocked:
        if share >= QUEUE_SHARE_HIGH:
            score += 0.4
        elif share >= QUEUE_SHARE_SOME:
            score += 0.2
        if share >= QUEUE_SHARE_SOME:
            text = f"queueing took {_pct(share)} of the time to first token (engine histograms)"
            if queue_ms is not None:
                text += f", {_n(queue_ms)} ms on average"
            ev.append(Evidence("queue_share_of_ttft", share, text))
    if score < FIRE:
        return None
    budget = s.knob("max_num_batched_tokens")
    step_p99 = s.get("iteration_tokens_p99")
    if isinstance(budget, (int, float)) and step_p99 is not None and step_p99 >= 0.9 * budget:
        ev.append(Evidence("iteration_tokens_p99", step_p99, f"engine steps reach the token budget ({_n(budget)})"))
        advice.append(Advice("max_num_batched_tokens", "increase", "a larger step budget admits prefills sooner"))
    if not slots_full:
        advice.append(Advice(None, None, "the offered load exceeds this configuration's capacity: a faster configuration or another replica"))
    return Diagnosis("queueing", "Queueing before the first step", min(1.0, score), ev, advice)


def rule_prefill_interference(s: Signals) -> Diagnosis | None:
    itl_p99, itl_med = s.get("p99_itl_ms"), s.get("median_itl_ms")
    ttft_p99, ttft_med = s.get("p99_ttft_ms"), s.get("median_ttft_ms")
    step_p99, step_mean = s.get("iteration_tokens_p99"), s.get("iteration_tokens_mean")
    if None in (itl_p99, itl_med, ttft_p99, ttft_med) or not itl_med or not ttft_med:
        return None
    assert itl_p99 is not None and itl_med is not None and ttft_p99 is not None and ttft_med is not None
    itl_ratio, ttft_ratio = itl_p99 / itl_med, ttft_p99 / ttft_med
    score, ev = 0.0, []
    if itl_ratio >= ITL_SPIKE:
        score += 0.3
        ev.append(Evidence("p99_itl_ms", itl_p99, f"p99 inter-token latency {_n(itl_p99)} ms is {itl_ratio:.0f}x the median"))
    if ttft_ratio >= TTFT_SPIKE:
        score += 0.2
        ev.append(Evidence("p99_ttft_ms", ttft_p99, f"p99 time to first token {_n(ttft_p99)} ms is {ttft_ratio:.0f}x the median"))
    if step_p99 is not None and step_mean and step_p99 / step_mean >= STEP_SPREAD:
        score += 0.2
        ev.append(Evidence(
            "iteration_tokens_p99", step_p99,
            f"engine steps of up to {_n(step_p99)} tokens against {_n(step_mean)} on average: prefills share steps with decodes",
        ))
    if itl_ratio < ITL_SPIKE or ttft_ratio < TTFT_SPIKE or score < FIRE:
        return None  # the signature is both spiking together
    advice = [
        Advice("max_num_batched_tokens", "decrease", "smaller prefill chunks stall running decodes for less time (ITL); raise it instead if TTFT matters more"),
    ]
    return Diagnosis("prefill_interference", "Prefill interfering with decode", min(1.0, score), ev, advice)


def rule_memory_bandwidth(s: Signals) -> Diagnosis | None:
    bw, sm = s.get("mem_bw_util_mean"), s.get("sm_util_mean")
    if bw is None:
        return None
    score, ev = 0.0, []
    if bw >= MEM_BW_HIGH:
        score += 0.5
        ev.append(Evidence("mem_bw_util_mean", bw, f"device memory busy {bw:.0f}% of the time (NVML)"))
    step, running = s.get("iteration_tokens_mean"), s.get("running_mean")
    if step is not None and running and step <= 2 * running:
        score += 0.2
        ev.append(Evidence("iteration_tokens_mean", step, f"{_n(step)} tokens per step for {_n(running)} running requests: decode-dominated"))
    if score < FIRE or bw < MEM_BW_HIGH:
        return None
    if sm is not None:
        ev.append(Evidence("sm_util_mean", sm, f"kernels ran {sm:.0f}% of the time"))
    advice = [
        Advice("max_num_seqs", "increase", "larger decode batches read the weights once for more tokens"),
        Advice("quantization", "set", "fp8 weights halve the bytes read per token (bound the quality)"),
        Advice("kv_cache_dtype", "set", "fp8 KV cache halves the KV bytes read per token"),
    ]
    return Diagnosis("memory_bandwidth", "Memory-bandwidth-bound decode", min(1.0, score), ev, advice)


def rule_compute(s: Signals) -> Diagnosis | None:
    sm, bw = s.get("sm_util_mean"), s.get("mem_bw_util_mean")
    if sm is None or sm < SM_HIGH or (bw is not None and bw >= MEM_BW_HIGH):
        return None
    score, ev = 0.5, [Evidence("sm_util_mean", sm, f"kernels ran {sm:.0f}% of the time (NVML)")]
    if bw is not None and bw < MEM_BW_LOW:
        score += 0.2
        ev.append(Evidence("mem_bw_util_mean", bw, f"device memory busy only {bw:.0f}% of the time"))
    step, running = s.get("iteration_tokens_mean"), s.get("running_mean")
    if step is not None and running and step > 4 * running:
        score += 0.2
        ev.append(Evidence("iteration_tokens_mean", step, f"{_n(step)} tokens per step: prefill-heavy"))
    advice = [
        Advice("quantization", "set", "fp8 runs on the faster FP8 tensor cores (bound the quality)"),
        Advice("tensor_parallel_size", "increase", "spread the arithmetic over more GPUs"),
    ]
    if s.knob("enable_prefix_caching") is False:
        advice.append(Advice("enable_prefix_caching", "enable", "skip recomputing shared prefixes"))
    return Diagnosis("compute", "Compute-bound", min(1.0, score), ev, advice)


def rule_communication(s: Signals) -> Diagnosis | None:
    gpus = s.gpus_per_replica
    if gpus <= 1:
        return None
    score, ev = 0.0, []
    share = s.get("allreduce_share")
    if share is not None and share >= 0.2:
        score += 0.5
        ev.append(Evidence("allreduce_share", share, f"all-reduce took {_pct(share)} of step time"))
    pcie = sum(v for v in (s.get("pcie_tx_gbps_mean"), s.get("pcie_rx_gbps_mean")) if v is not None)
    nvlink = s.get("nvlink_tx_gbps_mean")
    if pcie / gpus >= PCIE_BUSY_GBPS:
        score += 0.4 if nvlink is None or nvlink == 0 else 0.2
        ev.append(Evidence("pcie_tx_gbps_mean", pcie, f"{pcie:.1f} GB/s of PCIe traffic over {gpus} GPUs"))
    if nvlink is not None and nvlink > 0:
        ev.append(Evidence("nvlink_tx_gbps_mean", nvlink, f"{nvlink:.1f} GB/s sent over NVLink"))
    sm_max, sm = s.get("sm_util_mean_max_gpu"), s.get("sm_util_mean")
    waiting = s.get("waiting_peak")
    if sm is not None and sm < 60 and waiting:
        score += 0.2
        ev.append(Evidence("sm_util_mean", sm, f"GPUs computed only {sm:.0f}% of the time while requests waited"))
    if sm_max is not None and sm is not None and sm_max - sm >= 20:
        score += 0.1
        ev.append(Evidence("sm_util_mean_max_gpu", sm_max, f"uneven GPUs: busiest {sm_max:.0f}% against {sm:.0f}% on average"))
    if score < FIRE:
        return None
    advice = [
        Advice("tensor_parallel_size", "decrease", "fewer GPUs per replica (run replicas instead) exchange less per token"),
        Advice("pipeline_parallel_size", "increase", "over PCIe, pipeline stages exchange less than tensor shards"),
    ]
    return Diagnosis("communication", f"Communication between the {gpus} GPUs of a replica", min(1.0, score), ev, advice)


def rule_load_generator(s: Signals) -> Diagnosis | None:
    score, ev = 0.0, []
    saturated = s.get("loadgen_saturated")
    if saturated:
        score += 0.7
        ev.append(Evidence("loadgen_saturated", saturated, "the load generator reported itself saturated"))
    cpu_pct = s.get("loadgen_cpu_percent")
    if cpu_pct is not None and cpu_pct >= 100 * CLIENT_CPU_BUSY:
        score += 0.5
        ev.append(Evidence("loadgen_cpu_percent", cpu_pct, f"load-generator CPU at {cpu_pct:.0f}%"))
    elif cpu_pct is None:
        cpu = s.get("client_cpu_util")
        if cpu is not None and cpu >= CLIENT_CPU_BUSY:
            score += 0.5
            ev.append(Evidence("client_cpu_util", cpu, f"the client used {_pct(cpu)} of a core during the run"))
    lag = s.get("sampler_lag_max_s")
    if lag is not None and lag >= CLIENT_STARVED_S:
        score += 0.4
        ev.append(Evidence(
            "sampler_lag_max_s", lag,
            f"the measuring process was starved of CPU: its sampler thread woke up to {lag:.1f} s late",
        ))
    # The client's sends against its own schedule, not completions per second:
    # those include the drain of the last requests and say nothing about the client.
    offered, ratio = s.get("offered_rate"), s.get("send_rate_ratio")
    waiting, running, mns = s.get("waiting_peak"), s.get("running_peak"), s.max_num_seqs
    server_idle = waiting == 0 and (running is None or mns is None or running < mns)
    if offered and ratio is not None and ratio < RATE_SHORTFALL and server_idle:
        score += 0.4
        ev.append(Evidence(
            "send_rate_ratio", ratio,
            f"sent at {_pct(ratio)} of the scheduled {offered:.2f} req/s while nothing waited in the engine",
        ))
    if score < FIRE:
        return None
    advice = [
        Advice(None, None, "give the load generator its own cores or machine, or more client processes"),
        Advice(None, None, "until then these latencies include the client's own delay: do not compare them"),
    ]
    return Diagnosis("load_generator", "The load generator itself", min(1.0, score), ev, advice)


def rule_frontend(s: Signals) -> Diagnosis | None:
    """Requests waiting in the engine's HTTP front end, before its scheduler even saw them."""
    client, engine = s.get("mean_ttft_ms"), s.get("engine_ttft_mean_ms")
    if client is None or engine is None or client <= 0:
        return None
    gap = client - engine
    if gap < FRONTEND_GAP_MS or gap / client < FRONTEND_SHARE:
        return None
    cpu = s.get("loadgen_cpu_percent")
    cpu = cpu / 100 if cpu is not None else s.get("client_cpu_util")
    if cpu is not None and cpu >= CLIENT_CPU_BUSY:
        return None  # the client's own delay: the load-generator rule speaks
    ev = [Evidence(
        "mean_ttft_ms", client,
        f"clients waited {_n(client)} ms for the first token, the engine counts {_n(engine)} ms: "
        f"{_pct(gap / client)} of it passed before the scheduler saw the request",
    )]
    advice = [
        Advice(None, None, "the API server process is saturated: more API server processes (vLLM --api-server-count) or CPU cores for it"),
    ]
    # Indirect evidence (a difference of two latencies): it ranks below a rule that saw the engine's state.
    return Diagnosis("frontend", "The engine's HTTP front end", min(0.75, 0.4 + 0.4 * gap / client), ev, advice)


RULES: list[Rule] = [
    rule_load_generator,
    rule_kv_cache,
    rule_queueing,
    rule_prefill_interference,
    rule_memory_bandwidth,
    rule_compute,
    rule_communication,
    rule_frontend,
]


def _headroom(s: Signals) -> Diagnosis | None:
    waiting, running, mns, kv = s.get("waiting_peak"), s.get("running_peak"), s.max_num_seqs, s.get("kv_cache_usage_peak")
    if waiting is None or running is None or waiting > 0:
        return None
    ev = [Evidence("waiting_peak", waiting, "no request ever waited in the engine")]
    if mns is not None:
        ev.append(Evidence("running_peak", running, f"at most {_n(running)} of {_n(mns)} sequence slots in use"))
    if kv is not None:
        ev.append(Evidence("kv_cache_usage_peak", kv, f"KV-cache usage peaked at {_pct(kv)}"))
    advice = [
        Advice(None, None, "raise the offered load (a goodput search finds the limit) to see what binds first"),
    ]
    if mns is not None and running < mns / 2:
        advice.append(Advice("max_num_seqs", "decrease", "slots beyond the load only reserve memory"))
    return Diagnosis("headroom", "No bottleneck at this load", 0.3, ev, advice)


def diagnose(signals: Signals, rules: list[Rule] | None = None) -> list[Diagnosis]:
    """Every rule that fires, most confident first; the headroom note when none does."""
    found: list[Diagnosis] = []
    for rule in rules or RULES:
        try:
            d = rule(signals)
        except Exception:  # a rule must not take the others down with it
            d = None
        if d is not None:
            found.append(d)
    if not found:
        h = _headroom(signals)
        if h is not None:
            found.append(h)
    return sorted(found, key=lambda d: -d.confidence)


def _missing(s: Signals) -> list[str]:
    out = []
    if s.get("running_peak") is None and s.get("kv_cache_usage_peak") is None:
        out.append("engine metrics (KV cache, queue): the engine exposed none")
    if s.on_gpu and s.get("sm_util_mean") is None:
        out.append("GPU telemetry (NVML): not recorded")
    return out


def locate_trial(attrs: Mapping[str, Any], number: int | None = None) -> TrialDiagnosis:
    """Diagnoses one trial from its user attributes (or an outcome.json with the same keys)."""
    s = Signals(attrs.get("figures"), attrs.get("telemetry"), attrs.get("config"), attrs.get("environment"))
    return TrialDiagnosis(number, dict(s.config), diagnose(s), _missing(s))


# --------------------------------------------------------------------------- study


def parameter_importances(study: Any, objectives: list[tuple[str, int]] | None = None) -> tuple[list[Importance], list[str]]:
    """fANOVA and PED-ANOVA importances per objective; notes say why one could not be computed.

    ``objectives``: (name, index into trial.values); None names them value0, value1...
    """
    import optuna
    from optuna.trial import TrialState

    notes: list[str] = []
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    varied = {
        name for t in complete for name in t.params
        if len({repr(u.params.get(name)) for u in complete}) > 1
    }
    if len(complete) < 3 or not varied:
        return [], [f"importances need at least 3 finished trials with varied knobs ({len(complete)} finished)"]
    if objectives is None:
        objectives = [(f"value{i}", i) for i in range(len(study.directions))]
    evaluators: list[tuple[str, Callable[[], Any]]] = [
        ("fanova", lambda: optuna.importance.FanovaImportanceEvaluator(seed=0)),
        ("ped_anova", lambda: optuna.importance.PedAnovaImportanceEvaluator()),
    ]
    out: list[Importance] = []
    for name, index in objectives:
        for ev_name, make in evaluators:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values = optuna.importance.get_param_importances(
                        study, evaluator=make(), target=lambda t, i=index: t.values[i]
                    )
                out.append(Importance(ev_name, name, {k: float(v) for k, v in values.items()}))
            except ImportError as e:
                notes.append(f"{ev_name}: {e}".split(". Actual error")[0])
            except Exception as e:
                notes.append(f"{ev_name} on {name}: {type(e).__name__}: {e}")
    return out, list(dict.fromkeys(notes))


def locate_study(study_dir: Path, trial: int | None = None) -> StudyDiagnosis:
    """Diagnoses a study's trials (or one) and computes its parameter importances."""
    from optuna.trial import TrialState

    from autotune.errors import UserError
    from autotune.study import load_study

    study, spec = load_study(study_dir)
    trials = study.get_trials(deepcopy=False)
    if trial is not None:
        chosen = [t for t in trials if t.number == trial]
        if not chosen:
            raise UserError(f"study {study.study_name} has no trial {trial} (trials 0..{len(trials) - 1})")
    else:
        chosen = [t for t in trials if t.state == TrialState.COMPLETE or t.user_attrs.get("figures")]
    diagnosed = [locate_trial(t.user_attrs, t.number) for t in chosen]
    objectives = [(o.text, i) for i, o in enumerate(spec.objective_list)]
    importances, notes = parameter_importances(study, objectives)
    return StudyDiagnosis(study.study_name, diagnosed, importances, notes)
