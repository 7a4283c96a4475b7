"""Where a study lives: Optuna's RDB storage with heartbeats, opened, created or read back.

SQLite in the study folder serves one machine; PostgreSQL (or MySQL) lets
workers on many machines share the study. The study's spec is stored in the
study itself, so a worker or a report needs nothing but the storage and name.
"""

from __future__ import annotations

import contextlib
import fcntl
import secrets
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Callable

import optuna

from autotune.errors import UserError, one_line, root_cause_line
from autotune.folders import check_writable_file, make_folder
from autotune.spec import StudySpec, redact_url

__all__ = ["SPEC_ATTR", "fail_stale", "load_study", "make_storage", "opening", "read_stored_spec",
           "spec_for_storage", "wait_for_storage"]

SPEC_ATTR = "autotune_spec"


def make_storage(spec: StudySpec) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose worker dies is failed and retried.

    A server that cannot be reached is bad input: one line, nothing written.
    """
    url = spec.storage_url
    hb = spec.heartbeat
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    kwargs: dict[str, Any] = {"heartbeat_interval": hb.interval_s, "grace_period": hb.grace_s}
    if retry is None:  # Optuna < 4.9
        kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=hb.max_retry)
    engine_kwargs: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        # A restarted database server leaves dead connections in the pool; test each before use.
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if retry is not None:
                    kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=hb.max_retry)
                return _BeatingStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError as e:
            raise UserError(f"storage {redact_url(url)}: driver missing ({e}); pip install 'psycopg[binary]'") from None
        except Exception as e:  # sqlalchemy's OperationalError and kin: server down, bad credentials
            why = root_cause_line(e)
            # Workers started together on an empty database race to create Optuna's tables.
            if attempt < 4 and any(race in why for race in ("duplicate key", "already exists", "UNIQUE constraint")):
                time.sleep(0.5 + secrets.randbelow(1000) / 1000)
                continue
            raise UserError(f"cannot open storage {redact_url(url)}: {why}") from None
    raise AssertionError("unreachable")


#: Lock files of the studies this process has open, kept open until it exits (see ``opening``).
_OPEN: dict[str, IO[str]] = {}


@contextlib.contextmanager
def opening(spec: StudySpec) -> Iterator[bool]:
    """Opens a study's storage one process at a time; yields whether another process has it open.

    Two processes creating one new SQLite study at once race on Optuna's own
    tables ("UNIQUE constraint failed: alembic_version") and on the spec's
    enqueued trials; a lock beside the database lets one create and the other
    find it made. A process that finds the study open elsewhere is told so, and
    its sampler is salted, or both would propose the same configurations.
    A server (PostgreSQL) needs no lock here: ``make_storage`` retries its race.
    """
    assert spec.study_dir is not None
    if spec.storage is not None:
        yield False
        return
    folder = make_folder(spec.study_dir, "study folder")
    check_writable_file(folder / "study.db", "study database")
    key = str(folder.resolve())
    try:
        guard = open(folder / ".study.db.lock", "a+")
        using = _OPEN.get(key) or open(folder / ".study.db.open", "a+")
    except OSError as e:
        raise UserError(f"study folder {folder} is not writable: {e.strerror or e}") from None
    _OPEN[key] = using
    with guard:
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        try:  # exclusive only if nobody else holds it shared; this process's own hold converts
            fcntl.flock(using.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            shared = False
        except OSError:
            shared = True
        fcntl.flock(using.fileno(), fcntl.LOCK_SH)  # held until this process exits
        yield shared


class _BeatingStorage(optuna.storages.RDBStorage):
    """RDB storage whose heartbeat outlives a database restart.

    Optuna beats from a thread that ends at its first error; one missed beat
    during a restart would then fail a trial that is running fine.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except optuna.exceptions.StorageInternalError:
            pass  # the next beat, a few seconds on, reaches the server again

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna fails these next, and a finished trial can no longer be annotated:
        # the reason is written now, while the trial still runs.
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            try:
                worker = self.get_trial(trial_id).user_attrs.get("worker", "a worker")
                self.set_trial_user_attr(trial_id, "status", "lost")
                self.set_trial_user_attr(
                    trial_id, "reason",
                    f"{worker} sent no heartbeat for {self.grace_period}s (killed or cut off); retried as a new trial",
                )
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first
        return stale


