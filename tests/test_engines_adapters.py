"""Engine adapters without a running engine: argv from each search space,
launch templates, metric names against recorded /metrics text, and an engine
added from outside the package (one .py and one .yaml)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autotune.engines import ENGINE_PATH_ENV, engine_names, get_engine, space_file
from autotune.errors import UserError
from autotune.space import SearchSpace
from autotune.spec import load_spec
from autotune.trial import setup_from_spec
from autotune.trial import check, plan, with_workload

METRICS = Path(__file__).parent / "data" / "metrics"
REPO = Path(__file__).resolve().parent.parent


def _setup(engine: str, *, device: str = "cuda", gpus: int = 8, **over: Any):  # type: ignore[no-untyped-def]
    return setup_from_spec(load_spec(None, {
        "model": "tiny", "engine.name": engine, "hardware.device": device, "hardware.gpu_count": gpus,
        "hardware.gpu_memory_gib": 80, **over,
    }))


def test_registry_finds_every_adapter_with_its_search_space() -> None:
    assert {"vllm", "sglang", "tgi", "transformers", "external"} <= set(engine_names())
    for name in ("sglang", "tgi", "transformers", "external"):
        space = SearchSpace.load(name)
        assert space.engine == name and space.knobs
        assert space_file(name) is None  # built-ins keep theirs in search_spaces/


@pytest.mark.parametrize("engine", ["sglang", "tgi", "transformers"])
def test_every_launched_knob_reaches_the_engine(engine: str) -> None:
    for name, knob in SearchSpace.load(engine).knobs.items():
        assert knob.arg and knob.arg.startswith("--"), f"{engine}.{name} has no option"


def test_sglang_argv_from_its_space() -> None:
    setup = _setup("sglang")
    config = {
        "tp_size": 2, "dp_size": 2, "pp_size": 1, "mem_fraction_static": 0.86, "chunked_prefill_size": 4096,
        "max_running_requests": 128, "schedule_policy": "lpm", "schedule_conservativeness": 0.8,
        "cuda_graph_max_bs": 64, "kv_cache_dtype": "fp8_e4m3", "quantization": None, "page_size": 16,
        "disable_radix_cache": False,
    }
    assert set(config) == set(setup.space.knobs)
    launch = plan(setup, config, 30001)
    model = setup.model.source
    assert launch.argv == [
        sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", "30001", "--enable-metrics", "--context-length", "512",
        "--tp-size", "2", "--dp-size", "2", "--pp-size", "1", "--mem-fraction-static", "0.86",
        "--chunked-prefill-size", "4096", "--max-running-requests", "128", "--schedule-policy", "lpm",
        "--schedule-conservativeness", "0.8", "--cuda-graph-max-bs", "64", "--kv-cache-dtype", "fp8_e4m3",
        "--page-size", "16",
    ]
    # A bare switch appears only when set; SGLang has no --no- forms.
    on = plan(setup, {**config, "disable_radix_cache": True}, 30001).argv
    assert on[-1] == "--disable-radix-cache" and not any(a.startswith("--no-") for a in on)
    assert launch.metrics_path == "/metrics" and launch.health_path == "/health"


def test_sglang_rules_reject_before_launch() -> None:
    setup = _setup("sglang", gpus=4)
    reasons = setup.space.check({"tp_size": 4, "dp_size": 2, "pp_size": 1, "chunked_prefill_size": 4096,
                                 "page_size": 16}, setup.hardware)
    assert reasons == ["violates tp_size * dp_size * pp_size <= gpu_count"]
    # On CPU the GPU knobs do not exist at all.
    cpu = _setup("sglang", device="cpu", gpus=1)
    assert not {"tp_size", "mem_fraction_static", "cuda_graph_max_bs"} & set(cpu.space.knobs)


def test_tgi_argv_from_its_space() -> None:
    setup = _setup("tgi", gpus=2)
    assert setup.space.knobs["num_shard"].choices == [1, 2]  # cut to the GPUs given
    config = {"num_shard": 2, "max_batch_prefill_tokens": 4096, "max_batch_total_tokens": 65536,
              "max_concurrent_requests": 256, "quantize": "fp8", "cuda_memory_fraction": 0.9}
    assert set(config) == set(setup.space.knobs)
    assert check(setup, config) == []
    assert plan(setup, config, 8080).argv == [
        "text-generation-launcher", "--model-id", setup.model.source, "--hostname", "127.0.0.1",
        "--port", "8080", "--max-total-tokens", "512", "--max-input-tokens", "511",
        "--num-shard", "2", "--max-batch-prefill-tokens", "4096", "--max-batch-total-tokens", "65536",
        "--max-concurrent-requests", "256", "--quantize", "fp8", "--cuda-memory-fraction", "0.9",
    ]
    # quantize left to the checkpoint: no option at all.
    assert "--quantize" not in plan(setup, {**config, "quantize": None}, 8080).argv
    assert setup.space.check({**config, "max_batch_total_tokens": 16384, "max_batch_prefill_tokens": 16384 * 2},
                             setup.hardware) == ["violates max_batch_total_tokens >= max_batch_prefill_tokens"]
    assert get_engine("tgi").capabilities.ignore_eos is False


def test_transformers_argv_and_capabilities() -> None:
    setup = _setup("transformers", device="cpu", gpus=1)
    assert set(setup.space.knobs) == {"cb_block_size", "cb_num_blocks", "cb_max_batch_tokens",
                                      "attn_implementation", "dtype"}
    config = {"cb_block_size": 32, "cb_num_blocks": 128, "cb_max_batch_tokens": 512,
              "attn_implementation": "sdpa", "dtype": "bfloat16"}
    launch = plan(setup, config, 8000)
    assert launch.argv == [
        sys.executable, "-m", "transformers.cli.transformers", "serve", setup.model.source,
        "--continuous-batching", "--host", "127.0.0.1", "--port", "8000", "--log-level", "info",
        "--cb-block-size", "32", "--cb-num-blocks", "128", "--cb-max-batch-tokens", "512",
        "--attn-implementation", "sdpa", "--dtype", "bfloat16",
    ]
    engine = setup.engine
    assert engine.capabilities.ignore_eos is False and engine.capabilities.metrics is False
    assert launch.metrics_path is None
    assert engine.request_model(setup.model) == setup.model.source  # it serves the path it loaded
    gpu = _setup("transformers", gpus=1)
    assert gpu.space.knobs["attn_implementation"].choices == ["sdpa", "eager", "flash_attention_2"]
    on = plan(gpu, {"compile": False, "cb_use_cuda_graph": True}, 8000).argv
    assert on[-2:] == ["--no-compile", "--cb-use-cuda-graph"]


def test_transformers_flags_exist_in_the_installed_cli() -> None:
    """Every option the YAML can emit is one `transformers serve --help` lists."""
    pytest.importorskip("fastapi")
    out = subprocess.run(
        [sys.executable, "-m", "transformers.cli.transformers", "serve", "--help"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    space = SearchSpace.load("transformers")
    for knob in space.knobs.values():
        assert knob.arg in out.stdout, knob.arg
        if knob.type == "bool":
            assert "--no-" + knob.arg.removeprefix("--") in out.stdout
    for fixed in ("--continuous-batching", "--host", "--port", "--log-level"):
        assert fixed in out.stdout


def test_external_endpoint_launches_nothing_and_tunes_the_client() -> None:
    setup = _setup("external", device="cpu", gpus=1, **{
        "engine.options": {"base_url": "https://api.example.com/v1/", "served_model": "llama-3-8b"},
        "space": {"rate": {"choices": [2.0, 4.0]}},
    })
    launch = plan(setup, {"concurrency": 8, "rate": 4.0}, 1234)
    assert launch.argv == [] and launch.env == {}
    assert launch.base_url == "https://api.example.com"
    assert setup.engine.capabilities.launches is False
    assert setup.engine.request_model(setup.model) == "llama-3-8b"
    adapted = with_workload(setup, {"concurrency": 8, "rate": 4.0}).workload
    assert (adapted.concurrency, adapted.rate, adapted.arrival) == (8, 4.0, "poisson")
    closed = with_workload(setup, {"concurrency": 3, "rate": None}).workload
    assert (closed.concurrency, closed.arrival) == (3, setup.workload.arrival)
    assert setup.workload.concurrency == 16  # the study's own workload is untouched


def test_external_endpoint_needs_a_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "environ", env)
        with pytest.raises(UserError, match="base_url"):
            get_engine("external")
    with pytest.raises(UserError, match="not an http"):
        get_engine("external", {"base_url": "ftp://x"})
    with pytest.raises(UserError, match="bad engine.options"):
        get_engine("vllm", {"base_url": "http://x"})


# --- launch templates: argv lists in, argv lists out ---------------------------------

def test_docker_template_wraps_the_argv() -> None:
    template = ["docker", "run", "--rm", "--gpus", "all", "-p", "127.0.0.1:{port}:{port}",
                "lmsysorg/sglang:latest", "python3", "-m", "sglang.launch_server", "{args}"]
    setup = _setup("sglang", **{"engine.launch_template": template, "engine.host": "0.0.0.0"})
    config = {"tp_size": 1, "dp_size": 1, "pp_size": 1, "max_running_requests": 64, "chunked_prefill_size": 2048,
              "page_size": 1}
    argv = plan(setup, config, 30123).argv
    assert argv == [
        "docker", "run", "--rm", "--gpus", "all", "-p", "127.0.0.1:30123:30123", "lmsysorg/sglang:latest",
        "python3", "-m", "sglang.launch_server",
        "--model-path", setup.model.source, "--served-model-name", "tiny", "--host", "0.0.0.0",
        "--port", "30123", "--enable-metrics", "--context-length", "512",
        "--tp-size", "1", "--dp-size", "1", "--pp-size", "1", "--max-running-requests", "64",
        "--chunked-prefill-size", "2048", "--page-size", "1",
    ]


def test_slurm_template_keeps_items_whole() -> None:
    template = ["srun", "--gres=gpu:{port}", "--job-name", "tune {host}; rm -rf /", "{argv}"]
    setup = _setup("vllm", gpus=1, **{"engine.launch_template": template})
    argv = plan(setup, {"max_num_seqs": 8}, 9000).argv
    inner = plan(_setup("vllm", gpus=1), {"max_num_seqs": 8}, 9000).argv
    # No shell: an item with spaces and a ';' stays one literal argument.
    assert argv == ["srun", "--gres=gpu:9000", "--job-name", "tune 127.0.0.1; rm -rf /", *inner]


def test_vllm_on_ray_for_multi_node_tensor_parallelism() -> None:
    template = ["ray", "job", "submit", "--address", "http://head:8265", "--", "{argv}"]
    setup = _setup("vllm", gpus=16, **{
        "engine.launch_template": template,
        "engine.extra_args": ["--distributed-executor-backend", "ray"],
        "space": {"tensor_parallel_size": {"choices": [16]}},
    })
    argv = plan(setup, {"tensor_parallel_size": 16, "max_num_seqs": 64}, 8100).argv
    assert argv[:7] == ["ray", "job", "submit", "--address", "http://head:8265", "--", sys.executable]
    assert argv[7:11] == ["-m", "vllm.entrypoints.cli.main", "serve", setup.model.source]
    tail = argv[argv.index("--tensor-parallel-size"):]
    assert tail == ["--tensor-parallel-size", "16", "--max-num-seqs", "64", "--distributed-executor-backend", "ray"]


def test_template_without_the_command_is_refused() -> None:
    with pytest.raises(UserError, match="'{argv}'"):
        load_spec(None, {"engine.launch_template": ["docker", "run", "img"]})


# --- metric names against recorded /metrics text -----------------------------------

def _resolve(text: str, names: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Each canonical signal's value (summed over label sets; a histogram's count), first name present."""
    families = {f.name.removesuffix("_total"): f for f in text_string_to_metric_families(text)}
    out: dict[str, Any] = {}
    for signal, candidates in names.items():
        for name in candidates:
            family = families.get(name.removesuffix("_total"))
            if family is None:
                continue
            if family.type == "histogram":
                out[signal] = ("histogram", sum(s.value for s in family.samples if s.name.endswith("_count")))
            else:
                value = sum(s.value for s in family.samples if not s.name.endswith("_created"))
                out[signal] = (family.type, value)
            break
    return out


