"""HPO stage: an Optuna study over a training asset's hyper-parameters (``gan_model``'s or ``flow_model``'s),
judged by the physics validation.

``hpo_study`` simulates a small MC reference for scoring (once per grid, under
``hpo/references/``), puts the study's trial budget in the Optuna storage, starts ``n_workers``
workers (``python -m dt_assets.tuning.hpo worker``) that share the study through the compute
resource (processes on this machine, or one Slurm array job), and waits for them. Trials write
their checkpoints under ``hpo/<study>/trials/`` (only the best trial's are kept unless told);
the best trial's parameters go to ``hpo/<study>/best.json`` and into the materialization's metadata
(``best_params``, with the study's ``geometry`` and ``family``), which ``tuned_model`` reads to
train with them. The study's MLflow run (the resource's) is the parent of one child run per trial.
Job file and worker logs: ``$CALOTWIN_HOME/hpo/<study>/<run>/``.
"""

import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import mlflow
import optuna
from optuna.trial import TrialState

from resources.compute import ComputeResource, LocalCompute, first_exception, log_tail

from ..fsio import sha256_json
from ..home import calotwin_home
from ..progress import Progress
from ..showers.store import write_showers
from ..tuning.claiming import enqueue_budget
from ..tuning.job import HpoJob
from ..tuning.storage import open_study, redact
from ..tuning.summary import StudySummary, optimisation_plots, summarise
from ..tuning.worker import ERROR_ATTR
from ..validation.config import ValidationConfig
from ..validation.samples import simulate_grid
from .configs import HpoStudyConfig
from .metadata import image
from .model import TRAINING_POOL, ending_mlflow_run, training_runs
from .preprocess import training_set

#: MC seed of the scoring reference: apart from the training runs', mc_reference's and generated_showers' seeds
REFERENCE_SEED = 3_000_000
POLL_S = 2.0
WORKER_MODULE = "dt_assets.tuning.hpo"


def default_study_storage() -> str:
    """sqlite under the data home: ``$CALOTWIN_HOME/hpo/optuna.db``."""
    return f"sqlite:///{calotwin_home() / 'hpo' / 'optuna.db'}"


@dg.asset(
    deps=[training_set],
    required_resource_keys={"mlflow", "storage", "compute"},
    group_name="model",
    kinds={"optuna", "pytorch", "mlflow"},
    pool=TRAINING_POOL,
    description="An Optuna study over one family's hyper-parameters (gan_model: learning rates, loss weights, batch "
    "size, latent size, label-flip rate; flow_model: learning rate, EMA decay, batch size, shape-flow width), scored "
    "by the physics validation after every epoch, bad trials pruned. "
    "Workers (processes, or a Slurm array job through the compute resource) share the study through its storage "
    "(sqlite in the data home, or any Optuna RDB URL); a lost worker's trial is run again. Every trial is an MLflow "
    "child run. tuned_model trains with the best parameters.",
)
def hpo_study(context: dg.AssetExecutionContext, config: HpoStudyConfig) -> dg.MaterializeResult:
    with ending_mlflow_run():  # the study's run, the parent of the trials' runs
        return _run_study(context, config)


