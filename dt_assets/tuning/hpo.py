"""Hyper-parameter optimisation of either generator family with Optuna, judged by the physics validation.

A study tunes one family (:class:`SearchSpace`): for the 3DGAN learning rates, loss weights, batch
size, latent size and label-flip rate; for the flow family the learning rate, EMA decay, batch size
and the shape flow's width. Each trial trains a small model epoch by epoch; after every epoch the
generator makes showers at the conditions of a small MC reference and
:func:`dt_assets.validation.validate.validate` scores them (the validation's ``score``: FPD by
default, lower is better; ``coverage`` is maximised). The score is reported to Optuna after each
epoch, and a :class:`optuna.pruners.MedianPruner` stops trials whose intermediate score is worse
than the median of the earlier trials at the same epoch. The final epoch's score is the trial's
value. Every trial is an MLflow child run of the study's run (params, per-epoch score and losses).

Several workers share one study through any Optuna RDB URL: sqlite under the data home by default
(a few processes on one machine; each write waits up to :data:`SQLITE_TIMEOUT_S` for the lock), or
PostgreSQL / MySQL for workers on several machines. The budget is fixed up front:
:func:`enqueue_budget` puts ``n_trials`` WAITING trials in the study once, and each worker
(:func:`run_worker`) claims one at a time with the storage's atomic WAITING -> RUNNING transition
and never creates trials itself. So a study ends with exactly ``n_trials`` trials, numbered
0..n-1, each run by exactly one worker, however many workers share it and whenever they start.
(With ``study.optimize(n_trials=...)`` the count is per worker, and with ``MaxTrialsCallback``
workers that start a trial at the same time overshoot the budget.)

A worker that dies (killed, out of memory, its node lost) loses no trial: a worker records a
heartbeat in the storage every ``heartbeat_interval_s`` while it runs a trial, and a RUNNING trial
without one for ``grace_period_s`` is failed by whichever worker looks next and run again, with the
same parameters, as a new WAITING trial (at most ``max_retries`` times; its MLflow run is marked
FAILED). A worker leaves only when no trial is WAITING or RUNNING, so a lost trial is always picked up
while one worker lives. The lost trial stays in the study as FAIL and does not count toward the
budget; its retry names it (``system_attrs["failed_trial"]``).

A worker is a plain process: ``python -m dt_assets.tuning.hpo worker JOB.json --worker N``, where
JOB.json is an :class:`HpoJob` (what the ``hpo_study`` asset writes). The asset starts its workers
through the compute resource: processes on this machine, or one Slurm array job (``--worker
$SLURM_ARRAY_TASK_ID``). Workers on several nodes need a storage they all reach (PostgreSQL or
MySQL; sqlite over NFS locks badly) and data, reference and checkpoint URLs visible from the nodes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from ..fsio import url_to_fs
from ..model.flow_training import FlowTrainConfig
from ..model.generation import generator_from_payload
from ..model.step import TrainConfig, TrainingCollapsedError
from ..model.stream import TrainingData
from ..model.train import EpochReport, read_checkpoint, train
from ..physics.geometry import get_geometry
from ..showers.store import read_showers
from ..validation.config import SCORES, ValidationConfig
from ..validation.samples import generate_grid
from ..validation.validate import validate
from .search_space import PARAMETERS, SearchSpace, apply_parameters

__all__ = [
    "PARAMETERS",
    "HpoJob",
    "SearchSpace",
    "StudySummary",
    "apply_parameters",
    "claim_trial",
    "enqueue_budget",
    "open_study",
    "optimisation_plots",
    "redact",
    "run_worker",
    "summarise",
]

log = logging.getLogger("dt_assets.tuning.hpo")  # the same name when run as __main__

#: a sqlite writer waits this long for another worker's lock before giving up
SQLITE_TIMEOUT_S = 120.0
#: how often a worker with nothing to claim looks again while others' trials run
IDLE_POLL_S = 2.0
#: user attribute of a failed trial: the error that failed it
ERROR_ATTR = "error"


@dataclass(frozen=True)
class HpoJob:
    """Everything a worker needs, as JSON: the study, the data, the base training, the search space,
    the validation (settings and MC reference) and where trials write checkpoints and MLflow runs."""

    study_name: str
    storage_url: str
    data: list[str]
    geometry: str
    reference_url: str
    trials_url: str  # folder (path or fsspec URL) of the trials' checkpoints: <trials_url>/trial-0003/
    train: dict[str, Any] = field(default_factory=dict)  # the family's base config (epochs, steps, seed, ...)
    search_space: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)  # a ValidationConfig (grid, events_per_cell, score)
    particle: str = "e-"
    storage_options: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""  # MLflow; empty: no MLflow runs
    experiment_id: str = ""
    parent_run_id: str = ""
    seed: int = 0
    pruner_startup_trials: int = 2
    pruner_warmup_epochs: int = 0
    device: str | None = None
    heartbeat_interval_s: int = 30  # a running trial's worker writes a heartbeat this often
    grace_period_s: int = 120  # a RUNNING trial without a heartbeat this long is lost: FAIL, run again
    max_retries: int = 1  # how often one trial's parameters are run again after lost workers
    family: str = "3dgan"  # the generator family the study tunes
    training_particle: str | None = None  # the particle trials train on (None: every event)

    def __post_init__(self) -> None:
        if not self.study_name:
            raise ValueError("hpo job: study_name is empty")
        if not self.data:
            raise ValueError("hpo job: data names no preprocessed store")
        get_geometry(self.geometry)
        self.train_config()
        self.space()
        self.validation_config()
        if self.pruner_startup_trials < 0 or self.pruner_warmup_epochs < 0:
            raise ValueError("hpo job: pruner_startup_trials and pruner_warmup_epochs must be >= 0")
        if self.heartbeat_interval_s < 1 or self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"hpo job: need heartbeat_interval_s >= 1 and grace_period_s above it, got "
                f"{self.heartbeat_interval_s} and {self.grace_period_s}"
            )
        if self.max_retries < 0:
            raise ValueError(f"hpo job: max_retries must be >= 0, got {self.max_retries}")

    def train_config(self) -> TrainConfig | FlowTrainConfig:
        config = dict(self.train)
        if self.family == "flow":
            return FlowTrainConfig(**config)
        if "loss_weights" in config:
            config["loss_weights"] = tuple(config["loss_weights"])
        return TrainConfig(**config)

    def space(self) -> SearchSpace:
        space = SearchSpace.from_dict(self.search_space)
        if space.family != self.family:
            raise ValueError(f"hpo job: the search space is for {space.family}, the study tunes {self.family}")
        return space

    def validation_config(self) -> ValidationConfig:
        return ValidationConfig.from_dict(self.validation)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """``minimize`` for FPD, KPD and the classifier AUC; ``maximize`` for coverage."""
        return "minimize" if SCORES[self.validation_config().score] else "maximize"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> HpoJob:
        payload = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ValueError(f"hpo job: unknown key(s) {unknown}")
        return cls(**payload)


def redact(url: str) -> str:
    """An RDB URL without its password (for logs and metadata)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: show only the scheme
        return url.split("://", 1)[0] + "://..."


