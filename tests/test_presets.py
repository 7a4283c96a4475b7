"""Scenario presets under objectives/: each loads, validates, means what its name
says, builds its prompts, and gives way to whatever the user sets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from autotune.errors import UserError
from autotune.load.prompts import build_requests, load_tokenizer
from autotune.spec import SCENARIOS_DIR, StudySpec, load_scenario, load_spec, scenario_names
from tests.conftest import autotune_cmd

PRESETS = ["batch", "chat", "long-context"]


def test_the_three_presets_ship() -> None:
    assert scenario_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_by_name_and_as_a_copied_file(name: str, tmp_path: Path) -> None:
    spec = load_spec(None, {"scenario": name})
    assert spec.scenario == name
    # A user copies the file and edits it: it is a valid spec on its own.
    copy = tmp_path / f"my-{name}.yaml"
    shutil.copy(SCENARIOS_DIR / f"{name}.yaml", copy)
    assert load_spec(copy).workload == spec.workload
    # ... and it is commented for that user.
    text = copy.read_text()
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 5
    again = StudySpec.model_validate(spec.model_dump(mode="json"))  # as a study stores and reloads it
    assert again == spec


def test_presets_follow_the_methodology() -> None:
    chat, long, batch = (load_spec(None, {"scenario": n}) for n in ("chat", "long-context", "batch"))
    # chat: short prompts, high load, TTFT first.
    assert chat.constraints[0].metric == "ttft"
    assert "goodput" in chat.objectives and "ttft" in chat.objectives
    # long-context: long prompts at low load, judged on the tail of the whole answer.
    assert chat.workload.prompt_lengths.mean < 1024 <= long.workload.prompt_lengths.min
    assert chat.goodput is not None and long.goodput is not None
    assert long.goodput.start < chat.goodput.start
    assert any(c.metric == "e2e" for c in long.constraints) and "e2e" in long.objectives
    assert long.goodput.min_duration_s is not None and long.goodput.min_duration_s > chat.goodput.min_duration_s
    # batch: a full queue, throughput and cost.
    assert batch.workload.arrival == "concurrency" and batch.goodput is None
    assert batch.workload.concurrency >= chat.workload.concurrency // 2
    assert [o.metric for o in batch.objective_list] == ["output_throughput", "cost_per_1k_tokens"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_prompts_build_in_exact_tokens(name: str, tiny_model: Path) -> None:
    workload = load_spec(None, {"scenario": name}).workload
    tokenizer, vocab = load_tokenizer(tiny_model)
    requests = build_requests(workload, tokenizer, vocab, count=3)
    lengths = workload.prompt_lengths
    for r in requests:
        assert len(tokenizer.encode(r.prompt)) == r.prompt_tokens
        assert lengths.min + workload.shared_prefix_tokens <= r.prompt_tokens
        assert lengths.max is None or r.prompt_tokens <= lengths.max + workload.shared_prefix_tokens


def test_explicit_fields_override_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "scenario: chat\n"
        "model: tiny\n"
        "slo: 'p99(ttft)<2s'\n"
        "workload:\n"
        "  concurrency: 3\n"
        "  prompt_tokens: 64\n"
        "goodput:\n"
        "  start: 0.5\n"
    )
    preset = load_spec(None, {"scenario": "chat"})
    spec = load_spec(path)
    assert spec.scenario == "chat" and spec.slo == "p99(ttft)<2s"
    assert spec.workload.concurrency == 3 and spec.workload.prompt_tokens == 64
    assert spec.workload.output_tokens == preset.workload.output_tokens  # untouched fields stay the preset's
    assert spec.goodput is not None and preset.goodput is not None
    assert spec.goodput.start == 0.5 and spec.goodput.max_levels == preset.goodput.max_levels
    # Flags beat both; a flag's scenario replaces the file's.
    flagged = load_spec(path, {"workload.concurrency": 9, "scenario": "batch"})
    assert flagged.scenario == "batch" and flagged.workload.concurrency == 9
    assert flagged.objectives == load_spec(None, {"scenario": "batch"}).objectives


def test_a_distribution_in_the_spec_replaces_the_presets_whole(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("scenario: chat\nworkload:\n  prompt_tokens: {dist: fixed, mean: 100}\n")
    assert load_spec(path).workload.prompt_lengths.dist == "fixed"


def test_an_edited_copy_can_be_named_as_the_scenario(tmp_path: Path) -> None:
    data = load_scenario("long-context")
    data["workload"]["num_requests"] = 5
    custom = tmp_path / "docs.yaml"
    custom.write_text(yaml.safe_dump(data))
    spec = load_spec(None, {"scenario": str(custom)})
    assert spec.workload.num_requests == 5 and spec.objectives == load_spec(None, {"scenario": "long-context"}).objectives


@pytest.mark.parametrize(
    ("scenario", "needle"),
    [("nope", "unknown scenario 'nope' (known: batch, chat, long-context)"), ("./missing.yaml", "not found")],
)
def test_bad_scenario_is_one_line(scenario: str, needle: str) -> None:
    with pytest.raises(UserError, match="scenario") as info:
        load_spec(None, {"scenario": scenario})
    assert needle in str(info.value)


def test_a_bad_value_in_a_preset_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workload:\n  prompt_tokens: {dist: normal, mean: 10}\n")
    with pytest.raises(UserError, match=r"workload\.prompt_tokens.*needs a std"):
        load_spec(None, {"scenario": str(bad)})


@pytest.mark.parametrize("command", ["optimize", "measure"])
def test_cli_bad_scenario_exits_2_with_one_line(command: str, cli_env: dict[str, str]) -> None:
    done = subprocess.run(
        autotune_cmd(command, "--scenario", "nope"), capture_output=True, text=True, env=cli_env, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["error: unknown scenario 'nope' (known: batch, chat, long-context)"]
    assert "Traceback" not in done.stdout + done.stderr


def test_repeats_is_a_spec_field() -> None:
    assert load_spec(None, {"repeats": 3}).repeats == 3
    with pytest.raises(UserError, match="repeats"):
        load_spec(None, {"repeats": 0})
