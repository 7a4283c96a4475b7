"""Shared fixtures. Engine tests start real servers; they share one built tiny model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from autotune.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


def autotune_cmd(*args: str) -> list[str]:
    """The installed console script, run as a user would."""
    return [sys.executable, "-m", "autotune.cli", *args]


@pytest.fixture()
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env
