"""Every argv an adapter can generate from its search space is accepted by the engine's
own argument parser (the installed one), without starting a server.

Each knob is taken at its bounds and at each of its choices, one knob at a time over a
base configuration, on every device the space knows (the GPU space with eight GPUs, so
every tensor- and pipeline-parallel choice is generated). The parsed values must be the
values set: an option the engine renamed, retyped or dropped fails here, not an hour
into a study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from autotune.engines import engine_names, get_engine
from autotune.engines.base import ModelRef
from autotune.space import Knob, SearchSpace

DEVICES = {"cpu": {"gpu_count": 1.0}, "cuda": {"gpu_count": 8.0}}
MODEL = ModelRef("/models/llama", "llama", "/models/llama", dummy_weights=True, max_model_len=512)


def knob_values(knob: Knob) -> list[Any]:
    """The values a sampler can reach at the edges: bounds, every choice, both booleans."""
    if knob.fixed is not None:
        return [knob.fixed]
    if knob.type == "bool":
        return [False, True]
    if knob.type == "categorical":
        return list(knob.choices or [])
    if knob.type == "int":
        return sorted({int(knob.low or 0), int(knob.high or 0)})
    return sorted({float(knob.low or 0), float(knob.high or 0)})


def configs(space: SearchSpace) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(knob, value, config): one knob moved to each of its edge values over a base config."""
    base = {name: knob_values(k)[0] for name, k in space.knobs.items()}
    for name, knob in space.knobs.items():
        for value in knob_values(knob):
            yield name, value, {**base, name: value}


def cases(engine: str) -> list[Any]:
    out = []
    for device, hardware in DEVICES.items():
        space = SearchSpace.load(engine).for_hardware(device, hardware)
        for name, value, config in configs(space):
            out.append(pytest.param(device, space, name, value, config, id=f"{device}-{name}={value}"))
    return out


def dest(arg: str) -> str:
    return arg.lstrip("-").replace("-", "_")


# -- vLLM ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_parser() -> Any:
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


def _vllm_parse(parser: Any, argv: list[str]) -> Any:
    """``vllm serve``'s arguments (the model first), parsed as the subcommand does."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    args = parser.parse_args(argv)
    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag  # what `vllm serve` does with its positional model
    validate_parsed_serve_args(args)
    AsyncEngineArgs.from_cli_args(args)  # every parsed field lands on the engine's arguments
    return args


@pytest.mark.parametrize(("device", "space", "knob", "value", "config"), cases("vllm"))
def test_vllm_accepts_every_generated_argv(
    vllm_parser: Any, tmp_path: Path, device: str, space: SearchSpace, knob: str, value: Any, config: dict
) -> None:
    engine = get_engine("vllm")
    launch = engine.plan(MODEL, space.knob_specs(), config, host="127.0.0.1", port=8000, device=device)
    assert launch.argv[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", MODEL.source]
    spec = space.knobs[knob]

    args = _vllm_parse(vllm_parser, launch.argv[4:])
    assert args.model == MODEL.source and args.max_model_len == MODEL.max_model_len
    if spec.arg is not None:
        parsed = getattr(args, dest(spec.arg))
        if value is None or (value is False and spec.flag):
            assert f"{spec.arg}" not in launch.argv  # left to the engine's default
        else:
            assert parsed == value, f"{spec.arg} {value!r} parsed as {parsed!r}"
    if spec.env is not None:
        import vllm.envs

        assert spec.env in vllm.envs.environment_variables, f"{spec.env} is not a vLLM variable"
        assert launch.env[spec.env] == str(int(value) if isinstance(value, bool) else value)

    # The recommended config file (`vllm serve MODEL --config trial-N.yaml`) says the same.
    config_path = tmp_path / "trial.yaml"
    config_path.write_text(yaml.safe_dump(launch.config_file))
    from_file = _vllm_parse(vllm_parser, [MODEL.source, "--config", str(config_path)])
    for name, k in space.knobs.items():
        if k.arg is not None and not (config[name] is False and k.flag) and config[name] is not None:
            assert getattr(from_file, dest(k.arg)) == config[name], name
    # ... and so does every other launch option: the file starts what the trial measured.
    for option in ("max_model_len", "load_format", "served_model_name"):
        assert getattr(from_file, option) == getattr(args, option), option
    assert "host" not in launch.config_file and "port" not in launch.config_file


def test_parallel_sizes_reach_vllm(vllm_parser: Any) -> None:
    """TP and PP as a four-GPU study generates them: every combination within the GPUs."""
    engine = get_engine("vllm")
    space = SearchSpace.load("vllm").for_hardware("cuda", {"gpu_count": 4.0})
    tps, pps = space.knobs["tensor_parallel_size"].choices, space.knobs["pipeline_parallel_size"].choices
    assert (tps, pps) == ([1, 2, 4], [1, 2, 4])
    seen = []
    for tp in tps or []:
        for pp in pps or []:
            config = {"tensor_parallel_size": tp, "pipeline_parallel_size": pp}
            if space.check(config, {"gpu_count": 4.0}):
                continue
            argv = engine.plan(MODEL, space.knob_specs(), config, host="127.0.0.1", port=8000, device="cuda").argv
            args = _vllm_parse(vllm_parser, argv[4:])
            seen.append((args.tensor_parallel_size, args.pipeline_parallel_size))
    assert seen == [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (4, 1)]


def test_vllm_rejects_what_it_does_not_know(vllm_parser: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The parser is strict, so the acceptance above means something."""
    with pytest.raises(SystemExit):
        vllm_parser.parse_args(["--model", "m", "--kv-cache-dtype", "fp9"])
    with pytest.raises(SystemExit):
        vllm_parser.parse_args(["--model", "m", "--max-num-sequences", "4"])
    with pytest.raises(SystemExit):
        vllm_parser.parse_args(["--model", "m", "--tensor-parallel-size", "two"])
    err = capsys.readouterr().err
    assert "fp9" in err and "--max-num-sequences" in err and "two" in err


