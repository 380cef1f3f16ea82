"""HPO stage: an Optuna study over gan_model's hyper-parameters, judged by the physics validation.

``hpo_study`` simulates a small MC reference for scoring (once per grid, under
``hpo/references/``), puts the study's trial budget in the Optuna storage, starts ``n_workers``
worker processes (``python -m dt_assets.model.hpo worker``) that share the study, and waits for
them. Trials write their checkpoints under ``hpo/<study>/trials/``; the best trial's parameters go
to ``hpo/<study>/best.json`` and to ``hpo/hpo_study.json`` (the latest study), which ``gan_model``
reads with ``hyperparameters_from: hpo_study``. The study's MLflow run (the resource's) is the
parent of one child run per trial. Job file and worker logs: ``$CALOTWIN_HOME/hpo/<study>/<run>/``.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import mlflow
import optuna

from resources.compute import first_exception, log_tail

from ..home import calotwin_home
from ..model.hpo import (
    ERROR_ATTR,
    HpoJob,
    StudySummary,
    enqueue_budget,
    open_study,
    optimisation_plots,
    redact,
    summarise,
)
from ..model.manifest import runs_for
from ..progress import Progress
from ..showers.store import sha256_json, write_showers
from ..validation.config import ValidationConfig
from ..validation.samples import simulate_grid
from .configs import HpoStudyConfig
from .metadata import image
from .model import HPO_POINTER, TRAINING_POOL
from .preprocess import training_set

#: MC seed of the scoring reference: apart from the training runs', mc_reference's and generated_showers' seeds
REFERENCE_SEED = 3_000_000
POLL_S = 2.0


def default_study_storage() -> str:
    """sqlite under the data home: ``$CALOTWIN_HOME/hpo/optuna.db``."""
    return f"sqlite:///{calotwin_home() / 'hpo' / 'optuna.db'}"


@dg.asset(
    deps=[training_set],
    required_resource_keys={"mlflow", "storage"},
    group_name="model",
    kinds={"optuna", "pytorch", "mlflow"},
    pool=TRAINING_POOL,
    description="An Optuna study over gan_model's hyper-parameters (learning rates, loss weights, batch size, "
    "latent size, label-flip rate), scored by the physics validation after every epoch, bad trials pruned. "
    "Worker processes share the study through its storage (sqlite in the data home, or any Optuna RDB URL); "
    "every trial is an MLflow child run. The best parameters are stored for gan_model (hyperparameters_from).",
)
def hpo_study(context: dg.AssetExecutionContext, config: HpoStudyConfig) -> dg.MaterializeResult:
    # the mlflow resource started the study's run; it ends here whatever happens
    try:
        materialized = _run_study(context, config)
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    return materialized


def _run_study(context: dg.AssetExecutionContext, config: HpoStudyConfig) -> dg.MaterializeResult:
    storage = context.resources.storage
    if not storage.exists(storage.training_set_url()):
        raise dg.Failure("no training set yet: materialize preprocessed_showers and training_set first")
    runs = runs_for(storage.read_json(storage.training_set_url()), config.geometry)
    if not runs:
        raise dg.Failure(f"the training set has no preprocessed run on geometry {config.geometry!r}")
    validation = config.validation_config()
    reference_url = _scoring_reference(context, config, validation)
    storage_url = config.storage_url or default_study_storage()
    run = mlflow.active_run()
    try:
        job = HpoJob(
            study_name=config.study_name,
            storage_url=storage_url,
            data=[r["url"] for r in runs],
            geometry=config.geometry,
            reference_url=reference_url,
            trials_url=storage.url("hpo", config.study_name, "trials"),
            train=config.base_train_config().to_dict(),
            search_space=config.search_space.search_space().to_dict(),
            validation=validation.to_dict(),
            storage_options=storage.options(),
            tracking_uri=mlflow.get_tracking_uri(),
            experiment_id=run.info.experiment_id,
            parent_run_id=run.info.run_id,
            seed=config.seed,
            pruner_startup_trials=config.pruner_startup_trials,
            pruner_warmup_epochs=config.pruner_warmup_epochs,
        )
        study = open_study(job)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    added = enqueue_budget(study, config.n_trials)
    before = summarise(study)
    context.log.info(
        f"study {config.study_name!r} in {redact(storage_url)}: {added} trial(s) added, {before.n_trials} in all "
        f"({before.states}); {config.n_workers} worker(s), {validation.score} "
        f"{'minimised' if job.direction == 'minimize' else 'maximised'}"
    )
    if before.states.get("RUNNING"):
        context.log.warning(
            f"{before.states['RUNNING']} trial(s) are RUNNING from an earlier run (a worker that died?): "
            "no worker here takes them up"
        )
    mlflow.set_tags({"optuna.study": config.study_name, "optuna.storage": redact(storage_url)})
    mlflow.log_params(
        {
            **{k: v for k, v in config.model_dump().items() if k not in ("search_space", "storage_url")},
            **{f"search_space/{k}": v for k, v in config.search_space.model_dump().items()},
            "storage": redact(storage_url),
            "partitions": ",".join(sorted(r["run"] for r in runs)),
        }
    )
    started = time.monotonic()
    folder = _job_folder(config.study_name, context.run.run_id)
    (folder / "job.json").write_text(job.to_json())
    failures = _run_workers(context, folder, config.n_workers, study, before)
    seconds = time.monotonic() - started
    summary = summarise(study)
    unfinished = summary.n_trials - summary.finished
    if failures and unfinished:
        raise dg.Failure(
            f"{len(failures)} worker(s) failed and {unfinished} trial(s) are unfinished: " + "; ".join(failures),
            metadata={"worker_logs": dg.MetadataValue.path(str(folder))},
        )
    for failure in failures:
        context.log.warning(f"a worker failed after the last trial was taken: {failure}")
    if summary.best_trial is None:
        errors = [t.user_attrs[ERROR_ATTR] for t in study.get_trials(deepcopy=False) if ERROR_ATTR in t.user_attrs]
        raise dg.Failure(
            f"no trial completed ({summary.states}); first error: {errors[0] if errors else 'none (all pruned)'}"
        )
    best = {
        "study_name": config.study_name,
        "storage": redact(storage_url),
        "geometry": config.geometry,
        "score": validation.score,
        "direction": summary.direction,
        "best_value": summary.best_value,
        "best_trial": summary.best_trial,
        "params": summary.best_params,
        "states": summary.states,
        "n_trials": summary.n_trials,
        "mlflow_run_id": run.info.run_id,
        "dagster_run_id": context.run.run_id,
    }
    best_url = storage.url("hpo", config.study_name, "best.json")
    storage.write_json(best_url, best)
    storage.write_json(storage.url(*HPO_POINTER), {**best, "url": best_url})
    plots = optimisation_plots(study)
    mlflow.log_metric(f"best_{validation.score}", summary.best_value)
    mlflow.log_params({f"best/{k}": v for k, v in summary.best_params.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in plots.items():
            (Path(tmp) / f"{name}.png").write_bytes(png)
        (Path(tmp) / "best.json").write_text(json.dumps(best, indent=2))
        mlflow.log_artifacts(tmp, "hpo")
    context.log.info(
        f"study {config.study_name!r}: {summary.states} in {seconds:.0f} s; best trial {summary.best_trial}, "
        f"{validation.score} {summary.best_value:.5g}, {summary.best_params}"
    )
    return dg.MaterializeResult(
        metadata={
            "study_name": config.study_name,
            "storage": redact(storage_url),
            "trials": summary.n_trials,
            "complete": summary.states.get("COMPLETE", 0),
            "pruned": summary.states.get("PRUNED", 0),
            "failed": summary.states.get("FAIL", 0),
            "score": validation.score,
            "best_value": float(summary.best_value),
            "best_trial": int(summary.best_trial),
            "best_params": dg.MetadataValue.json(summary.best_params),
            "best_params_path": dg.MetadataValue.path(best_url),
            "workers": config.n_workers,
            "seconds": round(seconds, 1),
            "mlflow_run_id": run.info.run_id,
            "worker_logs": dg.MetadataValue.path(str(folder)),
            **{
                name: image(png, name.replace("_", " "))
                for name, png in plots.items()
                if name in ("optimization_history", "param_importances")
            },
        }
    )


def _scoring_reference(context: dg.AssetExecutionContext, config: HpoStudyConfig, validation: ValidationConfig) -> str:
    """The MC showers trials are scored against (simulated once per grid and size, then reused)."""
    storage = context.resources.storage
    grid = validation.conditions_grid()
    spec = {
        "grid": grid.to_dict(),
        "events_per_cell": validation.events_per_cell,
        "geometry": config.geometry,
        "particle": "e-",
        "seed": REFERENCE_SEED,
    }
    key = f"ref-{sha256_json(spec, 10)}"
    url = storage.url("hpo", "references", f"{key}.zarr")
    if storage.exists(url):
        return url
    n = 2 * validation.events_per_cell  # half the reference, half the MC-vs-MC baseline
    with Progress(len(grid.cells()) * n, f"simulating the scoring reference {key}", log=context.log.info) as progress:
        showers = simulate_grid(grid, n, config.geometry, "e-", REFERENCE_SEED, progress.update)
    write_showers(showers, url, storage.options(), attrs={"run_key": key})
    return url


def _job_folder(study_name: str, run_id: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = calotwin_home() / "hpo" / study_name / f"{stamp}-{run_id[:8]}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def _run_workers(
    context: dg.AssetExecutionContext, folder: Path, n_workers: int, study: optuna.Study, before: StudySummary
) -> list[str]:
    """Start the workers, log the study's progress until they exit; returns the failures (with causes)."""
    env = dict(os.environ)
    # the workers share the cores: torch in each uses its share, unless the user said otherwise
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n_workers)))
    processes: list[tuple[subprocess.Popen, Path]] = []
    try:
        for i in range(n_workers):
            log_path = folder / f"worker-{i}.log"
            with open(log_path, "wb") as log:
                command = [sys.executable, "-m", "dt_assets.model.hpo", "worker", str(folder / "job.json")]
                process = subprocess.Popen(
                    [*command, "--worker", str(i)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            processes.append((process, log_path))
        context.log.info(f"started {n_workers} worker(s); logs in {folder}")
        todo = before.n_trials - before.finished
        with Progress(todo, f"study {study.study_name}", "trials", log=context.log.info) as progress:
            while any(p.poll() is None for p, _ in processes):
                time.sleep(POLL_S)
                progress.update(summarise(study).finished - before.finished - progress.done)
            progress.update(summarise(study).finished - before.finished - progress.done)
    except BaseException:
        context.log.warning("stopping the workers")
        for process, _ in processes:
            _stop(process)
        raise
    failures = []
    for i, (process, log_path) in enumerate(processes):
        if process.returncode:
            cause = first_exception(log_path) or f"exit code {process.returncode}"
            failures.append(f"worker {i}: {cause} (log {log_path}:\n{log_tail(log_path, 20)})")
    return failures


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
