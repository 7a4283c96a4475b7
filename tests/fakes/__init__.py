"""Stand-ins used only where the real engine cannot produce a fault on demand."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

FAULT_SERVER = Path(__file__).resolve().parent / "fault_server.py"
MARKER = "AUTOTUNE_TEST_MARKER"


def fault_engine_spec(
    study_dir: Path,
    mode_file: Path,
    *,
    marker: str,
    trials: int = 2,
    token_delay: float = 0.0,
    extra: list[str] | None = None,
    **workload: Any,
) -> dict[str, Any]:
    """A study spec whose engine is the fault server, started by autotune's own launcher.

    ``marker`` lands in the engine's environment, so a test can find every
    process the engine left behind.
    """
    template = [sys.executable, str(FAULT_SERVER), "--port", "{port}", "--host", "{host}",
                "--mode-file", str(mode_file), "--token-delay", str(token_delay), *(extra or []), "--", "{argv}"]
    return {
        "model": "tiny",
        "max_model_len": 256,
        "study_dir": str(study_dir),
        "sampler": "random",
        "hardware": {"device": "cpu"},
        "engine": {"launch_template": template, "env": {MARKER: marker}, "startup_timeout_s": 30},
        "workload": {"prompt_tokens": 8, "output_tokens": 8, "concurrency": 2, "num_requests": 6,
                     "warmup_requests": 0, "request_timeout_s": 10, **workload},
        "space": {"max_num_seqs": {"low": 1, "high": 64}},
        "budget": {"trials": trials},
    }
