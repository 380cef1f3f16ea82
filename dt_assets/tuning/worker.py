"""A worker: claims the study's trials one at a time and runs each (:func:`run_worker`); a trial trains a small model
epoch by epoch, scored by the physics validation after every epoch, with an MLflow child run."""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from ..fsio import url_to_fs
from ..model.flow_training import FlowTrainConfig
from ..model.generation import generator_from_payload
from ..model.step import TrainConfig, TrainingCollapsedError
from ..model.stream import TrainingData
from ..model.train import EpochReport, read_checkpoint, train
from ..physics.geometry import get_geometry
from ..showers.store import read_showers
from ..validation.samples import generate_grid
from ..validation.validate import validate
from .claiming import claim
from .heartbeats import Heartbeat, heartbeat_interval, stable
from .job import HpoJob
from .search_space import apply_parameters
from .storage import open_study

log = logging.getLogger("dt_assets.tuning.hpo")  # one logger for the HPO, the same name when run as __main__

#: how often a worker with nothing to claim looks again while others' trials run
IDLE_POLL_S = 2.0
#: user attribute of a failed trial: the error that failed it
ERROR_ATTR = "error"


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
            with stable():
                fail_stale_trials(study)
            claimed = claim(study)
            if claimed is None:
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if not running or not heartbeat_interval(storage):
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
                with Heartbeat(storage, trial_id):
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
