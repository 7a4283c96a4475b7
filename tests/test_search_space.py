"""The vLLM search space: device filtering, overrides, and rules checked before launch."""

from __future__ import annotations

import pytest

from autotune.engines import engine_names, get_engine
from autotune.errors import UserError
from autotune.space import SearchSpace


def test_every_engine_has_a_space() -> None:
    for name in engine_names():
        space = SearchSpace.load(name)
        assert space.engine == name


def test_cpu_drops_gpu_knobs_and_keeps_cpu_ones() -> None:
    space = SearchSpace.load("vllm").for_hardware("cpu", {"gpu_count": 1})
    assert "gpu_memory_utilization" not in space.knobs
    assert "tensor_parallel_size" not in space.knobs
    assert "kv_cache_space_gib" in space.knobs
    # the TP x PP rule names knobs that do not exist on CPU, so it is dropped
    assert all("tensor_parallel_size" not in rule for rule in space.constraints)


def test_gpu_count_limits_parallelism_choices() -> None:
    one = SearchSpace.load("vllm").for_hardware("cuda", {"gpu_count": 1})
    assert one.knobs["tensor_parallel_size"].fixed == 1
    four = SearchSpace.load("vllm").for_hardware("cuda", {"gpu_count": 4})
    assert four.knobs["tensor_parallel_size"].choices == [1, 2, 4]
    assert four.check({"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "max_num_seqs": 8,
                       "max_num_batched_tokens": 512}, {"gpu_count": 4}) == [
        "violates tensor_parallel_size * pipeline_parallel_size <= gpu_count"
    ]


def test_fp8_kv_cache_is_offered_on_a_cpu_only_where_its_kernels_run() -> None:
    # vLLM's CPU attention: "FP8 KV cache on CPU requires x86 with AVX-512 or AMX"; elsewhere every
    # such trial is a failed start, so the knob is pinned to the model's own dtype there.
    space = SearchSpace.load("vllm")
    without = space.for_hardware("cpu", {"gpu_count": 1, "cpu_avx512": 0.0}).knobs["kv_cache_dtype"]
    assert (without.fixed, without.choices) == ("auto", ["auto"])
    kept = space.for_hardware("cpu", {"gpu_count": 1, "cpu_avx512": 1.0}).knobs["kv_cache_dtype"]
    assert kept.fixed is None and kept.choices == ["auto", "fp8_e5m2", "fp8_e4m3"]
    gpu = space.for_hardware("cuda", {"gpu_count": 1, "cpu_avx512": 0.0}).knobs["kv_cache_dtype"]
    assert gpu.fixed is None and gpu.choices == ["auto", "fp8"]  # the GPU's kernels do not need it


def test_rule_between_knobs_is_checked() -> None:
    space = SearchSpace.load("vllm").for_hardware("cpu", {"gpu_count": 1})
    ok = {"max_num_seqs": 64, "max_num_batched_tokens": 512}
    bad = {"max_num_seqs": 1024, "max_num_batched_tokens": 512}
    assert space.check(ok, {"gpu_count": 1}) == []
    assert space.check(bad, {"gpu_count": 1}) == ["violates max_num_batched_tokens >= max_num_seqs"]


def test_overrides_pin_and_narrow() -> None:
    space = SearchSpace.load("vllm").with_overrides({"block_size": 16, "max_num_seqs": {"low": 2, "high": 8}})
    assert space.knobs["block_size"].fixed == 16
    assert (space.knobs["max_num_seqs"].low, space.knobs["max_num_seqs"].high) == (2, 8)


def test_null_pins_a_knob_to_the_engines_own_default() -> None:
    # `quantization: null` reads as "no quantization", never as "the whole range".
    space = SearchSpace.load("vllm").for_hardware("cuda", {"gpu_count": 1}).with_overrides(
        {"quantization": None, "max_num_batched_tokens": None})
    engine = get_engine("vllm")
    for name in ("quantization", "max_num_batched_tokens"):
        assert space.knobs[name].choices == [None] and space.knobs[name].fixed is None
    argv = engine.knob_argv(space.knob_specs(), {"quantization": None, "max_num_batched_tokens": None, "max_num_seqs": 8})
    assert argv == ["--max-num-seqs", "8"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"max_num_sequences": 4}, "unknown knob 'max_num_sequences'"),
        ({"max_num_seqs": {"low": 64, "high": 8}}, "low (64.0) > high (8.0)"),
        ({"max_num_seqs": {"lo": 1}}, "max_num_seqs"),
    ],
)
def test_bad_overrides(overrides: dict, needle: str) -> None:
    with pytest.raises(UserError) as info:
        SearchSpace.load("vllm").with_overrides(overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_knobs_become_argv_and_env() -> None:
    space = SearchSpace.load("vllm").for_hardware("cpu", {"gpu_count": 1})
    engine = get_engine("vllm")
    knobs = space.knob_specs()
    config = {"max_num_seqs": 8, "enable_prefix_caching": False, "kv_cache_space_gib": 1, "block_size": 16}
    argv = engine.knob_argv(knobs, config)
    assert argv == ["--max-num-seqs", "8", "--no-enable-prefix-caching", "--block-size", "16"]
    assert engine.knob_env(knobs, config) == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert engine.config_file(knobs, config) == {
        "max-num-seqs": 8, "no-enable-prefix-caching": True, "block-size": 16,
    }


def test_rules_reject_code() -> None:
    from autotune.space.rules import parse_rule

    with pytest.raises(UserError):
        parse_rule("__import__('os').system('true') == 0")