def study_storage(url: str, job: HpoJob | None = None) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage; a sqlite file gets its folder created and a long lock timeout. With a job,
    heartbeats are on (its interval and grace period) and a lost trial is run again (:class:`_RetryLost`)."""
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
            "heartbeat_stale_trial_callback": _RetryLost(job),
        }
    try:
        with _stable():
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


def retried(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that were lost with their worker and run again as another trial."""
    return {n for t in trials for n in _retry_history(t)}


def _retry_history(trial: FrozenTrial) -> list[int]:
    """The trials this one runs again, oldest first (empty: not a retry)."""
    with _stable():
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


@contextmanager
def _stable() -> Iterator[None]:
    """Without Optuna's "experimental" warning: heartbeats and their retries have been there since 2.x."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def enqueue_budget(study: optuna.Study, n_trials: int) -> int:
    """Top the study up to ``n_trials`` trials in all (WAITING ones for the workers to claim; a lost
    trial run again counts once); returns how many were added (0 when the study already has that many,
    e.g. a study run again)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    trials = study.get_trials(deepcopy=False)
    missing = n_trials - (len(trials) - len(retried(trials)))
    for _ in range(max(0, missing)):
        study.enqueue_trial({})
    return max(0, missing)


def claim_trial(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial of the study (atomically: of several workers asking, one gets it);
    None when none is left. Workers never create trials, so the budget is exact. The claim records
    the trial's first heartbeat (when the storage has them on)."""
    claimed = _claim(study)
    return None if claimed is None else claimed[0]


def _claim(study: optuna.Study) -> tuple[optuna.Trial, int] | None:
    storage = study._storage  # Study has no public accessor for it; the storage calls below are public
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                if _heartbeat_interval(storage):
                    cast(_HeartbeatStorage, storage).record_heartbeat(trial_id)
                return optuna.Trial(study, trial_id), trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker claimed and finished it meanwhile
    return None


class _HeartbeatStorage(Protocol):
    """A storage that records heartbeats (RDBStorage): one whose ``get_heartbeat_interval`` gives an interval."""

    def record_heartbeat(self, trial_id: int) -> None: ...


def _heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


class _Heartbeat:
    """Records the trial's heartbeat every interval in a thread while the block runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.interval = _heartbeat_interval(storage)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                cast(_HeartbeatStorage, self.storage).record_heartbeat(self.trial_id)
            except Exception as exc:  # a storage hiccup: the next beat tries again; the grace period covers it
                log.warning(f"heartbeat of trial id {self.trial_id}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


class _RetryLost:
    """What happens to a trial whose worker stopped beating: its MLflow run is marked FAILED and, up to
    ``max_retries`` times, its parameters are queued again as a new WAITING trial."""

    def __init__(self, job: HpoJob) -> None:
        self.job = job
        with _stable():
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=job.max_retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = _retry_history(trial)
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
        with _stable():
            self.retry(study, trial)


class _Objective:
    """Train one trial epoch by epoch, scoring each epoch with the physics validation."""

    def __init__(self, job: HpoJob, worker: int) -> None:
        self.job = job
        self.worker = worker
        self.data = TrainingData(job.data, job.storage_options, particle=job.training_particle)
        self.geometry = get_geometry(job.geometry)
        self.base = job.train_config()
        self.space = job.space()
        self.validation = job.validation_config()
        self.grid = self.validation.conditions_grid()
        self.reference = read_showers(job.reference_url, job.storage_options).load()  # scored every epoch

    def checkpoint_dir(self, number: int) -> str:
        url = f"{self.job.trials_url.rstrip('/')}/trial-{number:04d}"
        fs, path = url_to_fs(url, self.job.storage_options)
        if fs.exists(path):  # a study created again under the same name: start the trial afresh
            fs.rm(path, recursive=True)
        return url

    def score(self, checkpoint_dir: str, epoch: int) -> float:
        """The validation score of the generator in the checkpoint just written."""
        url = checkpoint_dir + "/last.pt"
        generator = generator_from_payload(read_checkpoint(url, self.job.storage_options) or {}, url)
        candidate = generate_grid(
            generator, self.grid, self.validation.events_per_cell, self.job.particle, seed=self.job.seed + 7 + epoch
        )
        return float(validate(self.reference, candidate, self.validation).score)

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.space.suggest(trial)
        config = apply_parameters(self.base, params)
        checkpoint_dir = self.checkpoint_dir(trial.number)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("checkpoint_dir", checkpoint_dir)
        scores: list[float] = []
        score_name = self.validation.score

        with _child_run(self.job, trial, params, config) as mlflow_run:

            def after_epoch(report: EpochReport) -> None:
                value = self.score(checkpoint_dir, report.epoch)
                if not math.isfinite(value):
                    raise ValueError(f"epoch {report.epoch}: the validation score {score_name} is {value}")
                scores.append(value)
                mlflow_run.log_epoch(report, score_name, value)
                trial.report(value, report.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{score_name} {value:.4g} after epoch {report.epoch + 1}")

            train(
                self.data,
                config,
                checkpoint_dir,
                self.geometry,
                storage_options=self.job.storage_options,
                on_epoch=[after_epoch],
                device=self.job.device,
            )
        return scores[-1]


class _ChildRun:
    """The trial's MLflow run (a child of the study's run), or nothing when the job has no tracking URI."""

    def __init__(self, client, run_id: str | None) -> None:
        self.client, self.run_id = client, run_id

    def log_epoch(self, report: EpochReport, score_name: str, value: float) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = {f"validation/{score_name}": value, "epoch_seconds": report.seconds}
        metrics |= {k: float(v) for k, v in report.metrics.items() if k != "epoch" and math.isfinite(float(v))}
        self.client.log_batch(self.run_id, [Metric(k, float(v), now, report.epoch) for k, v in metrics.items()])


@contextmanager
def _child_run(
    job: HpoJob, trial: optuna.Trial, params: Mapping[str, Any], config: TrainConfig | FlowTrainConfig
) -> Iterator[_ChildRun]:
    """The trial's MLflow run, a child of the study's run; its status follows the trial's state."""
    if not job.tracking_uri:
        yield _ChildRun(None, None)
        return
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = MlflowClient(job.tracking_uri)
    tags = {
        MLFLOW_RUN_NAME: f"{job.study_name}-trial-{trial.number}",
        "optuna.study": job.study_name,
        "optuna.trial": str(trial.number),
    }
    if job.parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = job.parent_run_id
    run_id = client.create_run(job.experiment_id, tags=tags).info.run_id
    logged = {**config.to_dict(), **{f"hpo/{k}": v for k, v in params.items()}}
    client.log_batch(run_id, params=[_param(k, v) for k, v in logged.items()])
    trial.set_user_attr("mlflow_run_id", run_id)
    state, status = "FAIL", "FAILED"
    try:
        yield _ChildRun(client, run_id)
        state, status = "COMPLETE", "FINISHED"
    except optuna.TrialPruned:
        state, status = "PRUNED", "KILLED"
        raise
    finally:
        client.set_tag(run_id, "optuna.state", state)
        client.set_terminated(run_id, status)


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, json.dumps(value) if isinstance(value, list | tuple | dict) else str(value))