def _run_study(context: dg.AssetExecutionContext, config: HpoStudyConfig) -> dg.MaterializeResult:
    storage = context.resources.storage
    runs = training_runs(context, config.geometry)
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
            search_space=config.search_space.search_space(config.family).to_dict(),
            validation=validation.to_dict(),
            storage_options=storage.options(),
            tracking_uri=mlflow.get_tracking_uri(),
            experiment_id=run.info.experiment_id,
            parent_run_id=run.info.run_id,
            seed=config.seed,
            pruner_startup_trials=config.pruner_startup_trials,
            pruner_warmup_epochs=config.pruner_warmup_epochs,
            heartbeat_interval_s=config.heartbeat_interval_s,
            grace_period_s=config.grace_period_s,
            max_retries=config.max_retries,
            family=config.family,
            particle=config.scoring_particle(),
            training_particle=None if config.particle == "all" else config.particle,
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
            f"{before.states['RUNNING']} trial(s) are RUNNING already (workers elsewhere, or lost ones): the workers "
            f"wait for them, and run a lost one again after {config.grace_period_s} s without a heartbeat"
        )
    compute: ComputeResource = context.resources.compute if config.launcher == "compute" else LocalCompute()
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
    failures = _run_workers(context, compute, folder, config.n_workers, study, before)
    seconds = time.monotonic() - started
    summary = summarise(study)
    unfinished = summary.unfinished
    if failures and unfinished:
        raise dg.Failure(
            f"{len(failures)} worker(s) failed and {unfinished} trial(s) are unfinished: " + "; ".join(failures),
            metadata={"worker_logs": dg.MetadataValue.path(str(folder))},
        )
    for failure in failures:
        context.log.warning(f"a worker failed after the last trial was taken: {failure}")
    if summary.retried:
        context.log.warning(f"trial(s) {summary.retried} were lost with their worker and run again")
    if summary.best_trial is None:
        errors = [t.user_attrs[ERROR_ATTR] for t in study.get_trials(deepcopy=False) if ERROR_ATTR in t.user_attrs]
        raise dg.Failure(
            f"no trial completed ({summary.states}); first error: {errors[0] if errors else 'none (all pruned)'}"
        )
    best = {
        "study_name": config.study_name,
        "storage": redact(storage_url),
        "geometry": config.geometry,
        "family": config.family,
        "score": validation.score,
        "direction": summary.direction,
        "best_value": summary.best_value,
        "best_trial": summary.best_trial,
        "params": summary.best_params,
        "states": summary.states,
        "n_trials": summary.n_trials,
        "retried": summary.retried,
        "mlflow_run_id": run.info.run_id,
        "dagster_run_id": context.run.run_id,
    }
    best_url = storage.url("hpo", config.study_name, "best.json")
    storage.write_json(best_url, best)
    if not config.keep_trial_checkpoints:
        _remove_checkpoints(context, study, keep=summary.best_trial)
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
            "geometry": config.geometry,
            "family": config.family,
            "storage": redact(storage_url),
            "trials": summary.n_trials,
            "complete": summary.states.get("COMPLETE", 0),
            "pruned": summary.states.get("PRUNED", 0),
            "failed": summary.states.get("FAIL", 0) - len(summary.retried),
            "retried": dg.MetadataValue.json(summary.retried),
            "score": validation.score,
            "best_value": float(summary.best_value),
            "best_trial": int(summary.best_trial),
            "best_params": dg.MetadataValue.json(summary.best_params),
            "best_params_path": dg.MetadataValue.path(best_url),
            "workers": config.n_workers,
            "launcher": type(compute).__name__,
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
        "particle": config.scoring_particle(),
        "seed": REFERENCE_SEED,
    }
    key = f"ref-{sha256_json(spec, 10)}"
    url = storage.url("hpo", "references", f"{key}.zarr")
    if storage.exists(url):
        return url
    n = 2 * validation.events_per_cell  # half the reference, half the MC-vs-MC baseline
    with Progress(len(grid.cells()) * n, f"simulating the scoring reference {key}", log=context.log.info) as progress:
        showers = simulate_grid(grid, n, config.geometry, config.scoring_particle(), REFERENCE_SEED, progress.update)
    write_showers(showers, url, storage.options(), attrs={"run_key": key})
    return url


def _job_folder(study_name: str, run_id: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = calotwin_home() / "hpo" / study_name / f"{stamp}-{run_id[:8]}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def _run_workers(
    context: dg.AssetExecutionContext,
    compute: ComputeResource,
    folder: Path,
    n_workers: int,
    study: optuna.Study,
    before: StudySummary,
) -> list[str]:
    """Start the workers through ``compute``, log the study's progress until they end; returns the
    failures (with causes). Stopping the run stops the workers."""
    args = ["worker", str(folder / "job.json")]
    workers = compute.start_workers(context, folder, WORKER_MODULE, args, n_workers, {})
    try:
        context.log.info(f"started {', '.join(w.label for w in workers)}; logs in {folder}")
        todo = before.unfinished
        outcomes: dict[int, str] = {}
        with Progress(todo, f"study {study.study_name}", "trials", log=context.log.info) as progress:
            while len(outcomes) < len(workers):
                time.sleep(POLL_S)
                for i, worker in enumerate(workers):
                    if i not in outcomes and (outcome := worker.poll()) is not None:
                        outcomes[i] = outcome
                progress.update(max(0, summarise(study).finished - before.finished - progress.done))
    except BaseException:
        context.log.warning("stopping the workers")
        for worker in workers:
            worker.cancel()
        raise
    failures = []
    for i, outcome in sorted(outcomes.items()):
        if outcome:
            worker = workers[i]
            cause = first_exception(worker.log_path)
            failures.append(
                f"{worker.label}: {outcome}{': ' + cause if cause else ''} "
                f"(log {worker.log_path}:\n{log_tail(worker.log_path, 20)})"
            )
    return failures


def _remove_checkpoints(context: dg.AssetExecutionContext, study: optuna.Study, keep: int | None) -> None:
    """Delete the checkpoints of every finished trial but ``keep`` (the best)."""
    storage = context.resources.storage
    removed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        url = trial.user_attrs.get("checkpoint_dir")
        if trial.number != keep and url and storage.exists(url):
            storage.remove(url)
            removed += 1
    if removed:
        context.log.info(f"removed the checkpoints of {removed} trial(s); the best trial's ({keep}) are kept")
