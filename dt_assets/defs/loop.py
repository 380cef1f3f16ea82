"""The self-driving loop: sensors and schedules that take new simulation data to a promotion decision.

1. The landing (:mod:`dt_assets.defs.landing`): ``landing_sensor`` lists the landing area and requests
   ``land_files`` runs, which check, move and register the files; ``ingest_after_landing`` then
   requests an ``ingest_runs`` run per new partition.
2. ``retrain_sensor`` starts the training job of the loop's family (``train_flow`` by default, or
   ``train_gan``) when preprocessed runs of the loop's geometry exist that the latest model of that
   family was not trained on, warm-started from the champion when the champion is of that family. It
   waits while ingestion or another training is in progress, so data landing during a retraining
   goes into the next one.
3. ``validate_after_training`` validates each version a successful training run registered
   (``validate_model``); ``promote_after_validation`` and ``promote_after_failed_validation``
   then run ``champion_model`` on that validation (its run's ID, not whichever is latest), whether its blocking
   checks passed or not, so the decision and its reason are recorded for every version whose report
   was written.
4. ``nightly_revalidation`` and ``weekly_full_retraining`` are schedules, stopped until a user turns
   them on in the UI.

The loop's settings come from :mod:`dt_assets.defs.twin_settings`. Its sensors start RUNNING when
``$CALOTWIN_LOOP`` is ``on`` (``make ui``, ``make twin``) and STOPPED otherwise.
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
from mlflow.entities.model_registry import ModelVersion

from resources import ModelRegistry, StorageResource

from ..fsio import sha256_json
from ..model.flow_training import FlowTrainConfig
from ..model.registry import alias_version, run_params, version_uri
from ..showers.store import open_store
from .jobs import ALL_TRAINING_JOBS, TRAINING_JOBS, ingest_runs_job, promote_job, validate_model_job
from .landing import LOOP_TAG, SETTINGS, busy, land_files_job, landing_sensors, on_run_status, sensor_status
from .model import ALL_TRAINING_ASSETS, TRAINING_ASSETS
from .preprocess import preprocessed_showers
from .twin_settings import TwinSettings
from .upstream import materialization_in_run
from .validation import CHAMPION, validation_report

MODEL_TAG = "calotwin/model_uri"


def _geometry_of(
    context: dg.SensorEvaluationContext, storage: StorageResource, key: str, cache: dict[str, str]
) -> str | None:
    """The geometry of a preprocessed run (cached in the cursor); None when its store is missing or unreadable."""
    if key not in cache:
        url = storage.preprocessed_url(key)
        try:
            cache[key] = str(open_store(url, storage.options()).attrs["geometry"])
        except (OSError, KeyError, ValueError) as exc:
            context.log.warning(f"preprocessed run {key} is left out: {url} is missing or unreadable ({exc})")
            return None
    return cache[key]


def latest_trained(instance: dg.DagsterInstance, geometry: str, family: str = "flow") -> set[str]:
    """The runs the latest model of ``family`` (its training asset's materialization) on ``geometry`` was
    trained on."""
    records = instance.fetch_materializations(TRAINING_ASSETS[family].key, limit=50).records
    for record in records:  # newest first
        meta = record.asset_materialization.metadata
        if "geometry" in meta and meta["geometry"].value == geometry:
            return set(filter(None, str(meta["partitions"].value).split(",")))
    return set()


def warm_start_architecture(champion: ModelVersion, settings: TwinSettings) -> dict[str, str]:
    """The flow settings that fix ``champion``'s network, as its training run logged them, where they differ from the
    loop's retraining: a warm start needs the same network (``make champion`` trains with ``layer_skewness``, the
    loop's settings default to without), so the retraining takes them."""
    params = run_params(champion)
    own = settings.retrain.flow_model.model_dump()
    fields = [k for k in FlowTrainConfig().architecture() if k in own and k in params]
    return {k: params[k] for k in fields if str(own[k]) != params[k]}


def retrain_tick(
    context: dg.SensorEvaluationContext, storage: StorageResource, registry: ModelRegistry, settings: TwinSettings
) -> dg.SensorResult | dg.SkipReason:
    """One look for data the latest model has not seen (the body of ``retrain_sensor``)."""
    instance = context.instance
    family = settings.retrain.family
    busy_jobs = [(job.name, "a training") for job in ALL_TRAINING_JOBS] + [
        (land_files_job.name, "landing"),
        (ingest_runs_job.name, "ingestion"),
    ]
    for job_name, what in busy_jobs:
        if running := busy(instance, job_name):
            return dg.SkipReason(f"{what} is in progress (run {running[0].run_id[:8]}); new data waits for it")
    cache: dict[str, str] = json.loads(context.cursor)["geometry"] if context.cursor else {}
    done = instance.get_materialized_partitions(preprocessed_showers.key)
    runs = sorted(key for key in done if _geometry_of(context, storage, key, cache) == settings.geometry)
    cursor = json.dumps({"geometry": cache}, sort_keys=True)
    new = sorted(set(runs) - latest_trained(instance, settings.geometry, family))
    if not new:
        return dg.SensorResult(
            skip_reason=f"no new {settings.geometry} data since the latest {family} model", cursor=cursor
        )
    registry.activate()
    champion = alias_version(CHAMPION, settings.model_name)
    warm_start, architecture = "", {}
    if champion is not None and champion.tags.get("family", "3dgan") == family:
        warm_start = version_uri(champion)
        if family == "flow":
            architecture = warm_start_architecture(champion, settings)
    run_config = settings.training_run_config(warm_start, architecture=architecture)
    kept = ", ".join(f"{k}={v}" for k, v in sorted(architecture.items()))
    kept = f", keeping its network ({kept})" if kept else ""
    # the same data, settings and starting point are requested once: a failed or canceled retraining is not
    # retried in a loop (Dagster would drop the request silently; this says why)
    run_key = f"retrain-{settings.geometry}-{sha256_json({'runs': runs, 'run_config': run_config}, 16)}"
    ended = instance.get_runs(
        filters=dg.RunsFilter(
            tags={"dagster/run_key": run_key},
            statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
        ),
        limit=1,
    )
    if ended:
        return dg.SensorResult(
            skip_reason=f"the retraining on these runs ended {ended[0].status.value} (run {ended[0].run_id[:8]}): "
            "re-execute it once the cause is fixed, change the retrain settings, or land more data",
            cursor=cursor,
        )
    context.log.info(
        f"retraining a {family} model on {len(runs)} run(s), {len(new)} new ({', '.join(new)}); "
        f"warm start: {warm_start or 'none (no champion of this family yet)'}{kept}"
    )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key,
                run_config=run_config,
                tags={LOOP_TAG: "retrain", "calotwin/new_runs": ",".join(new)[:200], "calotwin/warm_start": warm_start},
            )
        ],
        cursor=cursor,
    )