def run_worker(
    job: HpoJob,
    worker: int = 0,
    on_trial: Callable[[FrozenTrial], None] | None = None,
    objective: Callable[[optuna.Trial], float] | None = None,
) -> list[int]:
    """Claim and run the study's WAITING trials until none is WAITING or RUNNING; returns the numbers
    this worker ran. While others' trials run it waits, failing lost ones (no heartbeat for the grace
    period) so that their retries can be claimed.

    ``objective`` (default: train and score the trial) returns the trial's value. A trial whose training
    collapses or whose score is not finite is FAIL and the worker goes on; any other error fails the
    trial and stops the worker (raised). SIGTERM fails the running trial too.
    """
    study = open_study(job, worker)
    objective = objective or _Objective(job, worker)
    storage = study._storage
    ran: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate)
    waiting_logged = False
    try:
        while True:
            with _stable():
                fail_stale_trials(study)
            claimed = _claim(study)
            if claimed is None:
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if not running or not _heartbeat_interval(storage):
                    break
                if not waiting_logged:
                    log.info(
                        f"worker {worker}: no trial waiting; {len(running)} running elsewhere (a lost one is run "
                        f"again after {job.grace_period_s} s without a heartbeat)"
                    )
                    waiting_logged = True
                time.sleep(min(job.heartbeat_interval_s, IDLE_POLL_S))
                continue
            waiting_logged = False
            trial, trial_id = claimed
            ran.append(trial.number)
            started = time.monotonic()
            try:
                with _Heartbeat(storage, trial_id):
                    value = objective(trial)
            except optuna.TrialPruned as exc:
                frozen = study.tell(trial, state=TrialState.PRUNED)
                log.info(f"worker {worker}: trial {trial.number} pruned ({exc})")
            except (TrainingCollapsedError, ValueError) as exc:
                trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}")
                frozen = study.tell(trial, state=TrialState.FAIL)
                log.warning(f"worker {worker}: trial {trial.number} failed: {type(exc).__name__}: {exc}")
            except BaseException as exc:
                trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}")
                study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                frozen = study.tell(trial, value)
                log.info(f"worker {worker}: trial {trial.number} {frozen.state.name}, value {value:.5g}")
            log.info(f"worker {worker}: trial {trial.number} took {time.monotonic() - started:.1f} s")
            if on_trial is not None:
                on_trial(frozen)
    finally:
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return ran


