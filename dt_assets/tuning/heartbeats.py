"""Heartbeats and retries: a worker records a heartbeat while it runs a trial (:class:`Heartbeat`); a RUNNING trial
without one for the grace period is lost, failed and run again with the same parameters (:class:`RetryLost`)."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, cast

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

if TYPE_CHECKING:
    from .job import HpoJob

log = logging.getLogger("dt_assets.tuning.hpo")  # one logger for the HPO, the same name when run as __main__


def retried(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that were lost with their worker and run again as another trial."""
    return {n for t in trials for n in retry_history(t)}


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials this one runs again, oldest first (empty: not a retry)."""
    with stable():
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


@contextmanager
def stable() -> Iterator[None]:
    """Without Optuna's "experimental" warning: heartbeats and their retries have been there since 2.x."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class HeartbeatStorage(Protocol):
    """A storage that records heartbeats (RDBStorage): one whose ``get_heartbeat_interval`` gives an interval."""

    def record_heartbeat(self, trial_id: int) -> None: ...


def heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


class Heartbeat:
    """Records the trial's heartbeat every interval in a thread while the block runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.interval = heartbeat_interval(storage)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                cast(HeartbeatStorage, self.storage).record_heartbeat(self.trial_id)
            except Exception as exc:  # a storage hiccup: the next beat tries again; the grace period covers it
                log.warning(f"heartbeat of trial id {self.trial_id}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


class RetryLost:
    """What happens to a trial whose worker stopped beating: its MLflow run is marked FAILED and, up to
    ``max_retries`` times, its parameters are queued again as a new WAITING trial."""

    def __init__(self, job: HpoJob) -> None:
        self.job = job
        with stable():
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=job.max_retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = retry_history(trial)
        again = len(history) < self.job.max_retries
        why = f"no heartbeat from worker {trial.user_attrs.get('worker', '?')} for {self.job.grace_period_s} s"
        log.warning(
            f"trial {trial.number} lost ({why}): FAIL; "
            + ("its parameters are queued again" if again else f"not run again ({len(history)} retries already)")
        )
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.job.tracking_uri:
            from mlflow import MlflowClient

            try:
                client = MlflowClient(self.job.tracking_uri)
                client.set_tag(run_id, "optuna.state", "FAIL")
                client.set_tag(run_id, "optuna.lost", why)
                client.set_terminated(run_id, "FAILED")
            except Exception as exc:  # the trial is failed in the study whatever MLflow says
                log.warning(f"trial {trial.number}: could not mark MLflow run {run_id} failed: {exc}")
        with stable():
            self.retry(study, trial)
