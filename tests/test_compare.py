"""`autotune compare`: argument handling without engines, then vLLM-CPU and
transformers serve side by side on one real workload."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from autotune.spec import parse_engine_assignments
from autotune.errors import UserError
from tests.conftest import autotune_cmd


def test_engine_items_are_grouped_by_engine() -> None:
    got = parse_engine_assignments(["vllm:max_num_seqs=8", "vllm:enable_prefix_caching=false", "transformers:dtype=float32"],
                             "--set")
    assert got == {"vllm": {"max_num_seqs": 8, "enable_prefix_caching": False}, "transformers": {"dtype": "float32"}}
    with pytest.raises(UserError, match="engine:name=value"):
        parse_engine_assignments(["max_num_seqs=8"], "--set")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engines", "vllm", "--set", "sglang:page_size=16"], "not in --engines"),
        (["--engines", "vllm,vllm"], "distinct"),
        (["--engines", "nosuch"], "unknown engine 'nosuch'"),
        (["--engines", "vllm", "--set", "vllm:no_such_knob=1", "--device", "cpu"], "unknown knob 'no_such_knob' for engine 'vllm'"),
        (["--engines", "vllm", "--from-study", "vllm"], "engine=DIR"),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], message: str, cli_env: dict[str, str]) -> None:
    out = subprocess.run(autotune_cmd("compare", *args), capture_output=True, text=True, env=cli_env, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.engine
def test_vllm_and_transformers_side_by_side(tmp_path: Path, tiny_model: Path, cli_env: dict[str, str]) -> None:
    out = subprocess.run(
        autotune_cmd(
            "compare", "--engines", "vllm,transformers", "--model", "tiny", "--device", "cpu",
            "--max-model-len", "256", "--prompt-tokens", "32", "--output-tokens", "16", "--concurrency", "4",
            "--num-requests", "12", "--repeats", "2",
            "--set", "vllm:max_num_seqs=8", "--set", "vllm:kv_cache_space_gib=1",
            "--set", "transformers:cb_num_blocks=128",
            "--out", str(tmp_path / "cmp"),
        ),
        capture_output=True, text=True, env={**cli_env, "COLUMNS": "220"}, timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    # One table: figures down, both engines across, then each engine's environment.
    header = next(line for line in text.splitlines() if "figure" in line)
    assert "vllm" in header and "transformers" in header
    # transformers cannot fix output lengths, so no engine does.
    assert "stopping rule: output lengths as generated (no ignore_eos) on every engine" in text
    assert "2 run(s)" in text
    assert sum(1 for line in text.splitlines() if " on CPU only (" in line) == 2
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["fixed_output_lengths"] is False
    by_engine = {e["engine"]: e for e in data["engines"]}
    assert set(by_engine) == {"vllm", "transformers"}
    for name, entry in by_engine.items():
        assert entry["environment"]["engine"] == name and entry["environment"]["engine_version"]
        runs = entry["measure"]["repeats"]
        assert len(runs) == 2 and all(r["completed"] == 12 and r["failed"] == 0 for r in runs)
        assert entry["summary"]["output_throughput"]["n"] == 2 and entry["summary"]["output_throughput"]["mean"] > 0
        assert (tmp_path / "cmp" / name / "engine.log").exists()
    assert "--max-num-seqs 8" in by_engine["vllm"]["measure"]["command"]
    assert "--cb-num-blocks 128" in by_engine["transformers"]["measure"]["command"]
    # Same prompts to both: identical prompt token totals per run.
    assert [r["total_input_tokens"] for r in by_engine["vllm"]["measure"]["repeats"]] == \
        [r["total_input_tokens"] for r in by_engine["transformers"]["measure"]["repeats"]]