def _terminate(signum, frame) -> None:
    raise SystemExit(f"terminated by signal {signum}")


@dataclass
class StudySummary:
    """Where a study stands: trials per state, the best trial, and the lost trials run again."""

    n_trials: int
    states: dict[str, int]
    numbers: list[int]
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    direction: str
    retried: list[int] = field(default_factory=list)  # lost with their worker (FAIL) and run again

    @property
    def finished(self) -> int:
        """Finished trials, a lost trial that was run again not counted (its retry counts)."""
        done = sum(n for s, n in self.states.items() if s in ("COMPLETE", "PRUNED", "FAIL"))
        return done - len(self.retried)

    @property
    def unfinished(self) -> int:
        """Trials still to run or running (WAITING or RUNNING)."""
        return self.states.get("WAITING", 0) + self.states.get("RUNNING", 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(study: optuna.Study) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return StudySummary(
        n_trials=len(trials),
        states=states,
        numbers=sorted(t.number for t in trials),
        best_value=None if best is None or best.value is None else float(best.value),
        best_params={} if best is None else dict(best.params),
        best_trial=None if best is None else best.number,
        direction=study.direction.name.lower(),
        retried=sorted(retried(trials)),
    )


def optimisation_plots(study: optuna.Study) -> dict[str, bytes]:
    """PNGs of the optimisation history and, with two or more complete trials, the parameter importances."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    out: dict[str, bytes] = {}
    makers: list[tuple[str, Callable[[optuna.Study], Any]]] = [
        ("optimization_history", optuna_plots.plot_optimization_history)
    ]
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        makers.append(("param_importances", optuna_plots.plot_param_importances))
    for name, make in makers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API notes; "too few trials" for the importances
            try:
                axes = make(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of parameters that never varied
                log.info(f"no {name} plot: {exc}")
                continue
        figure = axes.figure
        try:
            figure.set_size_inches(7.0, 4.0)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            out[name] = buffer.getvalue()
        finally:
            plt.close(figure)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dt_assets.tuning.hpo", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="claim and run the study's waiting trials until none is left")
    worker.add_argument("job", help="the HpoJob JSON file (the hpo_study asset writes one per study)")
    worker.add_argument("--worker", type=int, default=0, help="this worker's index (seeds its sampler)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    job = HpoJob.from_json(Path(args.job).read_text())
    ran = run_worker(job, args.worker)
    log.info(f"worker {args.worker}: no waiting trial left; ran trial(s) {ran}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