def test_vllm_knows_every_quantization_and_kv_dtype_in_the_space() -> None:
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    from autotune.space import KV_DTYPE_BYTES

    knobs = SearchSpace.load("vllm").for_hardware("cuda", {"gpu_count": 8.0}).knobs
    quant = [c for c in (knobs["quantization"].choices or []) if c is not None] if "quantization" in knobs else []
    assert set(quant) <= set(QUANTIZATION_METHODS)
    # feasibility sizes every KV dtype the space offers (auto follows the model dtype)
    kv = set(knobs["kv_cache_dtype"].choices or []) - {"auto"}
    assert kv <= set(KV_DTYPE_BYTES)


# -- transformers serve ------------------------------------------------------------


def _serve_command() -> Any:
    """The click command behind ``transformers serve`` (its CLI is built with typer)."""
    pytest.importorskip("transformers.cli.transformers")
    import click
    import typer.main
    from transformers.cli.transformers import app

    group = app if isinstance(app, click.Group) else typer.main.get_command(app)
    return group.commands["serve"]  # type: ignore[attr-defined]


@pytest.mark.skipif("transformers" not in engine_names(), reason="no transformers adapter in this tree")
@pytest.mark.parametrize(
    ("device", "space", "knob", "value", "config"),
    cases("transformers") if "transformers" in engine_names() else [],
)
def test_transformers_serve_accepts_every_generated_argv(
    device: str, space: SearchSpace, knob: str, value: Any, config: dict
) -> None:
    command = _serve_command()
    engine = get_engine("transformers")
    launch = engine.plan(MODEL, space.knob_specs(), config, host="127.0.0.1", port=8000, device=device)
    args = launch.argv[launch.argv.index("serve") + 1:]
    context = command.make_context("serve", list(args))  # parses and converts, runs nothing
    spec = space.knobs[knob]
    if spec.arg is not None and value is not None and not (value is False and spec.flag):
        parsed = context.params[dest(spec.arg)]
        assert parsed == value or str(parsed) == str(value), f"{spec.arg} {value!r} parsed as {parsed!r}"


@pytest.mark.skipif("transformers" not in engine_names(), reason="no transformers adapter in this tree")
def test_transformers_serve_rejects_what_it_does_not_know() -> None:
    import click

    command = _serve_command()
    with pytest.raises(click.UsageError, match="--cb-blok-size"):
        command.make_context("serve", ["/m", "--cb-blok-size", "16"])
    with pytest.raises(click.BadParameter):
        command.make_context("serve", ["/m", "--cb-num-blocks", "many"])
