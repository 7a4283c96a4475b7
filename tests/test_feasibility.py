"""Feasibility before launch: the config.json files of real public models (written from
their published figures, nothing downloaded) against GPU counts and memory, with the
reason of every rejection checked, and a study in which no infeasible trial launches."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from rich.console import Console

from autotune.errors import UserError
from autotune.space import (
    Capacity,
    Deployment,
    ModelShape,
    assess,
    deployment_from_argv,
    load_model_config,
    pipeline_stages,
)
from autotune.models.shapes import SHAPES, param_count

H100 = 80.0  # GiB per GPU, the figure a user gives for an 80 GB card


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each published config.json written to its own model folder, then read back as the checks read it."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, config in SHAPES.items():
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        loaded = load_model_config(str(folder))
        assert loaded is not None
        out[name] = loaded
    return out


def gpus(n: int, memory: float = H100) -> Capacity:
    return Capacity(device="cuda", gpu_count=n, gpu_memory_gib=memory)


@pytest.mark.parametrize(
    ("name", "billions"),
    [("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.55), ("qwen2.5-7b", 7.62), ("mixtral-8x7b", 46.70)],
)
def test_parameters_match_the_published_totals(configs: dict, name: str, billions: float) -> None:
    shape = ModelShape.from_config(configs[name])
    assert shape.params() == param_count(SHAPES[name])
    assert shape.params() / 1e9 == pytest.approx(billions, abs=0.01)


def test_70b_at_tp1_on_one_80gb_gpu_is_rejected_for_memory(configs: dict) -> None:
    verdict = assess(configs["llama-3.1-70b"], Deployment(tp=1, max_model_len=8192), gpus(1))
    assert not verdict.feasible
    (reason,) = verdict.reasons
    assert reason == (
        "weights 131.4 GiB / TP1 = 131.4 GiB + reserve 1.5 GiB + KV for 1x8192 tokens 2.5 GiB "
        "= 135.4 GiB > 73.6 GiB (0.92 x 80 GiB) per GPU"
    )


def test_70b_at_tp4_on_four_80gb_gpus_fits(configs: dict) -> None:
    verdict = assess(configs["llama-3.1-70b"], Deployment(tp=4, max_model_len=8192), gpus(4))
    assert verdict.feasible, verdict.reasons
    assert verdict.weights_per_gpu_gib == pytest.approx(131.4 / 4, rel=0.01)
    # 80 layers x 8 KV heads / TP4 x 128 x 2 (K and V) x 2 bytes per token, on each GPU
    assert verdict.kv_one_sequence_gib == pytest.approx(80 * 2 * 128 * 2 * 2 * 8192 / 2**30)
    assert verdict.to_json()["tp"] == 4 and verdict.to_json()["pp"] == 1


def test_tp3_does_not_divide_32_heads(configs: dict) -> None:
    verdict = assess(configs["llama-3.1-8b"], Deployment(tp=3), gpus(4))
    assert verdict.reasons == [
        "TP3 does not divide the 32 attention heads (heads % TP must be 0)",
        "TP3 does not divide the 8 KV heads (KV heads % TP must be 0)",
    ]


def test_qwen_28_heads_4_kv_heads(configs: dict) -> None:
    qwen = configs["qwen2.5-7b"]
    assert assess(qwen, Deployment(tp=8), gpus(8)).reasons == [
        "TP8 does not divide the 28 attention heads (heads % TP must be 0)"
    ]
    assert assess(qwen, Deployment(tp=4), gpus(8)).feasible
    # 7 divides the 28 heads, but with TP > 4 KV heads vLLM replicates them: TP must be a multiple of 4
    (reason,) = assess(qwen, Deployment(tp=7), gpus(8)).reasons
    assert reason.startswith("TP7 is not a multiple of the 4 KV heads")


def test_kv_heads_replicated_beyond_tp(configs: dict) -> None:
    """Llama-8B at TP16 (32 heads, 8 KV heads): each GPU keeps one KV head, not half of one."""
    verdict = assess(configs["llama-3.1-8b"], Deployment(tp=16, max_model_len=1024), gpus(16))
    assert verdict.feasible, verdict.reasons
    assert verdict.kv_one_sequence_gib == pytest.approx(32 * 1 * 128 * 2 * 2 * 1024 / 2**30)


def test_mixtral_counts_every_expert(configs: dict) -> None:
    mixtral = configs["mixtral-8x7b"]
    one = assess(mixtral, Deployment(tp=1, max_model_len=4096), gpus(1))
    assert one.weights_gib == pytest.approx(46.70e9 * 2 / 2**30, rel=0.001)
    (reason,) = one.reasons
    assert reason.startswith("weights 87.0 GiB / TP1 = 87.0 GiB + reserve 1.5 GiB + KV for 1x4096 tokens 0.5 GiB")
    assert assess(mixtral, Deployment(tp=2, max_model_len=4096), gpus(2)).feasible


def test_fp8_weights_halve_the_linear_layers(configs: dict) -> None:
    llama = configs["llama-3.1-70b"]
    bf16 = assess(llama, Deployment(tp=1, max_model_len=4096), gpus(1))
    fp8 = assess(llama, Deployment(tp=1, max_model_len=4096, quantization="fp8", gpu_memory_utilization=0.95), gpus(1))
    # the embeddings and the LM head (2 x 128256 x 8192) stay in bf16
    embeddings = 2 * 128256 * 8192
    expected = ((70.553706496e9 - embeddings) * 1 + embeddings * 2) / 2**30
    assert fp8.weights_gib == pytest.approx(expected, rel=1e-4)
    assert fp8.weights_gib < 0.53 * bf16.weights_gib
    assert not bf16.feasible and fp8.feasible, fp8.reasons


def test_awq_int4_checkpoint_counts_group_scales(configs: dict) -> None:
    awq = copy.deepcopy(configs["llama-3.1-70b"])
    awq["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}
    verdict = assess(awq, Deployment(tp=1, max_model_len=8192), gpus(1))
    assert verdict.feasible, verdict.reasons
    embeddings = 2 * 128256 * 8192
    per_weight = 0.5 + (2 + 0.5) / 128  # 4 bits, an fp16 scale and a 4-bit zero per 128 weights
    expected = ((70.553706496e9 - embeddings) * per_weight + embeddings * 2) / 2**30
    assert verdict.weights_gib == pytest.approx(expected, rel=1e-4)


def test_fp8_kv_cache_halves_the_bytes_per_token(configs: dict) -> None:
    llama = configs["llama-3.1-8b"]
    auto = assess(llama, Deployment(max_model_len=4096), gpus(1))
    fp8 = assess(llama, Deployment(max_model_len=4096, kv_cache_dtype="fp8"), gpus(1))
    assert auto.kv_bytes_per_token == 32 * 8 * 128 * 2 * 2  # layers x KV heads x head_dim x K,V x bf16
    assert fp8.kv_bytes_per_token == auto.kv_bytes_per_token / 2


def test_one_long_sequence_must_fit_the_kv_cache(configs: dict) -> None:
    """Llama-8B on a 24 GiB card: fits at 8K context, not at its full 128K (16 GiB of KV for one sequence)."""
    llama = configs["llama-3.1-8b"]
    assert assess(llama, Deployment(max_model_len=8192), gpus(1, 24)).feasible
    (reason,) = assess(llama, Deployment(), gpus(1, 24)).reasons  # no --max-model-len: the config's 131072
    assert "+ KV for 1x131072 tokens 16.0 GiB = 32.5 GiB > 22.1 GiB (0.92 x 24 GiB) per GPU" in reason


def test_max_model_len_beyond_the_config(configs: dict) -> None:
    qwen = configs["qwen2.5-7b"]
    assert assess(qwen, Deployment(max_model_len=65536), gpus(1)).reasons == [
        "max-model-len 65536 > the model's 32768 (from config.json; vLLM refuses it unless "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)"
    ]
    allowed = deployment_from_argv(["--max-model-len", "65536"], {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"})
    assert assess(qwen, allowed, gpus(1)).feasible


def test_tp_times_pp_above_the_gpus_given(configs: dict) -> None:
    verdict = assess(configs["llama-3.1-8b"], Deployment(tp=4, pp=2, max_model_len=4096), gpus(4))
    assert verdict.reasons == ["TP4 x PP2 = 8 GPUs > 4 given"]


def test_pipeline_splits_uneven_layers_like_vllm(configs: dict) -> None:
    """vLLM needs no PP that divides the layers; it gives the remainder to the stages before the last."""
    assert pipeline_stages(32, 3) == [11, 11, 10]
    assert pipeline_stages(80, 4) == [20, 20, 20, 20]
    llama = configs["llama-3.1-70b"]
    verdict = assess(llama, Deployment(tp=2, pp=3, max_model_len=4096), gpus(6))
    assert verdict.feasible, verdict.reasons
    assert verdict.kv_one_sequence_gib == pytest.approx(27 * 4 * 128 * 2 * 2 * 4096 / 2**30)
    assert assess(configs["llama-3.1-8b"], Deployment(pp=64), gpus(64)).reasons == [
        "PP64 > the 32 layers: a pipeline stage would hold none"
    ]


def test_gpu_memory_utilization_sets_the_budget(configs: dict) -> None:
    llama = configs["llama-3.1-70b"]
    at_tp2 = dict(tp=2, max_model_len=32768)
    low = assess(llama, Deployment(**at_tp2, gpu_memory_utilization=0.80), gpus(2))
    high = assess(llama, Deployment(**at_tp2, gpu_memory_utilization=0.95), gpus(2))
    assert "> 64.0 GiB (0.80 x 80 GiB) per GPU" in low.reasons[0]
    assert high.feasible, high.reasons


def test_cpu_build_checks_its_kv_space_and_host_memory(configs: dict) -> None:
    cpu = Capacity(device="cpu", host_memory_gib=24)
    llama = configs["llama-3.1-8b"]
    fits = deployment_from_argv(["--max-model-len", "4096"], {"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert assess(llama, fits, cpu).feasible
    long = deployment_from_argv([], {"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert assess(llama, long, cpu).reasons == ["KV for 1x131072 tokens 16.0 GiB > the CPU KV-cache space 4 GiB"]
    big = assess(configs["llama-3.1-70b"], Deployment(max_model_len=4096, cpu_kv_cache_gib=2), cpu)
    assert big.reasons == [
        "weights 131.4 GiB + KV-cache space 2 GiB + reserve 3.0 GiB = 136.4 GiB > 24.0 GiB host memory"
    ]
    # no GPU count on the CPU build: TP x PP is not held against GPUs
    assert assess(llama, Deployment(tp=2, max_model_len=1024, cpu_kv_cache_gib=1), cpu).feasible


def test_tied_embeddings_counted_once_until_pipelined(configs: dict) -> None:
    tied = copy.deepcopy(configs["llama-3.1-8b"])
    tied["tie_word_embeddings"] = True
    embed = 128256 * 4096 * 2 / 2**30
    untied = assess(configs["llama-3.1-8b"], Deployment(max_model_len=1024), gpus(2))
    once = assess(tied, Deployment(max_model_len=1024), gpus(2))
    assert untied.weights_gib - once.weights_gib == pytest.approx(embed)
    # with PP the last stage holds its own copy of the LM head
    pp2 = assess(tied, Deployment(pp=2, max_model_len=1024), gpus(2))
    assert pp2.weights_per_gpu_gib == pytest.approx(16 * (once.weights_per_gpu_gib - embed) / 32 + embed, rel=1e-3)


def test_argv_is_read_as_the_engine_reads_it() -> None:
    argv = ["python", "-m", "vllm", "--model", "m", "-tp", "2", "--tensor-parallel-size=4",
            "--pipeline-parallel-size", "2", "--kv-cache-dtype", "fp8", "--quantization", "fp8",
            "--gpu-memory-utilization", "0.85", "--max-model-len", "2048", "--dtype", "float16"]
    d = deployment_from_argv(argv, {"VLLM_CPU_KVCACHE_SPACE": "3"})
    assert (d.tp, d.pp, d.gpus) == (4, 2, 8)
    assert (d.kv_cache_dtype, d.quantization, d.gpu_memory_utilization) == ("fp8", "fp8", 0.85)
    assert (d.max_model_len, d.dtype, d.cpu_kv_cache_gib) == (2048, "float16", 3.0)
    assert deployment_from_argv(["--max-model-len", "-1"]).max_model_len is None  # vLLM fits it to memory


def test_kv_of_one_sequence_only_where_the_engine_reserves_it(configs: dict) -> None:
    """vLLM refuses to start without room for one sequence of the config's length; an engine
    given no length (transformers serve, TGI without --max-total-tokens) reserves none up front."""
    llama, card = configs["llama-3.1-8b"], gpus(1, 24)
    vllm = deployment_from_argv(["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"])
    (reason,) = assess(llama, vllm, card).reasons
    assert "KV for 1x131072 tokens 16.0 GiB" in reason
    plain = deployment_from_argv(["transformers", "serve", "m", "--continuous-batching"])
    verdict = assess(llama, plain, card)
    assert verdict.feasible and verdict.kv_one_sequence_gib == 0.0
    assert "its KV cache is not counted" in verdict.notes[0]
    tgi = deployment_from_argv(["text-generation-launcher", "--model-id", "m", "--max-total-tokens", "131072"])
    assert "KV for 1x131072 tokens 16.0 GiB" in assess(llama, tgi, card).reasons[0]


def test_unknown_model_checks_only_the_gpu_count() -> None:
    verdict = assess(None, Deployment(tp=2), gpus(1))
    assert verdict.reasons == ["TP2 x PP1 = 2 GPUs > 1 given"]
    assert verdict.notes == ["no config.json found locally: heads and memory not checked"]
    no_memory = assess(SHAPES["llama-3.1-70b"], Deployment(), Capacity(device="cuda", gpu_count=1))
    assert no_memory.feasible and any("GPU memory unknown" in n for n in no_memory.notes)


def test_config_found_in_the_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    repo = tmp_path / "models--meta-llama--Llama-3.1-8B-Instruct"
    snapshot = repo / "snapshots" / "0e9e39f249a16976918f6564b8830bc894c89659"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    (snapshot / "config.json").write_text(json.dumps(SHAPES["llama-3.1-8b"]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert load_model_config("meta-llama/Llama-3.1-8B-Instruct") == SHAPES["llama-3.1-8b"]
    assert load_model_config("meta-llama/Llama-3.1-70B-Instruct") is None  # not cached: nothing fetched


# -- against the engine: real vLLM starts on an H100 ------------------------------

LOGS = Path(__file__).parent / "data" / "engine_logs"


def _h100_run(name: str) -> dict[str, Any]:
    """What vLLM 0.25.1 said when started on an H100 80GB HBM3 (79.18 GiB) with a model shape."""
    import ast
    import re

    text = (LOGS / f"vllm_h100_fit_{name}.log").read_text(errors="replace")
    args = re.search(r"non-default args: (\{.*\})", text)
    assert args is not None
    found = {k: re.search(p, text) for k, p in {
        "weights": r"Model loading took ([\d.]+) GiB", "kv": r"Available KV cache memory: ([\d.]+) GiB",
        "needed": r"\(([\d.]+) GiB KV cache is needed"}.items()}
    return {
        "args": ast.literal_eval(args.group(1)),
        "started": "Engine core initialization failed" not in text,
        **{k: float(m.group(1)) for k, m in found.items() if m},
    }


@pytest.mark.parametrize(
    ("name", "shape"),
    [("a_8b_8k_u090", "llama-3.1-8b"), ("b_8b_128k_u040", "llama-3.1-8b"),
     ("c_8b_128k_u042", "llama-3.1-8b"), ("d_70b_tp1", "llama-3.1-70b")],
)
def test_verdicts_match_real_vllm_starts_on_an_h100(configs: dict, name: str, shape: str) -> None:
    """Near the edge: Llama-8B at its full 131072 context fails at utilisation 0.40 (16.0 GiB of
    KV needed, 15.34 available) and starts at 0.42; the estimate says the same, and the
    70B at TP1 that ran out of memory is rejected."""
    from autotune.space import GPU_RESERVE_GIB

    run = _h100_run(name)
    argv = ["python", "-m", "vllm.entrypoints.openai.api_server"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in run["args"].items()]
    verdict = assess(configs[shape], deployment_from_argv(argv), gpus(1, 79.18))
    assert verdict.feasible == run["started"], verdict.reasons
    if "weights" in run:
        assert verdict.weights_per_gpu_gib == pytest.approx(run["weights"], abs=0.05)
    if "needed" in run:
        assert verdict.kv_one_sequence_gib == pytest.approx(run["needed"], abs=0.05)
    if "kv" in run:  # what the engine kept beside weights and KV fits inside the reserve
        overhead = verdict.budget_gib - run["weights"] - run["kv"]
        assert 0 < overhead <= GPU_RESERVE_GIB


# -- wired into the trial and the study --------------------------------------------


def test_trial_check_reads_the_spec_hardware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.spec import load_spec
    from autotune.trial import setup_from_spec
    from autotune.trial import check, feasibility

    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    base = {"model": "shape:llama-3.1-70b", "max_model_len": 8192}
    one = setup_from_spec(load_spec(None, {**base, "hardware": {"device": "cuda", "gpu_memory_gib": 80}}))
    config = {"max_num_seqs": 8, "max_num_batched_tokens": 512, "tensor_parallel_size": 1,
              "pipeline_parallel_size": 1, "gpu_memory_utilization": 0.9}
    (reason,) = check(one, config)
    assert reason.startswith("weights 131.4 GiB / TP1 = 131.4 GiB")

    four = setup_from_spec(load_spec(None, {**base, "hardware": {"device": "cuda", "gpu_memory_gib": 80,
                                                             "gpu_ids": [4, 5, 6, 7]}}))
    assert four.extra_env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert four.extra_env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert four.space.knobs["tensor_parallel_size"].choices == [1, 2, 4]
    assert check(four, {**config, "tensor_parallel_size": 4}) == []
    verdict = feasibility(four, {**config, "tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    assert (verdict.tp, verdict.pp, verdict.feasible) == (2, 2, True)
    # the space's own rule and the feasibility check both speak
    assert check(four, {**config, "tensor_parallel_size": 4, "pipeline_parallel_size": 2}) == [
        "violates tensor_parallel_size * pipeline_parallel_size <= gpu_count", "TP4 x PP2 = 8 GPUs > 4 given",
    ]


@pytest.mark.parametrize(
    ("hardware", "needle"),
    [
        ({"gpu_ids": [0, 0]}, "must be distinct"),
        ({"gpu_ids": [0, 1], "gpu_count": 4}, "gpu_count 4 but 2 gpu_ids"),
        ({"gpu_ids": []}, "at least one GPU index"),
    ],
)
def test_bad_gpu_ids(hardware: dict, needle: str) -> None:
    from autotune.spec import load_spec

    with pytest.raises(UserError) as info:
        load_spec(None, {"hardware": hardware})
    assert needle in str(info.value)


def test_gpu_ids_conflicting_with_engine_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.spec import load_spec
    from autotune.trial import setup_from_spec

    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    spec = load_spec(None, {"model": "shape:llama-3.1-8b", "hardware": {"device": "cuda", "gpu_ids": [1]},
                            "engine": {"env": {"CUDA_VISIBLE_DEVICES": "0"}}})
    with pytest.raises(UserError, match="hardware.gpu_ids says 1"):
        setup_from_spec(spec)


def test_infeasible_trials_in_a_real_study_launch_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama-3.1-8B's full 128K context needs 16 GiB of KV for one sequence, more than any
    KV-cache space the CPU space offers (1-4 GiB): every trial is pruned, none launched."""
    import psutil

    from autotune.report import failures_table
    from autotune.tuning import StudyResults
    from autotune.spec import load_spec
    from autotune.tuning import run_study

    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    spec = load_spec(None, {
        "model": "shape:llama-3.1-8b", "study_dir": str(tmp_path / "study"), "hardware.device": "cpu",
        "budget": {"trials": 1}, "sampler": "random", "seed": 3,
        "space": {"max_num_seqs": {"low": 2, "high": 16}, "max_num_batched_tokens": {"choices": [512, 1024]},
                  "kv_cache_dtype": "auto"},
    })
    run = run_study(spec)
    trials = run.study.get_trials(deepcopy=False)
    assert trials  # the study tried, found nothing it could launch, and stopped
    assert psutil.Process().children(recursive=True) == []
    for t in trials:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["status"] == "infeasible"
        space = t.params["kv_cache_space_gib"]
        assert t.user_attrs["reason"] == f"KV for 1x131072 tokens 16.0 GiB > the CPU KV-cache space {space} GiB"
        assert t.user_attrs["feasibility"]["kv_bytes_per_token"] == 131072
        assert (t.user_attrs["feasibility"]["tp"], t.user_attrs["feasibility"]["pp"]) == (1, 1)
        assert "log_path" not in t.user_attrs and "command" not in t.user_attrs
        trial_dir = Path(t.user_attrs["trial_dir"])
        assert not (trial_dir / "engine.log").exists()
        assert json.loads((trial_dir / "outcome.json").read_text())["status"] == "infeasible"

    console = Console(file=io.StringIO(), width=300)
    console.print(failures_table(StudyResults(run.study, spec)))
    shown = console.file.getvalue()
    assert "refused before launch" in shown and "KV for 1x131072 tokens 16.0 GiB > the CPU KV-cache space" in shown