def test_sglang_metric_names_match_recorded_text() -> None:
    engine = get_engine("sglang")
    text = (METRICS / "sglang.txt").read_text()
    assert all(line.startswith(("#", engine.metric_prefix)) for line in text.splitlines() if line)
    got = _resolve(text, dict(engine.metric_names))
    assert got["kv_cache_usage"] == ("gauge", 0.82)
    assert got["running"] == ("gauge", 162) and got["waiting"] == ("gauge", 317)
    assert got["preemptions"] == ("counter", 17)  # the counter wins over the older gauge
    assert got["queue_time"] == ("histogram", 2944) and got["ttft"][1] == 2944
    assert got["itl"][0] == "histogram" and got["e2e"][0] == "histogram"
    assert got["prefix_hit_rate"] == ("gauge", pytest.approx(0.2477))
    assert got["requests_finished"] == ("counter", 2944)
    assert set(got) == set(engine.metric_names)  # every declared name is in the documented text


def test_tgi_metric_names_match_recorded_text() -> None:
    engine = get_engine("tgi")
    text = (METRICS / "tgi.txt").read_text()
    got = _resolve(text, dict(engine.metric_names))
    assert got["running"] == ("gauge", 64) and got["waiting"] == ("gauge", 37)
    assert got["queue_time"] == ("histogram", 1198)
    assert got["requests_finished"] == ("counter", 1198)
    assert "kv_cache_usage" not in engine.metric_names  # TGI does not publish one
    assert set(got) == set(engine.metric_names)


