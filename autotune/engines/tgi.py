"""Text Generation Inference: ``text-generation-launcher``.

The launcher is a Rust binary that starts the Python shards and the HTTP
router; the router serves ``/health``, ``/metrics`` (``tgi_*`` names) and the
OpenAI-compatible ``/v1/completions``. TGI serves one model whatever name a
request carries, and has no ``ignore_eos``: output lengths are counted, not fixed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime

from autotune.engines.base import Capabilities, EngineAdapter, ModelRef, StartupBill

# 2024-05-07T12:39:20.593317Z  INFO shard-manager: text_generation_launcher: Shard ready in 10.308899699s rank=0
_LINE = re.compile(r"^(?P<when>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+[A-Z]+\s+(?P<msg>.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SHARD = re.compile(r"Shard ready in ([\d.]+)(s|ms|µs|us|ns)\b")
_UNIT = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}  # Rust's Debug form of a Duration


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

    def startup_phases(self, log_lines: list[str], total_s: float | None = None) -> StartupBill:
        """The launcher's "Shard ready in" (the slowest shard: weights and model set-up) and the
        router's warm-up, from "Warming up model" to "Connected", when it serves."""
        stamps: list[float] = []
        marks: dict[str, float] = {}
        shard: float | None = None
        for raw in log_lines:
            line = _LINE.match(_ANSI.sub("", raw.strip()))
            if not line:
                continue
            when = line["when"][:26]  # fromisoformat reads at most microseconds
            t = (datetime.fromisoformat(when) - datetime(2000, 1, 1)).total_seconds()
            stamps.append(t)
            msg = line["msg"]
            if found := _SHARD.search(msg):
                shard = max(shard or 0.0, float(found[1]) * _UNIT[found[2]])
            for mark, text in (("warmup", "Warming up model"), ("ready", "Connected")):
                if msg.endswith(text):
                    marks.setdefault(mark, t)
        if not stamps:
            return StartupBill(total_s=total_s)
        phases: dict[str, float] = {} if shard is None else {"shards": shard}
        if "warmup" in marks and "ready" in marks:
            phases["warmup"] = marks["ready"] - marks["warmup"]
        notes = [] if "ready" in marks else ["the log has no 'Connected' line: the start did not finish"]
        span = marks.get("ready", stamps[-1]) - stamps[0]
        return StartupBill.settle(phases, span_s=span, total_s=total_s, notes=notes)

    def version(self) -> str | None:
        exe = shutil.which("text-generation-launcher")
        if exe is None:
            return None
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return out.split()[-1] if out.split() else None