def spec_for_storage(spec: StudySpec) -> dict[str, Any]:
    """The spec as kept in the study, so a worker needs only --storage and --study.

    The storage URL's password stays out: it would otherwise sit in the database it opens.
    """
    data = spec.model_dump(mode="json")
    if data.get("storage"):
        data["storage"] = redact_url(data["storage"])
    return data


def read_stored_spec(storage_url: str, study_name: str) -> dict[str, Any]:
    """The spec a study was created with, read from the storage without writing to it."""
    missing = UserError(
        f"no study {study_name!r} in {redact_url(storage_url)}; create it with "
        "`autotune worker --spec FILE` or `autotune optimize --storage URL`"
    )
    from sqlalchemy.engine import make_url

    url = make_url(storage_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).exists()):
        raise missing  # connecting would create the file
    try:
        storage = optuna.storages.RDBStorage(storage_url, skip_table_creation=True)
    except Exception as e:  # unreachable server, bad credentials, missing driver, no tables yet
        why = root_cause_line(e)
        if "no such table" in why or "does not exist" in why:
            raise missing from None
        raise UserError(f"cannot open storage {redact_url(storage_url)}: {why}") from None
    try:
        study_id = storage.get_study_id_from_name(study_name)
        attrs = storage.get_study_user_attrs(study_id)
    except KeyError:
        raise missing from None
    except Exception as e:  # an empty database has no tables yet
        raise UserError(f"no study {study_name!r} in {redact_url(storage_url)} ({root_cause_line(e)})") from None
    finally:
        storage.remove_session()
        storage.engine.dispose()
    data = attrs.get(SPEC_ATTR)
    if not isinstance(data, dict):
        raise UserError(f"study {study_name!r} was not created by autotune (it stores no spec)")
    return data


def load_study(
    study_dir: Path | None = None, *, storage: str | None = None, name: str | None = None
) -> tuple[optuna.Study, StudySpec]:
    """Opens a finished or running study, for review and reports: a study folder's SQLite, or a storage URL."""
    if storage is None:
        if study_dir is None:
            raise UserError("give a study folder, or --storage URL with --study NAME")
        db = study_dir / "study.db"
        if not db.exists():
            raise UserError(f"no study in {study_dir} (no study.db)")
        url = f"sqlite:///{db.resolve()}"
    else:
        url = storage
    where = redact_url(url) if storage else str(db)
    try:
        names = optuna.get_all_study_names(url)
    except Exception as e:
        raise UserError(f"cannot open storage {where}: {root_cause_line(e)}") from None
    if not names:
        raise UserError(f"no study in {where}")
    if name is None:
        if len(names) > 1:
            raise UserError(f"{where} holds {len(names)} studies ({', '.join(names)}): name one with --study")
        name = names[0]
    elif name not in names:
        raise UserError(f"no study {name!r} in {where} (it holds {', '.join(names)})")
    study = optuna.load_study(study_name=name, storage=url)
    try:
        spec = StudySpec.model_validate(study.user_attrs[SPEC_ATTR])
    except KeyError:
        raise UserError(f"study {name!r} was not created by autotune (it stores no spec)") from None
    except Exception as e:
        raise UserError(f"the study's stored spec does not validate here: {one_line(e)}") from None
    return study, spec


def wait_for_storage(study: optuna.Study, say: Callable[[str], None], timeout_s: float = 300.0) -> None:
    """Blocks while the database is unreachable (a restart), up to a limit."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            study.get_trials(deepcopy=False)
            return
        except Exception as e:
            if time.monotonic() > deadline:
                raise UserError(f"storage unreachable for {timeout_s:.0f}s: {root_cause_line(e)}") from None
            say(f"storage unreachable, retrying: {root_cause_line(e)}")
            time.sleep(2.0)


def fail_stale(study: optuna.Study) -> None:
    """Fails the trials whose worker stopped beating and queues their retries (Optuna's machinery).

    Optuna runs the same check at the start of every trial; this one also runs
    while a worker waits for the last trials of the budget.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def existing_trials(storage: optuna.storages.BaseStorage, name: str | None) -> int:
    try:
        study_id = storage.get_study_id_from_name(name or "")
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def retry_of(study: optuna.Study, number: int) -> Any:
    """The lost trial this one retries, if it is a retry (Optuna keeps it in the system attributes)."""
    return study.get_trials(deepcopy=False)[number].system_attrs.get("failed_trial")


def quiet_optuna() -> None:
    """Optuna's own log lines and experimental-feature warnings would drown the CLI's progress."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
