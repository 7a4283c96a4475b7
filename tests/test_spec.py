"""Spec validation: every bad input is one line naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.errors import UserError
from autotune.spec import StudySpec, load_spec


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def test_defaults_name_and_folder() -> None:
    spec = load_spec(None, {"model": "tiny"})
    assert spec.name == "tiny-vllm"
    assert spec.study_dir == Path("autotune-runs/tiny-vllm")
    assert spec.storage_url.startswith("sqlite:///") and spec.storage_url.endswith("study.db")
    assert [o.direction for o in spec.objective_list] == ["maximize", "minimize"]


def test_flags_override_file(tmp_path: Path) -> None:
    p = write(tmp_path, "model: tiny\nslo: 'p99(ttft)<1s'\nworkload:\n  concurrency: 4\n  num_requests: 10\n")
    spec = load_spec(p, {"workload.concurrency": 8, "slo": None})
    assert spec.workload.concurrency == 8
    assert spec.workload.num_requests == 10
    assert spec.slo == "p99(ttft)<1s"
    assert spec.constraints[0].threshold == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model: tiny\nbogus: 1\n", "bogus: unknown key"),
        ("workload:\n  concurency: 4\n", "workload.concurency: unknown key"),
        ("hardware:\n  price_per_gpu_hour: -1\n", "hardware.price_per_gpu_hour"),
        ("hardware:\n  gpu_count: 0\n", "hardware.gpu_count"),
        ("budget:\n  trials: 0\n", "budget.trials"),
        ("slo: 'ttft<300xs'\n", "unknown unit 'xs'"),
        ("objectives: 'upward:goodput'\n", "upward"),
        ("name: 'has space'\n", "study name"),
        ("sampler: annealing\n", "sampler"),
        ("workload:\n  concurrency: -3\n", "workload.concurrency"),
        ("- a list\n", "mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_specs_are_one_line(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(UserError) as info:
        load_spec(write(tmp_path, text))
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_spec_round_trips_through_json() -> None:
    spec = load_spec(None, {"model": "tiny", "slo": "ttft<300ms@95%", "space": {"block_size": 16}})
    again = StudySpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec
