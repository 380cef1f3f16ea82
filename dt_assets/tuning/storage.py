"""The study's storage (any Optuna RDB URL; sqlite with serialised transactions) and the study itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from .heartbeats import RetryLost, stable
from .job import HpoJob

#: a sqlite writer waits this long for another worker's lock before giving up
SQLITE_TIMEOUT_S = 120.0


def redact(url: str) -> str:
    """An RDB URL without its password (for logs and metadata)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: show only the scheme
        return url.split("://", 1)[0] + "://..."


def study_storage(url: str, job: HpoJob | None = None) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage; a sqlite file gets its folder created and a long lock timeout. With a job,
    heartbeats are on (its interval and grace period) and a lost trial is run again (:class:`RetryLost`)."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    heartbeat: dict[str, Any] = {}
    if job is not None:
        heartbeat = {
            "heartbeat_interval": job.heartbeat_interval_s,
            "grace_period": job.grace_period_s,
            "heartbeat_stale_trial_callback": RetryLost(job),
        }
    try:
        with stable():
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
    except Exception as exc:  # sqlalchemy's errors for a bad URL, a missing driver, a refused connection
        raise ValueError(f"study storage {redact(url)}: {type(exc).__name__}: {exc}") from None
    if storage.engine.name == "sqlite":
        _serialise_sqlite(storage.engine)
    return storage


def _serialise_sqlite(engine) -> None:
    """Every sqlite transaction starts with ``BEGIN IMMEDIATE`` (SQLAlchemy's recipe for pysqlite).

    pysqlite begins a transaction only at the first write, so two workers could both read a trial
    as WAITING and both mark it RUNNING. Taking the write lock at the start makes the storage's
    read-check-write of a claim atomic, as ``SELECT ... FOR UPDATE`` does on PostgreSQL and MySQL.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite emits no BEGIN of its own; the hook below does

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks (table creation) are opened again with them


def open_study(job: HpoJob, worker: int = 0, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """The job's study (created when missing): TPE seeded per worker, median pruning per epoch."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=job.study_name,
        storage=storage or study_storage(job.storage_url, job),
        direction=job.direction,
        sampler=optuna.samplers.TPESampler(seed=job.seed * 1000 + worker),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=job.pruner_startup_trials, n_warmup_steps=job.pruner_warmup_epochs
        ),
        load_if_exists=True,
    )
    if study.direction.name.lower() != job.direction:
        raise ValueError(
            f"study {job.study_name!r} exists and {study.direction.name.lower()}s its value, but score "
            f"{job.validation_config().score!r} needs {job.direction}: choose another study_name"
        )
    return study