def test_vllm_capture_and_adapters_agree_with_the_scraper() -> None:
    """The scraper reads each adapter's declared names; vLLM's come from a real capture."""
    from autotune.telemetry import parse_metrics

    vllm = (METRICS / "vllm.txt").read_text()
    got = _resolve(vllm, dict(get_engine("vllm").metric_names or {}))
    for signal in ("kv_cache_usage", "running", "waiting", "preemptions", "queue_time", "prefix_cache_hits"):
        assert signal in got, signal
    for engine, file in (("sglang", "sglang.txt"), ("tgi", "tgi.txt")):
        adapter = get_engine(engine)
        snap = parse_metrics((METRICS / file).read_text(), adapter.metric_names)
        assert snap.gauges["waiting"] == (317 if engine == "sglang" else 37)
        assert snap.histograms["queue_time"].count == (2944 if engine == "sglang" else 1198)
        assert math.isfinite(snap.histograms["queue_time"].mean())


# --- an engine from outside the package: one .py, one .yaml -------------------------

TOY_PY = '''
"""A toy engine: exists only to prove that an adapter needs no edits elsewhere."""
from autotune.engines.base import Capabilities, EngineAdapter, ModelRef


class ToyAdapter(EngineAdapter):
    name = "toy"
    capabilities = Capabilities(ignore_eos=False, metrics=False)
    metrics_path = None

    def base_argv(self, model: ModelRef, host: str, port: int) -> list[str]:
        return ["toy-serve", model.source, "--bind", f"{host}:{port}"]
'''

