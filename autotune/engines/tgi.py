"""Text Generation Inference: ``text-generation-launcher``.

The launcher is a Rust binary that starts the Python shards and the HTTP
router; the router serves ``/health``, ``/metrics`` (``tgi_*`` names) and the
OpenAI-compatible ``/v1/completions``. TGI serves one model whatever name a
request carries, and has no ``ignore_eos``: output lengths are counted, not fixed.
"""

from __future__ import annotations

import shutil
import subprocess

from autotune.engines.base import Capabilities, EngineAdapter, ModelRef


class TGIAdapter(EngineAdapter):
    name = "tgi"
    capabilities = Capabilities(ignore_eos=False, prompt_logprobs=False, metrics=True, dummy_weights=False)
    health_path = "/health"
    metrics_path = "/metrics"
    metric_prefix = "tgi_"
    # From TGI's metrics reference (docs/source/reference/metrics.md).
    metric_names = {
        "running": ("tgi_batch_current_size",),
        "waiting": ("tgi_queue_size",),
        "queue_time": ("tgi_request_queue_duration",),
        "itl": ("tgi_request_mean_time_per_token_duration",),
        "e2e": ("tgi_request_duration",),
        "inference_time": ("tgi_request_inference_duration",),
        "prompt_tokens": ("tgi_request_input_length",),
        "generation_tokens": ("tgi_request_generated_tokens",),
        "requests_finished": ("tgi_request_success",),
        "batch_tokens": ("tgi_batch_current_max_tokens",),
        "prefill_time": ("tgi_batch_forward_duration",),
    }

    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        argv = [
            "text-generation-launcher",
            "--model-id", model.source,
            "--hostname", host,
            "--port", str(port),
        ]
        if model.max_model_len:
            argv += ["--max-total-tokens", str(model.max_model_len),
                     "--max-input-tokens", str(model.max_model_len - 1)]
        return argv

    def version(self) -> str | None:
        exe = shutil.which("text-generation-launcher")
        if exe is None:
            return None
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return out.split()[-1] if out.split() else None
