"""End to end on the real `transformers serve`: a small study, and the same server
measured as an endpoint autotune did not start (the external adapter).

transformers serve has no ignore_eos and ends its streams without [DONE]; the
figures must still count every token that came back and every request.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from autotune.engines import get_engine
from autotune.engines.base import ModelRef
from autotune.engines.launcher import EngineServer, free_port
from autotune.space import SearchSpace
from autotune.tuning import load_study
from tests.conftest import autotune_cmd

pytestmark = pytest.mark.engine

#: The SLO's bound is the request timeout: a request that completed had its first token
#: within it, so every measured trial meets the SLO on any machine that serves the workload.
REQUEST_TIMEOUT_S = 120
SLO = f"p99(ttft)<{REQUEST_TIMEOUT_S}s"
WORKLOAD = {"prompt_tokens": 32, "output_tokens": 16, "concurrency": 4, "num_requests": 16, "warmup_requests": 2,
            "request_timeout_s": REQUEST_TIMEOUT_S}
SPEC = {
    "model": "tiny",
    "engine": {"name": "transformers"},
    "hardware": {"device": "cpu"},
    "slo": SLO,
    "workload": WORKLOAD,
    "space": {"cb_num_blocks": {"low": 64, "high": 256}, "cb_max_batch_tokens": {"choices": [256, 512]}},
    "baseline": False, "budget": {"trials": 2},
    "seed": 1,
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    root = tmp_path_factory.mktemp("tf-study")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    out = subprocess.run(
        autotune_cmd("optimize", "--spec", str(spec_path), "--study-dir", str(root / "run")),
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}, timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (root / "out.txt").write_text(out.stdout)
    return root / "run"


def test_transformers_study_end_to_end(study_dir: Path, tiny_model: Path) -> None:
    out = (study_dir.parent / "out.txt").read_text()
    assert "engine transformers" in out and "Pareto front of" in out
    study, _ = load_study(study_dir)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, out
    for t in complete:
        figures = t.user_attrs["figures"]
        assert figures["completed"] == 16 and figures["failed"] == 0
        # No ignore_eos: lengths are what the server sent, at most max_tokens each, all counted.
        rows = [json.loads(line) for line in
                (Path(t.user_attrs["trial_dir"]) / "requests.jsonl").read_text().splitlines()]
        assert sum(r["output_tokens"] for r in rows) == figures["total_output_tokens"]
        assert all(1 <= r["output_tokens"] <= 16 for r in rows)
        assert figures["output_throughput"] > 0 and figures["p99_ttft_ms"] > 0
        assert t.user_attrs["slo"][SLO]["holds"] and t.user_attrs["feasible"] is True
        assert t.user_attrs["environment"]["engine"] == "transformers"
        assert t.user_attrs["environment"]["engine_version"]
        command = t.user_attrs["command"]
        assert "transformers.cli.transformers serve" in command and "--continuous-batching" in command
        assert f"--cb-num-blocks {t.params['cb_num_blocks']}" in command
        assert "metrics.txt" not in os.listdir(t.user_attrs["trial_dir"])  # no /metrics to scrape
        log = Path(t.user_attrs["log_path"]).read_text()
        assert "ignore_eos" not in log  # never sent, so never refused


@pytest.fixture(scope="module")
def running_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):  # type: ignore[no-untyped-def]
    """A transformers server started by hand, as someone else's deployment would be."""
    engine = get_engine("transformers")
    space = SearchSpace.load("transformers")
    model = ModelRef(str(tiny_model), "tiny", str(tiny_model))
    launch = engine.plan(model, space.knob_specs(), {"cb_num_blocks": 128}, host="127.0.0.1",
                         port=free_port(), device="cpu", extra_env={"HF_HUB_OFFLINE": "1"})
    server = EngineServer(launch, tmp_path_factory.mktemp("tf-server") / "server.log", startup_timeout_s=600)
    server.start()
    try:
        server.wait_healthy()
        yield launch.base_url
    finally:
        server.stop()


def test_external_endpoint_study_tunes_client_concurrency(
    running_server: str, tiny_model: Path, tmp_path: Path
) -> None:
    spec = {
        "model": "tiny",
        "engine": {"name": "external",
                   "options": {"base_url": running_server + "/v1", "served_model": str(tiny_model)}},
        "hardware": {"device": "cpu"},
        "workload": {**WORKLOAD, "num_requests": 8},
        "space": {"concurrency": {"low": 1, "high": 4}},
        "objectives": "max:output_tps",
        "baseline": False, "budget": {"trials": 2},
        "sampler": "random",
        "seed": 3,
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        autotune_cmd("optimize", "--spec", str(spec_path), "--study-dir", str(tmp_path / "run")),
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    study, _ = load_study(tmp_path / "run")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, out.stdout
    for t in complete:
        assert t.user_attrs["figures"]["completed"] == 8
        assert t.user_attrs["command"] == ""  # nothing was launched
        assert not Path(t.user_attrs["trial_dir"], "engine.log").exists()
    # The endpoint outlived every trial: autotune stopped nothing it did not start.
    import urllib.request

    with urllib.request.urlopen(running_server + "/health", timeout=5) as r:
        assert r.status == 200


@pytest.mark.parametrize("engine", ["transformers", "external"])
def test_measure_an_endpoint_autotune_did_not_start(
    running_server: str, tiny_model: Path, tmp_path: Path, engine: str
) -> None:
    """`autotune measure --endpoint`: repeats against someone else's server, which it leaves running;
    the engine named says what the server accepts (external: the plain OpenAI API)."""
    out_dir = tmp_path / "measured"
    out = subprocess.run(
        autotune_cmd(
            "measure", "--endpoint", running_server, "--served-model", str(tiny_model), "--model", "tiny",
            "--spec-set", f"engine.name={engine}", "--device", "cpu", "--repeats", "2",
            "--num-requests", "6", "--concurrency", "2", "--out", str(out_dir),
        ),
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((out_dir / "measure.json").read_text())
    assert report["command"] is None and report["startup_s"] is None  # nothing was launched
    assert not (out_dir / "engine.log").exists()
    assert len(report["repeats"]) == 2
    assert all(r["completed"] == 6 and r["failed"] == 0 and r["output_throughput"] > 0 for r in report["repeats"])
    summary = report["summary"]["output_throughput"]
    assert summary["n"] == 2 and summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    assert report["environment"]["engine"] == engine
    assert "95% CI" in out.stdout and "output_throughput" in out.stdout
    import urllib.request

    with urllib.request.urlopen(running_server + "/health", timeout=5) as r:
        assert r.status == 200


def test_unreachable_endpoint_is_a_failed_trial_with_its_reason(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    spec = {"model": "tiny", "engine": {"name": "external", "options": {"base_url": f"http://127.0.0.1:{port}"}},
            "hardware": {"device": "cpu"}, "workload": {**WORKLOAD, "num_requests": 4},
            "objectives": "max:output_tps", "baseline": False, "budget": {"trials": 1}}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        autotune_cmd("optimize", "--spec", str(spec_path), "--study-dir", str(tmp_path / "run")),
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    study, _ = load_study(tmp_path / "run")
    reasons = [t.user_attrs.get("reason", "") for t in study.trials]
    assert reasons and all(f"endpoint http://127.0.0.1:{port}/v1/models did not answer" in r for r in reasons)
