"""What a vLLM launch plan says, without starting an engine: the entry point, the
config file a recommendation is served from, and the compile cache shared by trials."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from autotune.engines import get_engine
from autotune.engines.base import ModelRef, options_as_config
from autotune.errors import UserError
from autotune.space import SearchSpace

MODEL = ModelRef("/models/llama", "llama", "/models/llama", dummy_weights=True, max_model_len=512)
EXTRA = ["--seed", "3", "--enforce-eager", "--compilation-config", '{"mode": 0}', "--max-logprobs=2"]


def _plan(engine_options: dict | None = None, *, extra_env: dict | None = None, device: str = "cuda"):  # type: ignore[no-untyped-def]
    space = SearchSpace.load("vllm").for_hardware(device, {"gpu_count": 1.0})
    config = {"max_num_seqs": 8, "enable_prefix_caching": False, "gpu_memory_utilization": 0.9,
              "kv_cache_dtype": "auto", "quantization": None}
    config = {k: v for k, v in config.items() if k in space.knobs}
    return get_engine("vllm", engine_options).plan(
        MODEL, space.knob_specs(), config, host="127.0.0.1", port=8123, device=device,
        extra_args=EXTRA, extra_env=extra_env,
    )


def test_trials_run_vllm_serve_with_the_model_first() -> None:
    launch = _plan()
    assert launch.argv[:5] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", MODEL.source]
    assert "--model" not in launch.argv and "vllm.entrypoints.openai.api_server" not in launch.argv
    # An image whose entry point is `vllm serve` is given the rest: the model, then the options.
    assert launch.argv[launch.program_len:][:1] == [MODEL.source]


def test_the_config_file_is_the_whole_launch() -> None:
    config = _plan().config_file
    assert config == {
        "served-model-name": "llama",
        "max-model-len": 512,
        "load-format": "dummy",
        "max-num-seqs": 8,
        "no-enable-prefix-caching": True,
        "gpu-memory-utilization": 0.9,
        "kv-cache-dtype": "auto",
        "seed": 3,
        "enforce-eager": True,
        "compilation-config": {"mode": 0},
        "max-logprobs": 2,
    }
    # The address is the deployer's; YAML keeps the types (512, not '512').
    assert "host" not in config and "port" not in config
    assert yaml.safe_load(yaml.safe_dump(config)) == config


def test_options_read_back_as_argparse_would() -> None:
    assert options_as_config(["--a", "1", "--a", "2", "--b", "x", "y", "--c", "--d=-1.5", "--e", "-4"]) == {
        "a": 2, "b": ["x", "y"], "c": True, "d": -1.5, "e": -4,
    }
    with pytest.raises(ValueError, match="follows no option"):
        options_as_config(["stray", "--a", "1"])


def test_the_compile_cache_is_autotunes_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    launch = _plan()
    assert launch.env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")
    assert launch.housekeeping_env == ("VLLM_CACHE_ROOT",)
    assert "VLLM_CACHE_ROOT" not in launch.recommended_env()
    assert "VLLM_CACHE_ROOT=" in launch.command_line()  # the trial's own command says where it ran

    spec_env = _plan(extra_env={"VLLM_CACHE_ROOT": "/fast/disk"})
    assert spec_env.env["VLLM_CACHE_ROOT"] == "/fast/disk" and spec_env.housekeeping_env == ()
    assert spec_env.recommended_env()["VLLM_CACHE_ROOT"] == "/fast/disk"

    monkeypatch.setenv("VLLM_CACHE_ROOT", "/users/own")
    assert "VLLM_CACHE_ROOT" not in _plan().env  # the engine inherits the user's own setting

    monkeypatch.delenv("VLLM_CACHE_ROOT")
    assert "VLLM_CACHE_ROOT" not in _plan({"compile_cache": False}).env
    assert _plan({"compile_cache": str(tmp_path / "elsewhere")}).env["VLLM_CACHE_ROOT"] == str(
        tmp_path / "elsewhere"
    )
    with pytest.raises(UserError, match="compile_cache"):
        get_engine("vllm", {"compile_cache": 3})


def test_cpu_environment_stays_what_the_trial_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    launch = _plan(device="cpu")
    assert launch.recommended_env() == {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}


def test_an_external_endpoint_plans_nothing_to_start() -> None:
    engine = get_engine("external", {"base_url": "http://gateway:8000/v1", "metrics_path": "/metrics"})
    launch = engine.plan(MODEL, {}, {"concurrency": 4}, host="127.0.0.1", port=0, device="cuda")
    assert (launch.argv, launch.env, launch.config_file) == ([], {}, {})
    assert launch.base_url == "http://gateway:8000" and launch.metrics_path == "/metrics"


def test_vllm_reads_the_config_file_as_the_trials_own_argv(tmp_path: Path) -> None:
    """Parsed by the installed vLLM, the file and the trial's command are one launch."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    launch = _plan()
    path = tmp_path / "trial-0.yaml"
    path.write_text(yaml.safe_dump(launch.config_file))
    parse = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args
    trial = vars(parse(launch.argv[launch.program_len:]))
    served = vars(parse([MODEL.source, "--config", str(path)]))
    differ = {k for k in trial if trial[k] != served.get(k)}
    assert differ == {"host", "port"}, {k: (trial[k], served.get(k)) for k in differ}
    assert served["max_model_len"] == 512 and served["enforce_eager"] is True and served["seed"] == 3


def test_each_vllm_start_gets_its_own_socket_folder_unless_the_user_named_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_RPC_BASE_PATH", raising=False)
    launch = _plan()
    assert launch.scratch_env == ("VLLM_RPC_BASE_PATH",)
    # The folder is the launcher's, made at start: no plan, command or recommendation names it.
    assert "VLLM_RPC_BASE_PATH" not in launch.env and "VLLM_RPC_BASE_PATH" not in launch.command_line()
    assert _plan(extra_env={"VLLM_RPC_BASE_PATH": "/srv/ipc"}).scratch_env == ()
    monkeypatch.setenv("VLLM_RPC_BASE_PATH", "/srv/ipc")
    assert _plan().scratch_env == ()