TOY_YAML = """
engine: toy
knobs:
  batch:
    type: int
    low: 1
    high: 4
    arg: --batch
  fast:
    type: bool
    arg: --fast
constraints:
  - batch > 100
"""


@pytest.fixture()
def toy_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "engines"
    folder.mkdir()
    (folder / "toy.py").write_text(textwrap.dedent(TOY_PY))
    (folder / "toy.yaml").write_text(TOY_YAML)
    monkeypatch.setenv(ENGINE_PATH_ENV, str(folder))
    return folder


def test_toy_engine_is_found_and_a_spec_can_use_it(toy_engine: Path) -> None:
    assert sorted(p.name for p in toy_engine.iterdir()) == ["toy.py", "toy.yaml"]
    assert "toy" in engine_names()
    assert space_file("toy") == toy_engine / "toy.yaml"
    setup = _setup("toy", device="cpu", gpus=1, **{"space": {"batch": {"high": 3}}})
    assert type(setup.engine).__name__ == "ToyAdapter"
    launch = plan(setup, {"batch": 3, "fast": False}, 7000)
    assert launch.argv == ["toy-serve", setup.model.source, "--bind", "127.0.0.1:7000", "--batch", "3", "--no-fast"]
    assert setup.space.check({"batch": 3}, setup.hardware) == ["violates batch > 100"]


def test_toy_engine_runs_through_the_cli(toy_engine: Path, tmp_path: Path) -> None:
    """A whole `autotune optimize` on the toy engine: its rule makes every configuration
    infeasible, so trials are recorded as pruned and nothing is launched."""
    env = {**os.environ, ENGINE_PATH_ENV: str(toy_engine), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "optimize", "--model", "tiny", "--engine", "toy",
         "--device", "cpu", "--trials", "1", "--no-baseline", "--study-dir", str(tmp_path / "study")],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "engine toy" in out.stdout
    assert "violates batch > 100" in out.stdout
    assert "0 measured" in out.stdout and "infeasible" in out.stdout
    assert not any((tmp_path / "study" / "trials").glob("*/engine.log"))


def test_a_builtin_name_cannot_be_shadowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "evil.py").write_text(TOY_PY.replace('name = "toy"', 'name = "vllm"'))
    monkeypatch.setenv(ENGINE_PATH_ENV, str(tmp_path))
    assert type(get_engine("vllm")).__module__ == "autotune.engines.vllm"


def test_a_broken_adapter_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.setenv(ENGINE_PATH_ENV, str(tmp_path))
    with pytest.raises(UserError, match="cannot load engine adapter .*broken.py: ModuleNotFoundError"):
        engine_names()