@dg.sensor(
    job=TRAINING_JOBS[SETTINGS.retrain.family],
    minimum_interval_seconds=SETTINGS.retrain.min_interval_seconds,
    default_status=sensor_status(),
    description="Retrains the loop's generator family (flow by default; warm-started from the champion when it is "
    "of that family) when preprocessed runs exist that its latest model was not trained on. Waits while ingestion "
    "or a training is in progress: data that lands meanwhile goes into the next retraining.",
)
def retrain_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource, registry: ModelRegistry
) -> dg.SensorResult | dg.SkipReason:
    return retrain_tick(context, storage, registry, SETTINGS)


def validation_request(
    instance: dg.DagsterInstance, run: dg.DagsterRun, settings: TwinSettings
) -> dg.RunRequest | dg.SkipReason:
    """Validate the version a finished training run registered."""
    found = (materialization_in_run(instance, run.run_id, asset.key) for asset in ALL_TRAINING_ASSETS)
    model = next((m.metadata for m in found if m is not None), None)
    if model is None:
        return dg.SkipReason(f"run {run.run_id[:8]} registered no model")
    uri = str(model["model_uri"])
    if model.get("geometry") != settings.geometry:
        return dg.SkipReason(f"{uri} is on {model.get('geometry')}, the loop validates {settings.geometry}")
    return dg.RunRequest(
        run_key=f"validate-{run.run_id}",
        run_config=settings.validation_run_config(uri),
        tags={LOOP_TAG: "validate", MODEL_TAG: uri, "calotwin/trained_by": run.run_id},
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=list(ALL_TRAINING_JOBS),
    request_job=validate_model_job,
    default_status=sensor_status(),
    minimum_interval_seconds=5,
    description="Validates every model version a successful train_flow, train_gan or train_tuned run registered.",
)
def validate_after_training(context: dg.RunStatusSensorContext):
    return validation_request(context.instance, context.dagster_run, SETTINGS)


