"""The rules: each reads a trial's signals and either stays silent or names a bottleneck with its evidence."""

from __future__ import annotations

__all__ = ["RULES", "diagnose"]

from autotune.locate.signals import (
    BATCH_FULL, CLIENT_CPU_BUSY, CLIENT_STARVED_S, FIRE, FRONTEND_GAP_MS, FRONTEND_SHARE, ITL_SPIKE, KV_BUSY,
    KV_FULL, MEM_BW_HIGH, MEM_BW_LOW, PCIE_BUSY_GBPS, QUEUE_SHARE_HIGH, QUEUE_SHARE_SOME, RATE_SHORTFALL, SM_HIGH,
    STEP_SPREAD, TTFT_SPIKE,
    Advice, Diagnosis, Evidence, Rule, Signals, _n, _pct,
)


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


