"""Model stage: the trained generators (3DGAN and flow matching), tracked in MLflow and registered as new
versions of one registered model.

``gan_model`` and ``flow_model`` train with their launchpad settings and depend on the training set
only. ``tuned_model`` trains with the best parameters of an ``hpo_study`` (read from that
materialization's metadata), so the lineage shows ``hpo_study`` upstream of the one training that
uses it.
"""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import mlflow

from ..model.gan3d import parameter_count
from ..model.generation import FAMILIES
from ..model.job import TrainingJob
from ..model.manifest import runs_for, training_key
from ..model.record import RECORD_TAG, build_record, log_record, save_beside_checkpoint
from ..model.registry import log_generator, set_alias
from ..model.train import EpochReport
from ..plots import loss_curves_png
from ..progress import STEPS_EVERY_S, cadence
from .configs import FlowModelConfig, GanModelConfig, TrainingConfig, TunedModelConfig
from .metadata import image
from .preprocess import training_set
from .upstream import Materialization, upstream

CHALLENGER = "challenger"
#: one training at a time: the default instance limits every pool to 1 (see dt_assets.home)
TRAINING_POOL = "training"
FAMILY_TITLES = {"3dgan": "3DGAN", "flow": "flow matching"}
#: the asset key of the study (defined in dt_assets.defs.hpo, which imports this module)
HPO_STUDY = dg.AssetKey("hpo_study")


def epoch_metrics(report: EpochReport) -> None:
    """Per-epoch metrics into the active MLflow run (the compute logs the progress line)."""
    metrics = {k: float(v) for k, v in report.metrics.items() if k != "epoch"}
    speed = {"samples_per_second": report.samples_per_second, "epoch_seconds": report.seconds}
    mlflow.log_metrics({**metrics, **speed}, step=report.epoch)


#: what the training assets share: resources, UI group and kinds, the one-training-at-a-time pool
TRAINING_ASSET: dict = {
    "required_resource_keys": {"mlflow", "storage", "compute"},
    "group_name": "model",
    "kinds": {"pytorch", "mlflow"},
    "pool": TRAINING_POOL,
}


@dg.asset(
    deps=[training_set],
    **TRAINING_ASSET,
    description="The 3DGAN (the mission's reference model and the baseline) trained on the training set's runs of "
    "one geometry and particle, checkpointed every epoch (a restarted training resumes), logged to MLflow and "
    "registered as a new version (tag family=3dgan, alias 'challenger'). It trains where the 'compute' resource "
    "says: in-process, torchrun DDP, a Slurm job or a Kubernetes pod. Trained with an hpo_study's best parameters, "
    "it is tuned_model.",
)
def gan_model(context: dg.AssetExecutionContext, config: GanModelConfig) -> dg.MaterializeResult:
    with ending_mlflow_run():  # the mlflow resource started a run (a failed check fails it too)
        return _train_and_register(context, config)


@dg.asset(
    deps=[training_set],
    **TRAINING_ASSET,
    description="The two-stage conditional flow-matching generator (energies and occupancy per layer, then cell "
    "shapes; CaloDREAM-style) trained on the training set's runs of one geometry and particle, checkpointed every "
    "epoch, logged to MLflow and registered as a new version of the same registered model as the 3DGAN (tag "
    "family=flow, alias 'challenger'). Same compute and warm start as gan_model.",
)
def flow_model(context: dg.AssetExecutionContext, config: FlowModelConfig) -> dg.MaterializeResult:
    with ending_mlflow_run():
        return _train_and_register(context, config)


@dg.asset(
    deps=[training_set, HPO_STUDY],
    **TRAINING_ASSET,
    description="A generator trained with the best parameters of an hpo_study (this run's, the latest, or the one "
    "whose run the config names): of the family and on the geometry the study tuned, with that family's settings "
    "for the rest; logged, registered and aliased 'challenger' like gan_model and flow_model.",
)
def tuned_model(context: dg.AssetExecutionContext, config: TunedModelConfig) -> dg.MaterializeResult:
    with ending_mlflow_run():
        study = upstream(context, HPO_STUDY, config.study, "study")
        return _train_and_register(context, _tuned(context, config, study), study)


def _tuned(context: dg.AssetExecutionContext, config: TunedModelConfig, study: Materialization) -> TrainingConfig:
    """The training settings with the study's best parameters in place; a mismatch is a Failure naming it."""
    params = study["best_params"]
    if not isinstance(params, dict):
        raise dg.Failure(f"hpo_study of run {study.run_id}: best_params is not a mapping of parameters: {params!r}")
    try:
        tuned = config.training_config(study["family"], study["geometry"], params)
    except ValueError as exc:  # pydantic's ValidationError included
        raise dg.Failure(f"hpo_study of run {study.run_id}: {exc}") from None
    context.log.info(f"hyper-parameters of study {study['study_name']!r} (run {study.run_id}): {params}")
    return tuned


#: the training asset of each family (the loop's; tuned_model trains either)
TRAINING_ASSETS = {"3dgan": gan_model, "flow": flow_model}
assert set(TRAINING_ASSETS) == set(FAMILIES)
#: every asset that trains and registers a generator
ALL_TRAINING_ASSETS = (*TRAINING_ASSETS.values(), tuned_model)


@contextmanager
def ending_mlflow_run() -> Iterator[None]:
    """End the active MLflow run (the mlflow resource starts one per step) as FINISHED, or FAILED on an error."""
    try:
        yield
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


