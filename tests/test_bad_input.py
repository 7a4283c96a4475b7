"""Bad input, through the real command line (``autotune.cli.main``): exactly one line on
stderr, starting ``error:`` and naming what is wrong, exit status 2, and nothing
written to the study folder or the storage."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable

import optuna
import pytest

from autotune import cli

Case = tuple[str, Callable[[Path], list[str]], str]


def spec(text: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        path = tmp / "spec.yaml"
        path.write_text(text)
        return ["optimize", "--spec", str(path)]

    return make


def opt(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["optimize", *args]


def _no_config_model(tmp: Path) -> list[str]:
    (tmp / "empty-model").mkdir()
    return ["optimize", "--model", str(tmp / "empty-model")]


def _study_with_one_trial(tmp: Path) -> list[str]:
    from autotune.tuning import SPEC_ATTR

    folder = tmp / "done"
    folder.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{folder / 'study.db'}", study_name="done",
                                directions=["maximize", "minimize"])
    study.set_user_attr(SPEC_ATTR, {"model": "tiny", "name": "done"})
    study.add_trial(optuna.create_trial(values=[1.0, 1.0], user_attrs={"config": {"max_num_seqs": 4}}))
    return ["measure", "--from-study", str(folder), "--trial", "7"]


def _not_utf8(tmp: Path) -> list[str]:
    (tmp / "latin1.yaml").write_bytes("model: t\xe9ny\n".encode("latin-1"))
    return ["optimize", "--spec", str(tmp / "latin1.yaml")]


def _study_dir_is_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("not a folder")
    return ["optimize", "--study-dir", str(tmp / "taken")]


def _study_dir_under_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("not a folder")
    return ["optimize", "--study-dir", str(tmp / "taken" / "study")]


def _measure_out_under_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("not a folder")
    return ["measure", "--out", str(tmp / "taken" / "measure")]


CASES: list[Case] = [
    # SLO and objective expressions
    ("slo-unit", opt("--slo", "ttft<300xs"), "unknown unit 'xs'"),
    ("slo-metric", opt("--slo", "tft<300ms"), "unknown metric 'tft'"),
    ("slo-paren", opt("--slo", "p99(ttft<1s"), "bad SLO"),
    ("slo-percentile", opt("--slo", "p200(ttft)<1s"), "p200"),
    ("slo-no-bound", opt("--slo", "ttft<"), "bad SLO"),
    ("slo-attainment", opt("--slo", "ttft<1s@150%"), "150"),
    ("objective-direction", opt("--objectives", "up:goodput"), "up"),
    ("objective-metric", opt("--objectives", "max:nonesuch"), "nonesuch"),
    ("goodput-without-slo", opt("--objectives", "max:goodput"), "goodput needs an SLO"),
    # flags
    ("engine", opt("--engine", "nonesuch"), "unknown engine 'nonesuch'"),
    ("model-path", opt("--model", "/no/such/model/dir"), "model not found"),
    ("model-no-config", _no_config_model, "has no config.json"),
    ("model-shape", opt("--model", "shape:nonesuch"), "unknown model shape"),
    ("price", opt("--price-per-gpu-hour", "-2"), "price_per_gpu_hour"),
    ("sampler", opt("--sampler", "annealing"), "sampler"),
    ("trials-zero", opt("--trials", "0"), "budget.trials"),
    ("trials-text", opt("--trials", "abc"), "--trials"),
    ("unknown-option", opt("--frobnicate"), "--frobnicate"),
    ("concurrency", opt("--concurrency", "0"), "workload.concurrency"),
    ("rate", opt("--rate", "-1"), "workload.rate"),
    ("name", opt("--name", "a b/c"), "study name"),
    ("max-model-len", opt("--max-model-len", "4"), "max_model_len"),
    ("device", opt("--device", "tpu"), "hardware.device"),
    ("storage-unreachable", opt("--storage", "postgresql://u:hunter22@127.0.0.1:1/x"), "cannot open storage"),
    ("storage-scheme", opt("--storage", "mongodb://host/db"), "unsupported storage 'mongodb'"),
    ("storage-no-db", opt("--storage", "postgresql://127.0.0.1:5432"), "names no database"),
    ("api-key-env-unset", opt("--api-key-env", "AUTOTUNE_SURELY_UNSET_KEY"), "AUTOTUNE_SURELY_UNSET_KEY is not set"),
    # YAML specs
    ("yaml-syntax", spec("model: [tiny\n"), "not valid YAML"),
    ("yaml-list", spec("- tiny\n- vllm\n"), "mapping at the top level"),
    ("yaml-unknown-key", spec("modle: tiny\n"), "modle: unknown key"),
    ("yaml-nested-key", spec("workload:\n  concurency: 4\n"), "workload.concurency: unknown key"),
    ("yaml-type", spec("workload:\n  num_requests: many\n"), "workload.num_requests"),
    ("yaml-missing", lambda tmp: ["optimize", "--spec", str(tmp / "nope.yaml")], "spec file not found"),
    ("knob-unknown", spec("space:\n  max_num_sequences: 4\n"), "unknown knob 'max_num_sequences'"),
    ("range-inverted", spec("space:\n  max_num_seqs: {low: 64, high: 8}\n"), "low (64.0) > high (8.0)"),
    ("range-log-zero", spec("space:\n  max_num_seqs: {low: 0, high: 8}\n"), "log scale needs low > 0"),
    ("choices-empty", spec("space:\n  max_num_batched_tokens: {choices: []}\n"), "needs choices"),
    ("poisson-no-rate", spec("workload:\n  arrival: poisson\n"), "needs a rate"),
    ("prompt-range", spec("workload:\n  prompt_tokens: 64\n  prompt_tokens_max: 8\n"), "prompt_tokens_max"),
    ("template", spec("engine:\n  launch_template: [docker, run, img]\n"), "'{argv}'"),
    ("heartbeat", spec("heartbeat: {interval_s: 30, grace_s: 10}\n"), "grace_s (10) must be longer"),
    ("negative-price-yaml", spec("hardware: {price_per_gpu_hour: -1}\n"), "price_per_gpu_hour"),
    # files and folders
    ("spec-is-a-folder", lambda tmp: ["optimize", "--spec", "."], "is a folder, not a YAML file"),
    ("spec-not-utf8", _not_utf8, "is not UTF-8 text"),
    ("study-dir-is-a-file", _study_dir_is_a_file, "is a file, not a folder"),
    ("study-dir-under-a-file", _study_dir_under_a_file, "lies under"),
    ("measure-out-under-a-file", _measure_out_under_a_file, "lies under"),
    ("template-program-missing", spec('engine:\n  launch_template: ["/nonexistent/bin/wrapper", "{argv}"]\n'),
     "program '/nonexistent/bin/wrapper' not found"),
    # what cannot work, refused before it starts
    ("slo-empty", opt("--slo", ""), "--slo is blank"),
    ("slo-blank", opt("--slo", "   "), "--slo is blank"),
    ("slo-blank-yaml", spec("slo: '  '\n"), "slo is blank"),
    ("prompt-beyond-max-model-len", opt("--prompt-tokens", "100000000", "--max-model-len", "512"), "prompt_tokens"),
    ("request-beyond-max-model-len", opt("--prompt-tokens", "500", "--output-tokens", "64", "--max-model-len", "512"),
     "= 564 tokens do not fit max_model_len 512"),
    ("request-beyond-model-context", opt("--prompt-tokens", "1000"), "do not fit max_model_len 512"),
    ("rate-inf", opt("--rate", "inf"), "workload.rate: Input should be a finite number"),
    ("rate-nan", opt("--rate", "nan"), "workload.rate"),
    ("trials-1e23", opt("--trials", "1e23"), "--trials"),
    ("trials-huge", spec("budget: {trials: 1.0e+23}\n"), "budget.trials"),
    ("trials-beyond-bound", opt("--trials", "100000"), "budget.trials: Input should be less than or equal to 10000"),
    ("requests-huge", opt("--num-requests", "100000000"), "workload.num_requests"),
    ("enqueue-type", spec("enqueue:\n  - {max_num_seqs: many}\n"), "enqueue[0]: knob max_num_seqs='many'"),
    ("space-pin-type", spec("space:\n  max_num_seqs: many\n"), "space: knob max_num_seqs='many'"),
    ("enqueue-choice", spec("enqueue:\n  - {kv_cache_dtype: fp9}\n"), "kv_cache_dtype='fp9': expected one of"),
    ("set-type", lambda tmp: ["measure", "--set", "max_num_seqs=abc"], "max_num_seqs='abc': expected a whole number"),
    ("set-bool", lambda tmp: ["measure", "--set", "enable_prefix_caching=maybe"], "expected true or false"),
    ("best-without-study", lambda tmp: ["measure", "--best"], "--best takes a trial of a study"),
    ("trial-without-study", lambda tmp: ["measure", "--trial", "3"], "--trial takes a trial of a study"),
    ("endpoint-ftp", lambda tmp: ["measure", "--endpoint", "ftp://127.0.0.1/v1"], "is not an http(s) URL"),
    ("endpoint-file", lambda tmp: ["measure", "--endpoint", "file:///etc/passwd"], "is not an http(s) URL"),
    ("endpoint-words", lambda tmp: ["measure", "--endpoint", "not a url"], "is not an http(s) URL"),
    ("endpoint-down", lambda tmp: ["measure", "--endpoint", "http://127.0.0.1:1/v1"], "did not answer"),
    # other commands
    ("set-syntax", lambda tmp: ["measure", "--set", "max_num_seqs", "--out", str(tmp / "study")], "bad --set"),
    ("set-knob", lambda tmp: ["measure", "--set", "nonesuch=1", "--out", str(tmp / "study")], "unknown knob"),
    ("trial-number", _study_with_one_trial, "--trial N with N a trial"),
    ("review-missing", lambda tmp: ["review", str(tmp / "nowhere")], "no study in"),
    ("worker-gpus", lambda tmp: ["worker", "--storage", "sqlite:///" + str(tmp / "study" / "x.db"), "--study", "s",
                                 "--gpus", "a,b"], "bad --gpus"),
    ("worker-storage", lambda tmp: ["worker", "--storage", "nonsense", "--study", "s"], "bad --storage"),
    ("worker-no-study", lambda tmp: ["worker", "--storage", "sqlite:///" + str(tmp / "empty.db"), "--study", "s"],
     "no study 's'"),
]


@pytest.mark.parametrize(("args", "needle"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    args: Callable[[Path], list[str]], needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    study_dir = tmp_path / "study"
    argv = args(tmp_path)
    if argv[0] == "optimize" and "--study-dir" not in argv:
        argv += ["--study-dir", str(study_dir)]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    monkeypatch.setattr(sys, "argv", ["autotune", *argv])
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "hunter22" not in err  # a password in a storage URL is never echoed
    assert not study_dir.exists()
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before  # nothing written anywhere, storage included
