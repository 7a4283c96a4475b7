"""SGLang: ``python -m sglang.launch_server``.

SGLang's options are plain ``--flag value`` pairs and bare switches
(``--disable-radix-cache``); it has no ``--no-`` forms, so every boolean knob
in its YAML is a ``flag``. Metrics exist only with ``--enable-metrics``,
named ``sglang:*`` on the server's own port.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from importlib import metadata

from autotune.engines.base import Capabilities, EngineAdapter, ModelRef, StartupBill

# [2025-03-08 12:29:28 TP0] Capture cuda graph end. Time elapsed: 7.23 s. ... (ranks: DP0 TP0 EP0 PP0 ...)
_LINE = re.compile(r"^\[(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?P<ranks>(?: [A-Z]+\d+)*)\] (?P<msg>.*)$")
_RANK0 = re.compile(r"[A-Z]+0")
_WEIGHTS = re.compile(r"^Load weight end\.(?: elapsed=([\d.]+) s)?")
# "Capture cuda graph end. Time elapsed: 7.23 s" and, in later versions, one line per graph
# kind: "Capture target decode CUDA graph end. elapsed=16.40 s".
_GRAPHS = re.compile(r"^Capture .*graph end\. (?:Time elapsed: |elapsed=)([\d.]+) s", re.IGNORECASE)


class SGLangAdapter(EngineAdapter):
    name = "sglang"
    capabilities = Capabilities(ignore_eos=True, prompt_logprobs=False, metrics=True, dummy_weights=True)
    health_path = "/health"
    metrics_path = "/metrics"
    metric_prefix = "sglang:"
    # From SGLang's metrics collector (python/sglang/srt/metrics/collector.py).
    metric_names = {
        "kv_cache_usage": ("sglang:token_usage",),  # fraction of the KV pool in use
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "preemptions": ("sglang:num_retracted_requests", "sglang:num_retracted_reqs"),
        "queue_time": ("sglang:queue_time_seconds",),
        "ttft": ("sglang:time_to_first_token_seconds",),
        "itl": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        "e2e": ("sglang:e2e_request_latency_seconds",),
        "prefix_hit_rate": ("sglang:cache_hit_rate",),
        "prefix_cache_hits": ("sglang:cached_tokens",),
        "prompt_tokens": ("sglang:prompt_tokens",),
        "generation_tokens": ("sglang:generation_tokens",),
        "requests_finished": ("sglang:num_requests",),
        "generation_throughput": ("sglang:gen_throughput",),
    }

    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        argv = [
            sys.executable, "-m", "sglang.launch_server",
            "--model-path", model.source,
            "--served-model-name", model.served_name,
            "--host", host,
            "--port", str(port),
            "--enable-metrics",
        ]
        if model.tokenizer_dir and model.tokenizer_dir != model.source:
            argv += ["--tokenizer-path", model.tokenizer_dir]
        if model.max_model_len:
            argv += ["--context-length", str(model.max_model_len)]
        if model.dummy_weights:
            argv += ["--load-format", "dummy"]
        return argv

    def startup_phases(self, log_lines: list[str], total_s: float | None = None) -> StartupBill:
        """Weight loading and CUDA-graph capture as rank 0 reports them, up to "The server is
        fired up and ready to roll!" (logged once a first request was served)."""
        stamps: list[float] = []
        ready = load_begin = None
        phases: dict[str, float] = {}
        for raw in log_lines:
            line = _LINE.match(raw.strip())
            if not line or not all(_RANK0.fullmatch(tag) for tag in line["ranks"].split()):
                continue  # the other ranks repeat rank 0's lines
            t = (datetime.fromisoformat(line["when"]) - datetime(2000, 1, 1)).total_seconds()
            stamps.append(t)
            msg = line["msg"]
            if msg.startswith("Load weight begin") and load_begin is None:
                load_begin = t
            elif (weights := _WEIGHTS.match(msg)) and "weights" not in phases:
                if weights[1] is not None:
                    phases["weights"] = float(weights[1])
                elif load_begin is not None:
                    phases["weights"] = t - load_begin
            elif graphs := _GRAPHS.match(msg):
                phases["cuda_graphs"] = phases.get("cuda_graphs", 0.0) + float(graphs[1])
            elif msg.startswith("The server is fired up and ready to roll") and ready is None:
                ready = t
        if not stamps:
            return StartupBill(total_s=total_s)
        notes = [] if ready is not None else ["the log has no 'ready to roll' line: the start did not finish"]
        span = (stamps[-1] if ready is None else ready) - stamps[0]
        return StartupBill.settle(phases, span_s=span, total_s=total_s, notes=notes)

    def version(self) -> str | None:
        try:
            return metadata.version("sglang")
        except metadata.PackageNotFoundError:
            return None
