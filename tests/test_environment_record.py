"""The environment record names the code that measured: from the checkout, or as told where only files travel."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune import environment


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    environment.source_commit.cache_clear()
    yield
    environment.source_commit.cache_clear()


def test_a_checkout_records_its_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOTUNE_COMMIT", raising=False)
    root = Path(environment.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        pytest.skip("autotune does not run from a git checkout here")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    recorded = environment.record("vllm", "0.0", "cpu")["autotune_commit"]
    assert head.startswith(recorded) and len(recorded) == 12


def test_a_copy_without_git_records_the_commit_it_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_COMMIT", "0123456789ab")
    assert environment.record("vllm", "0.0", "cpu")["autotune_commit"] == "0123456789ab"
