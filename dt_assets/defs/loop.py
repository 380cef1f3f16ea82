"""The self-driving loop: sensors and schedules that take new simulation data to a promotion decision.

1. ``landing_sensor`` watches the landing area. A file whose size and mtime held still for one tick
   (or that has a ``<name>.done`` marker) is checked completely: good files move to
   ``data/landed/<file-key>/`` and become a partition of ``raw_showers`` (key from the checksum, so
   the same bytes under any name are one partition) with an ``ingest_runs`` run; bad files move to
   ``quarantine/`` with a JSON sidecar and a ``quarantined_files`` materialization naming the reason.
   An accepted file whose partition was never recorded (the tick failed or timed out after moving it)
   is registered by the next tick.
2. ``retrain_sensor`` starts the training job of the loop's family (``train_flow`` by default, or
   ``train_gan``) when preprocessed runs of the loop's geometry exist that the latest model of that
   family was not trained on, warm-started from the champion when the champion is of that family. It
   waits while ingestion or another training is in progress, so data landing during a retraining
   goes into the next one.
3. ``validate_after_training`` validates each version a successful training run registered
   (``validate_model``); ``promote_after_validation`` and ``promote_after_failed_validation``
   then run ``champion_model`` on that validation (not on whichever is latest), whether its blocking
   checks passed or not, so the decision and its reason are recorded for every version whose report
   was written.
4. ``nightly_revalidation`` and ``weekly_full_retraining`` are schedules, stopped until a user turns
   them on in the UI.

The loop's settings come from :mod:`dt_assets.defs.twin_settings`. Its sensors start RUNNING when
``$CALOTWIN_LOOP`` is ``on`` (``make ui``, ``make twin``) and STOPPED otherwise.
"""

from __future__ import annotations

import json
import time
from typing import Any

import dagster as dg

from resources import ModelRegistry, StorageResource

from ..landing import Landing, Quarantined
from ..model.registry import alias_version, version_uri
from ..runs import FileSpec, file_spec, spec_from_dict
from ..showers.store import open_store, sha256_json
from .data import runs_table, simulation_runs
from .jobs import TRAINING_JOBS, ingest_runs_job, promote_job, validate_model_job
from .model import TRAINING_ASSETS
from .partitions import simulation_runs_partitions
from .preprocess import preprocessed_showers
from .twin_settings import TwinSettings, load_settings, loop_running_by_default
from .validation import CHAMPION, validation_report

LOOP_TAG = "calotwin/loop"
MODEL_TAG = "calotwin/model_uri"
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

quarantined_files = dg.AssetSpec(
    "quarantined_files",
    group_name="data",
    kinds={"json"},
    description="Files the landing sensor refused. Each materialization names one file, the check it failed and "
    "the reason, and where it now is: quarantine/<time>-<name>, with a .json sidecar. Nothing is deleted.",
)

SETTINGS: TwinSettings = load_settings()


def _sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if loop_running_by_default() else dg.DefaultSensorStatus.STOPPED


def _landing(storage: StorageResource, settings: TwinSettings) -> Landing:
    s = settings.landing
    return Landing(
        s.url or storage.landing_url(), storage.landed_url(), storage.quarantine_url(), storage.options(), s.checks()
    )


def _quarantine_event(item: Quarantined, total: int) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        asset_key=quarantined_files.key,
        description=f"{item.name!r} quarantined: {item.reason}",
        metadata={
            "file": dg.MetadataValue.text(item.name),
            "check": item.check,
            "reason": dg.MetadataValue.text(item.reason),
            "quarantined_to": dg.MetadataValue.path(item.url),
            "sidecar": dg.MetadataValue.path(item.sidecar_url),
            "sha256": dg.MetadataValue.text(item.sha256 or "-"),
            "bytes": item.size,
            "files_in_quarantine": total,
        },
    )


def _registered_event(specs: list[FileSpec], known: int) -> dg.AssetMaterialization:
    """The landed files, recorded on ``simulation_runs`` like runs registered from the launchpad."""
    rows = [{"run": spec.key, "kind": "file", "new": True, "description": spec.describe()} for spec in specs]
    return dg.AssetMaterialization(
        asset_key=simulation_runs.key,
        description="registered by landing_sensor",
        metadata={
            "runs": runs_table(rows),
            "new_runs": len(specs),
            "registered_partitions": known + len(specs),
            "source": "landing_sensor",
        },
    )