def training_runs(context: dg.AssetExecutionContext, geometry: str) -> list[dict]:
    """The preprocessed runs of ``geometry`` in the training set this run was handed (its ``training_set``
    materialization's manifest); fails naming what to materialize or the geometry."""
    if context.instance.get_latest_materialization_event(training_set.key) is None:
        raise dg.Failure("no training set yet: materialize preprocessed_showers and training_set first")
    storage = context.resources.storage
    url = str(upstream(context, training_set.key)["path"])
    if not storage.exists(url):
        raise dg.Failure(f"the training set's manifest {url} is gone: materialize training_set again")
    runs = runs_for(storage.read_json(url), geometry)
    if not runs:
        raise dg.Failure(f"the training set has no preprocessed run on geometry {geometry!r}")
    return runs


def _train_and_register(
    context: dg.AssetExecutionContext, config: TrainingConfig, study: Materialization | None = None
) -> dg.MaterializeResult:
    """Train ``config`` where the compute resource says, log and register the generator; ``study``: the
    hpo_study whose best parameters ``config`` holds (recorded with the run and the version)."""
    storage = context.resources.storage
    family = config.family
    runs = training_runs(context, config.geometry)
    tuned_from = "" if study is None else str(study["best_params_path"])
    train_config = config.train_config()
    particle = config.training_particle()
    identity = {**train_config.to_dict(), "warm_start": config.warm_start}
    if family != "3dgan" or particle is not None:  # 3DGAN trainings on every event keep their earlier keys
        identity |= {"family": family, "particle": particle}
    key = training_key(identity, runs, config.geometry, family)
    checkpoint_dir = storage.checkpoint_dir(key)
    partitions = ",".join(sorted(r["run"] for r in runs))
    job = TrainingJob(
        data=[r["url"] for r in runs],
        checkpoint_dir=checkpoint_dir,
        geometry=config.geometry,
        config=train_config.to_dict(),
        storage_options=storage.options(),
        warm_start=config.warm_start or None,
        progress_every_s=cadence(STEPS_EVERY_S),
        family=family,
        particle=particle,
    )
    n_events = job.training_data().n_events()
    if n_events == 0:
        raise dg.Failure(f"the training set's runs of {config.geometry} hold no training events of {config.particle}")
    context.log.info(
        f"training a {family} generator on {n_events} {config.particle} events of {len(runs)} run(s) ({partitions}); "
        f"checkpoints in {checkpoint_dir}"
    )
    mlflow.log_params(
        {
            **config.model_dump(),
            "family": family,
            "training_key": key,
            "train_events": n_events,
            "partitions": partitions,
        }
    )
    if tuned_from:
        mlflow.set_tag("hyperparameters_source", tuned_from)
    trained = context.resources.compute.run_training(context, job, epoch_metrics)
    result = trained.result
    mlflow.log_params({"compute": trained.compute, "world_size": trained.world_size})
    if result.resumed_from_epoch:
        context.log.info(f"resumed from the checkpoint after epoch {result.resumed_from_epoch}")
    record = build_record(
        job,
        [r["run"] for r in runs],
        result.device,
        trained.world_size,
        result.resumed_from_epoch,
        training_key=key,
    )
    record_uri = log_record(record)
    save_beside_checkpoint(record, job)
    png = loss_curves_png(result.history, title=f"{FAMILY_TITLES[family]} on {config.geometry}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "loss_curves.png").write_bytes(png)
        mlflow.log_artifact(str(Path(tmp) / "loss_curves.png"))
    version = log_generator(
        result.generator,
        config.registered_model_name,
        tags={
            "dagster_run_id": context.run_id,
            "partitions": partitions,
            "geometry": config.geometry,
            "particle": config.particle,
            "training_key": key,
            "checkpoint": result.checkpoint_url,
            RECORD_TAG: record.checksum(),
        },
    )
    set_alias(CHALLENGER, version.version, config.registered_model_name)
    mlflow_run_id = mlflow.active_run().info.run_id
    final = result.history[-1]
    model_uri = f"models:/{config.registered_model_name}/{version.version}"
    context.log.info(f"registered {model_uri} (alias {CHALLENGER}), MLflow run {mlflow_run_id}")
    return dg.MaterializeResult(
        metadata={
            "model_uri": model_uri,
            "model_version": int(version.version),
            "family": family,
            "config_checksum": config.checksum(),
            "particle": config.particle,
            "mlflow_run_id": mlflow_run_id,
            "partitions": partitions,
            "geometry": config.geometry,
            "warm_start": config.warm_start or "none",
            "hyperparameters_from": tuned_from or "config",
            **({"hpo_study_run": dg.MetadataValue.dagster_run(study.run_id)} if study is not None else {}),
            "checkpoint": dg.MetadataValue.path(result.checkpoint_url),
            "reproducibility_record": dg.MetadataValue.path(record_uri),
            "generator_parameters": parameter_count(result.generator),
            **(
                {"discriminator_parameters": parameter_count(result.discriminator)}
                if result.discriminator is not None
                else {}
            ),
            "epochs_trained": len(result.history) - result.resumed_from_epoch,
            "device": result.device,
            "compute": trained.compute,
            "world_size": trained.world_size,
            **{
                k: round(float(final[k]), 5)
                for k in (
                    "g",
                    "val_g",
                    "loss",
                    "val_loss_stage1",
                    "val_loss_stage2",
                    "val_esum_over_ep_gan",
                    "val_esum_over_ep_mc",
                )
                if k in final
            },
            "loss_curves": image(png, "loss curves"),
        }
    )
