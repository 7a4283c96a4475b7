"""An OpenAI-compatible endpoint that autotune does not start (a managed
service, a server someone else runs, a cluster behind a gateway).

Nothing is launched or torn down, so only what the client controls is tuned:
how many requests are in flight, or the Poisson rate they are sent at. The
spec names the endpoint (``engine.options.base_url``, or ``OPENAI_BASE_URL``)
and the model it serves (``engine.options.served_model``); the API key comes
from the environment variable named by ``engine.api_key_env`` and is never
stored. An endpoint known to accept ``ignore_eos`` (vLLM, SGLang) or to expose
``/metrics`` can say so with ``engine.options``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import replace
from typing import Any, Mapping
from urllib.parse import urlsplit

from autotune.engines.base import Capabilities, EngineAdapter, ModelRef


class ExternalAdapter(EngineAdapter):
    name = "external"
    capabilities = Capabilities(ignore_eos=False, metrics=False, launches=False)
    health_path = "/v1/models"
    metrics_path = None

    def __init__(
        self,
        base_url: str | None = None,
        served_model: str | None = None,
        ignore_eos: bool = False,
        metrics_path: str | None = None,
    ) -> None:
        url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not url:
            raise ValueError("needs engine.options.base_url (or OPENAI_BASE_URL): the endpoint to measure")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url {url!r} is not an http(s) URL")
        self.base_url = url.rstrip("/").removesuffix("/v1")
        self.served_model = served_model
        # Instance attributes shadow the class defaults: this endpoint's own abilities.
        self.capabilities = replace(type(self).capabilities, ignore_eos=ignore_eos, metrics=metrics_path is not None)
        self.metrics_path = metrics_path

    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        return []

    def version(self) -> str | None:
        """The server's own ``/version`` (vLLM, SGLang answer it), else where it was measured."""
        try:
            with urllib.request.urlopen(self.base_url + "/version", timeout=5) as resp:
                found = json.loads(resp.read()).get("version")
                if found:
                    return f"{found} at {self.base_url}"
        except (OSError, ValueError, AttributeError):
            pass
        return f"unknown, at {self.base_url}"

    def request_model(self, model: ModelRef) -> str:
        return self.served_model or model.served_name

    def workload_overrides(self, config: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if config.get("concurrency") is not None:
            out["concurrency"] = int(config["concurrency"])
        if config.get("rate") is not None:
            out.update(rate=float(config["rate"]), arrival="poisson")
        return out

    def endpoint(self) -> str | None:
        return self.base_url