def _unrecorded(
    context: dg.SensorEvaluationContext, landing: Landing, storage: StorageResource, known: set[str]
) -> list[tuple[FileSpec, str]]:
    """Accepted files whose partition was never recorded: a tick that moved them and then failed, or
    outlived the daemon's timeout. They are registered now, so nothing accepted is lost."""
    found = []
    for key in sorted(landing.landed_keys() - known):
        spec_url = storage.run_spec_url(key)
        try:
            if storage.exists(spec_url):
                spec = spec_from_dict(storage.read_json(spec_url))
            else:
                url = landing.landed_file(key)
                if url is None:
                    continue
                checks = landing.checks
                spec = file_spec(url, checks.geometry, checks.particle, storage.options())
        except (OSError, ValueError) as exc:
            context.log.error(f"accepted run {key} cannot be registered: {exc}")
            continue
        if isinstance(spec, FileSpec) and spec.key == key:
            found.append((spec, spec.url.rsplit("/", 1)[-1]))
    return found


def landing_tick(
    context: dg.SensorEvaluationContext, storage: StorageResource, settings: TwinSettings
) -> dg.SensorResult:
    """One look at the landing area (the body of ``landing_sensor``)."""
    landing = _landing(storage, settings)
    previous = json.loads(context.cursor)["settling"] if context.cursor else {}
    ready, settling = landing.scan(previous)
    known = set(context.instance.get_dynamic_partitions(simulation_runs_partitions.name))
    registered = _unrecorded(context, landing, storage, known)
    deadline = time.monotonic() + settings.landing.budget_seconds
    quarantined: list[Quarantined] = []
    for entry in ready:
        if time.monotonic() > deadline:  # checked next tick, at once: it was stable
            settling[entry.name] = [entry.size, entry.mtime]
            continue
        try:
            outcome = landing.process(entry)
        except FileNotFoundError:
            context.log.info(f"{entry.name!r} left the landing area before it was checked")
            continue
        except OSError as exc:  # e.g. a permission problem moving it: the others go on, this one is retried
            context.log.error(f"{entry.name!r} could not be checked or moved, retried next tick: {exc}")
            settling[entry.name] = [entry.size, entry.mtime]
            continue
        if isinstance(outcome, Quarantined):
            context.log.warning(f"quarantined {outcome.name!r} ({outcome.check}): {outcome.reason}")
            quarantined.append(outcome)
        elif outcome.key in known or any(spec.key == outcome.key for spec, _ in registered):
            context.log.info(f"{outcome.name!r} holds the same bytes as run {outcome.key}: kept, not ingested twice")
        else:
            context.log.info(f"{outcome.name!r} accepted as run {outcome.key} ({outcome.n_events} events)")
            registered.append((outcome.spec, outcome.name))
    requests = []
    for spec, name in registered:
        if not storage.exists(storage.run_spec_url(spec.key)):
            storage.write_json(storage.run_spec_url(spec.key), spec.to_dict())
        tags = {LOOP_TAG: "ingest", "calotwin/file": name[:200]}
        requests.append(dg.RunRequest(run_key=f"ingest-{spec.key}", partition_key=spec.key, tags=tags))
    events = []
    if quarantined:
        total = len(landing.quarantined())
        events += [_quarantine_event(item, total) for item in quarantined]
    if registered:
        events.append(_registered_event([spec for spec, _ in registered], len(known)))
    cursor = json.dumps({"settling": settling}, sort_keys=True)
    if not requests:
        waiting = f"{len(settling)} file(s) still settling" if settling else "nothing new in the landing area"
        # an AssetMaterialization needs no run: quarantine events are reported with a skip reason
        return dg.SensorResult(skip_reason=waiting, cursor=cursor, asset_events=events)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[simulation_runs_partitions.build_add_request([s.key for s, _ in registered])],
        asset_events=events,
        cursor=cursor,
    )


