"""One worker of a study shared through a database: ``autotune worker``.

A study outgrows one machine by running the same loop on every node against
one Optuna RDB storage (PostgreSQL): each worker asks the storage for the next
trial, runs it on its own GPUs and reports it back. The study's spec lives in
the study itself (a user attribute), so a worker needs only ``--storage`` and
``--study``; heartbeats let the others fail and retry the trial of a worker
that died (see ``autotune.tuning.storage.fail_stale``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotune.errors import UserError, one_line
from autotune.spec import StudySpec, check_storage_url, load_spec, set_dotted
from autotune.tuning.storage import read_stored_spec


def parse_gpus(text: str | None) -> list[int] | None:
    """``--gpus 0,1`` as device indices; the engine sees only these."""
    if text is None or not text.strip():
        return None
    try:
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"bad --gpus {text!r}: expected GPU indices such as 0,1") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"bad --gpus {text!r}: indices must be distinct and >= 0")
    return ids


def worker_spec(
    storage_url: str,
    study_name: str,
    *,
    spec_file: Path | None = None,
    study_dir: Path | None = None,
    gpus: str | None = None,
    api_key_env: str | None = None,
) -> StudySpec:
    """The spec this worker runs: the study's own, bound to this node's folder and GPUs.

    With ``spec_file`` the study is created from it when it does not exist yet,
    so every node can be started with one command line.
    """
    try:
        check_storage_url(storage_url)
    except ValueError as e:
        raise UserError(f"bad --storage: {e}") from None
    gpu_ids = parse_gpus(gpus)
    overrides: dict[str, Any] = {
        "storage": storage_url,
        "name": study_name,
        "study_dir": str(study_dir or Path("autotune-runs") / study_name),
        "engine.api_key_env": api_key_env,
    }
    if spec_file is not None:
        data: dict[str, Any] = {}
        base = spec_file
    else:
        data = read_stored_spec(storage_url, study_name)
        base = None
    for key in ("storage", "study_dir"):
        data.pop(key, None)  # the creator's; this node has its own
    if isinstance(data.get("hardware"), dict):
        data["hardware"].pop("gpu_ids", None)  # the creator's GPUs, not necessarily this node's
    spec = load_spec(base, overrides) if base is not None else _validate(data, overrides)
    if gpu_ids is not None:
        spec = _bind_gpus(spec, gpu_ids)
    return spec


def _validate(data: dict[str, Any], overrides: dict[str, Any]) -> StudySpec:
    for dotted, value in overrides.items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return StudySpec.model_validate(data)
    except Exception as e:
        raise UserError(f"the study's stored spec does not validate here: {one_line(e)}") from None


def _bind_gpus(spec: StudySpec, gpu_ids: list[int]) -> StudySpec:
    """The engine sees only this worker's GPUs (``hardware.gpu_ids`` becomes CUDA_VISIBLE_DEVICES)
    and TP x PP is sized to them."""
    data = spec.model_dump(mode="json")
    data["hardware"].update(gpu_ids=gpu_ids, gpu_count=len(gpu_ids))
    try:
        return StudySpec.model_validate(data)
    except Exception as e:
        raise UserError(f"bad --gpus: {one_line(e)}") from None
