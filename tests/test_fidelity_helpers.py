"""The fidelity benchmark's own bookkeeping: windows and CPU shares it compares tools with."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fidelity import CpuSampler, _guidellm_window, _proc_table, _subtree  # noqa: E402


def test_guidellm_window_converts_wall_clock_and_sums_request_time() -> None:
    bench = {"requests": {"successful": [
        {"info": {"timings": {"request_start": 1000.0, "request_end": 1000.5}}},
        {"info": {"timings": {"request_start": 1000.2, "request_end": 1001.0}}},
        {"info": {"timings": {"request_start": None, "request_end": 1002.0}}},
    ]}}
    t0, t1, busy = _guidellm_window(bench, offset=900.0)
    assert (t0, t1) == pytest.approx((100.0, 101.0))
    assert busy == pytest.approx(1.3)  # 0.5 + 0.8: requests in flight 1.3 on average over the 1 s span
    assert _guidellm_window({"requests": {"successful": []}}, 0.0) is None


def test_cpu_sampler_splits_cores_between_engine_client_and_others() -> None:
    sampler = CpuSampler(engine_pid=-1)
    # t, machine busy, engine, client (incl. sampler), sampler's own
    sampler.samples = [(0.0, 0.0, 0.0, 0.0, 0.0), (1.0, 1.8, 1.2, 0.4, 0.1), (2.0, 3.6, 2.4, 0.8, 0.2)]
    cores = sampler.cores(0.5, 1.5)
    assert cores["engine_cores"] == pytest.approx(1.2)
    assert cores["client_cores"] == pytest.approx(0.3)  # the sampler's own time is not the client's
    assert cores["other_cores"] == pytest.approx(0.3)
    assert sampler.cores(1.0, 1.0) == {}


def test_subtree_finds_this_process_and_not_its_parent() -> None:
    table = _proc_table()
    tree = _subtree(table, os.getpid())
    assert os.getpid() in tree
    assert os.getppid() not in tree
