"""SGLang: ``python -m sglang.launch_server``.

SGLang's options are plain ``--flag value`` pairs and bare switches
(``--disable-radix-cache``); it has no ``--no-`` forms, so every boolean knob
in its YAML is a ``flag``. Metrics exist only with ``--enable-metrics``,
named ``sglang:*`` on the server's own port.
"""

from __future__ import annotations

import sys
from importlib import metadata
from autotune.engines.base import Capabilities, EngineAdapter, ModelRef


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

    def version(self) -> str | None:
        try:
            return metadata.version("sglang")
        except metadata.PackageNotFoundError:
            return None