@dg.sensor(
    job=ingest_runs_job,
    minimum_interval_seconds=SETTINGS.landing.min_interval_seconds,
    default_status=_sensor_status(),
    description="Watches the landing area for 3DGAN / CaloChallenge HDF5 files and zarr stores. Stable files "
    "(size and mtime unchanged for one tick, or a .done marker) are checked completely: good ones become a "
    "partition (key from the checksum) and an ingest_runs run; bad ones go to quarantine/ with the reason.",
)
def landing_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    return landing_tick(context, storage, SETTINGS)


def _busy(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS), limit=10))


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


def retrain_tick(
    context: dg.SensorEvaluationContext, storage: StorageResource, registry: ModelRegistry, settings: TwinSettings
) -> dg.SensorResult | dg.SkipReason:
    """One look for data the latest model has not seen (the body of ``retrain_sensor``)."""
    instance = context.instance
    family = settings.retrain.family
    busy_jobs = [(job.name, "a training") for job in TRAINING_JOBS.values()] + [(ingest_runs_job.name, "ingestion")]
    for job_name, what in busy_jobs:
        if busy := _busy(instance, job_name):
            return dg.SkipReason(f"{what} is in progress (run {busy[0].run_id[:8]}); new data waits for it")
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
    warm_start = ""
    if champion is not None and champion.tags.get("family", "3dgan") == family:
        warm_start = version_uri(champion)
    run_config = settings.training_run_config(warm_start)
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
        f"warm start: {warm_start or 'none (no champion of this family yet)'}"
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
    default_status=_sensor_status(),
    description="Retrains the loop's generator family (flow by default; warm-started from the champion when it is "
    "of that family) when preprocessed runs exist that its latest model was not trained on. Waits while ingestion "
    "or a training is in progress: data that lands meanwhile goes into the next retraining.",
)
def retrain_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource, registry: ModelRegistry
) -> dg.SensorResult | dg.SkipReason:
    return retrain_tick(context, storage, registry, SETTINGS)


def _materialized(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> dict[str, Any] | None:
    """Metadata of ``key``'s materialization in a run, or None if that run did not materialize it."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        if materialization is not None and materialization.asset_key == key:
            return {k: v.value for k, v in materialization.metadata.items()}
    return None


def validation_request(
    instance: dg.DagsterInstance, run: dg.DagsterRun, settings: TwinSettings
) -> dg.RunRequest | dg.SkipReason:
    """Validate the version a finished training run registered."""
    found = (_materialized(instance, run.run_id, asset.key) for asset in TRAINING_ASSETS.values())
    model = next((m for m in found if m is not None), None)
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
    monitored_jobs=list(TRAINING_JOBS.values()),
    request_job=validate_model_job,
    default_status=_sensor_status(),
    minimum_interval_seconds=5,
    description="Validates every model version a successful train_flow or train_gan run registered.",
)
def validate_after_training(context: dg.RunStatusSensorContext):
    return validation_request(context.instance, context.dagster_run, SETTINGS)


def promotion_request(
    instance: dg.DagsterInstance, run: dg.DagsterRun, settings: TwinSettings
) -> dg.RunRequest | dg.SkipReason:
    """Decide the promotion of the version a finished validation run judged (a failed gate included)."""
    if run.tags.get(LOOP_TAG) != "validate":
        return dg.SkipReason(f"run {run.run_id[:8]} is not a validation of a newly trained model")
    report = _materialized(instance, run.run_id, validation_report.key)
    if report is None:
        return dg.SkipReason(f"run {run.run_id[:8]} wrote no validation report: nothing to decide")
    uri = str(report["model_uri"])
    return dg.RunRequest(
        run_key=f"promote-{run.run_id}",
        run_config=settings.promotion_run_config(str(report["validation"])),
        tags={LOOP_TAG: "promote", MODEL_TAG: uri, "calotwin/validated_by": run.run_id},
    )


def _promotion_sensor(status: dg.DagsterRunStatus, name: str, description: str) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name=name,
        run_status=status,
        monitored_jobs=[validate_model_job],
        request_job=promote_job,
        default_status=_sensor_status(),
        minimum_interval_seconds=5,
        description=description,
    )
    def sensor(context: dg.RunStatusSensorContext):
        return promotion_request(context.instance, context.dagster_run, SETTINGS)

    return sensor


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
    landing_sensor,
    retrain_sensor,
    validate_after_training,
    promote_after_validation,
    promote_after_failed_validation,
]
loop_schedules = [nightly_revalidation, weekly_full_retraining]
