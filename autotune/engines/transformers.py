"""transformers serve: Hugging Face transformers' own OpenAI-compatible server,
run with continuous batching (``transformers serve MODEL --continuous-batching``).

It serves the model under the name it was given on the command line (a local
folder's path), so requests carry that. It has no ``/metrics`` and refuses
``ignore_eos`` (HTTP 422), so output lengths are counted from what streams back
rather than fixed; ``/health`` answers once the model is loaded.
"""

from __future__ import annotations

import sys
from importlib import metadata

from autotune.engines.base import Capabilities, EngineAdapter, ModelRef


class TransformersAdapter(EngineAdapter):
    name = "transformers"
    capabilities = Capabilities(ignore_eos=False, prompt_logprobs=False, metrics=False, dummy_weights=False)
    health_path = "/health"
    metrics_path = None

    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        # The module entry point, so the server runs on this interpreter's transformers.
        return [
            sys.executable, "-m", "transformers.cli.transformers", "serve", model.source,
            "--continuous-batching",
            "--host", host,
            "--port", str(port),
            "--log-level", "info",
        ]

    def request_model(self, model: ModelRef) -> str:
        return model.source

    def version(self) -> str | None:
        try:
            return metadata.version("transformers")
        except metadata.PackageNotFoundError:
            return None
