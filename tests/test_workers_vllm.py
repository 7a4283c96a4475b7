"""Three workers, one PostgreSQL study, a real engine: vLLM-CPU serving the tiny
model, reached through the external adapter (one server: three vLLM servers do
not fit on two cores). Every worker is a real ``autotune worker`` process; each
trial measures the real server over HTTP. The budget is shared, no trial runs
twice, none is lost.
"""

from __future__ import annotations

import subprocess
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml

from autotune.engines import get_engine
from autotune.engines.base import ModelRef
from autotune.engines.launcher import EngineServer, free_port
from autotune.space import SearchSpace
from autotune.tuning import counted
from tests.conftest import autotune_cmd

pytestmark = pytest.mark.engine

TRIALS = 6
REQUESTS = 6


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):  # type: ignore[no-untyped-def]
    """A vLLM-CPU server started by hand, as a deployment shared by the workers."""
    engine = get_engine("vllm")
    space = SearchSpace.load("vllm").for_hardware("cpu", {})
    model = ModelRef(str(tiny_model), "tiny", str(tiny_model))
    launch = engine.plan(model, space.knob_specs(), {"max_num_seqs": 8}, host="127.0.0.1", port=free_port(),
                         device="cpu", extra_args=["--enforce-eager"])
    server = EngineServer(launch, tmp_path_factory.mktemp("vllm-server") / "server.log", startup_timeout_s=600)
    server.start()
    try:
        server.wait_healthy()
        yield launch.base_url
    finally:
        server.stop()


def test_three_workers_tune_one_real_engine(
    vllm_server: str, tiny_model: Path, tmp_path: Path, pg_url: str, cli_env: dict
) -> None:
    spec = {
        "name": f"shared-{uuid.uuid4().hex[:8]}",
        "model": "tiny",
        "engine": {"name": "external", "options": {"base_url": vllm_server + "/v1", "served_model": "tiny"}},
        "hardware": {"device": "cpu"},
        "workload": {"prompt_tokens": 32, "output_tokens": 16, "concurrency": 2, "num_requests": REQUESTS,
                     "warmup_requests": 1},
        "space": {"concurrency": {"low": 1, "high": 8}},
        "objectives": "max:output_tps",
        "budget": {"trials": TRIALS},
        "sampler": "random",
        # No worker dies here: a long grace costs nothing, and a worker starved of CPU for a while
        # on a busy machine is not taken for a lost one.
        "heartbeat": {"interval_s": 2, "grace_s": 300},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    procs = [
        subprocess.Popen(
            autotune_cmd("worker", "--storage", pg_url, "--study", spec["name"], "--spec", str(spec_path),
                         "--study-dir", str(tmp_path / f"worker{i}")),
            stdout=open(tmp_path / f"worker{i}.out", "w"), stderr=subprocess.STDOUT, env=cli_env,
        )
        for i in range(3)
    ]
    for i, p in enumerate(procs):
        assert p.wait(timeout=900) == 0, (tmp_path / f"worker{i}.out").read_text()
    study = optuna.load_study(study_name=spec["name"], storage=pg_url)
    done = [t for t in study.trials if counted(t)]
    assert len(done) == TRIALS and all(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    for t in done:  # every request of every trial was measured on the real engine and kept
        figures = t.user_attrs["figures"]
        assert figures["completed"] == REQUESTS and figures["failed"] == 0
        assert figures["total_output_tokens"] == REQUESTS * 16
    runs = Counter(int(p.name) for p in tmp_path.glob("worker*/trials/*"))
    assert max(runs.values()) == 1, runs  # no trial measured by two workers
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