def promotion_request(
    instance: dg.DagsterInstance, run: dg.DagsterRun, settings: TwinSettings
) -> dg.RunRequest | dg.SkipReason:
    """Decide the promotion of the version a finished validation run judged (a failed gate included)."""
    if run.tags.get(LOOP_TAG) != "validate":
        return dg.SkipReason(f"run {run.run_id[:8]} is not a validation of a newly trained model")
    report = materialization_in_run(instance, run.run_id, validation_report.key)
    if report is None:
        return dg.SkipReason(f"run {run.run_id[:8]} wrote no validation report: nothing to decide")
    uri = str(report.metadata["model_uri"])
    return dg.RunRequest(
        run_key=f"promote-{run.run_id}",
        run_config=settings.promotion_run_config(run.run_id),
        tags={LOOP_TAG: "promote", MODEL_TAG: uri, "calotwin/validated_by": run.run_id},
    )


def _promotion_sensor(status: dg.DagsterRunStatus, name: str, description: str) -> dg.SensorDefinition:
    return on_run_status(
        name,
        status,
        validate_model_job,
        promote_job,
        lambda instance, run: promotion_request(instance, run, SETTINGS),
        description,
    )


promote_after_validation = _promotion_sensor(
    dg.DagsterRunStatus.SUCCESS,
    "promote_after_validation",
    "Decides the promotion of a version the loop validated and that passed its blocking checks.",
)
promote_after_failed_validation = _promotion_sensor(
    dg.DagsterRunStatus.FAILURE,
    "promote_after_failed_validation",
    "Records the promotion decision (not promoted, with the reason) for a version the loop validated whose "
    "blocking checks failed.",
)


@dg.schedule(
    cron_schedule=SETTINGS.revalidation.cron,
    job=validate_model_job,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Re-validates the champion against the MC reference (turn it on in the UI).",
)
def nightly_revalidation(context: dg.ScheduleEvaluationContext, registry: ModelRegistry):
    registry.activate()
    champion = alias_version(CHAMPION, SETTINGS.model_name)
    if champion is None:
        return dg.SkipReason(f"{SETTINGS.model_name} has no champion yet")
    uri = version_uri(champion)
    return dg.RunRequest(
        run_key=None,
        run_config=SETTINGS.validation_run_config(uri),
        tags={LOOP_TAG: "revalidate", MODEL_TAG: uri},
    )


@dg.schedule(
    cron_schedule=SETTINGS.full_retrain.cron,
    job=TRAINING_JOBS[SETTINGS.full_retrain.family],
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrains the loop's generator family from scratch on all data with the full_retrain settings "
    "(turn it on in the UI); the new version is then validated and judged like any other.",
)
def weekly_full_retraining(context: dg.ScheduleEvaluationContext):
    # a new seed each ISO week: a fresh training, not a resume of last week's checkpoint of the same data
    week = int(context.scheduled_execution_time.strftime("%G%V"))
    run_config = SETTINGS.training_run_config("", full=True, seed=week)
    return dg.RunRequest(run_config=run_config, tags={LOOP_TAG: "full_retrain", "calotwin/seed": str(week)})


loop_sensors: list[Any] = [
    *landing_sensors,
    retrain_sensor,
    validate_after_training,
    promote_after_validation,
    promote_after_failed_validation,
]
loop_schedules = [nightly_revalidation, weekly_full_retraining]
