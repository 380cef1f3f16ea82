"""The landing, in Dagster: a sensor that lists and requests, a job that checks, moves and registers.

1. ``landing_sensor`` lists the landing area (:meth:`Landing.scan`): no file is read in a tick. The
   entries that are ready (a ``.done`` marker, renamed from ``.part``, or size and mtime unchanged
   for one tick) go to ``land_files`` runs, up to ``batch_size`` entries per run. A run's key is the
   checksum of its entries' names, sizes and mtimes, and the cursor remembers what was requested, so
   a tick replayed after a crash requests nothing twice. An entry still in the landing area after its
   run ended (the run failed, or could not move it) is requested again, up to ``attempts`` times.
2. ``land_files`` checks each entry completely (every file read in a child process with memory and
   time limits: :mod:`dt_assets.isolation`), moves it to ``data/landed/<file-key>/`` or to
   ``quarantine/``, registers each new checksum as a partition of ``raw_showers`` with its run spec,
   and records both on ``simulation_runs`` and ``quarantined_files``. An accepted file whose partition
   was never recorded (a run that died after moving it) is registered by the next run.
3. ``ingest_after_landing`` requests an ``ingest_runs`` run for every partition a finished
   ``land_files`` run registered (keyed ``ingest-<file-key>``: once per partition).
"""

import json
from collections.abc import Callable
from typing import Any

import dagster as dg

from resources import StorageResource

from ..fsio import sha256_json
from ..landing import Accepted, Entry, Landing, Quarantined
from ..runs import FileSpec, file_spec, spec_from_dict
from .data import runs_table, simulation_runs
from .jobs import ingest_runs_job
from .partitions import simulation_runs_partitions
from .twin_settings import TwinSettings, load_settings, loop_running_by_default

LOOP_TAG = "calotwin/loop"
SETTINGS: TwinSettings = load_settings()

quarantined_files = dg.AssetSpec(
    "quarantined_files",
    group_name="data",
    kinds={"json"},
    description="Files the landing refused. Each materialization names one file, the check it failed and the "
    "reason, and where it now is: quarantine/<time>-<name>, with a .json sidecar. Nothing is deleted.",
)


class LandingEntry(dg.Config):
    """One entry of the landing area as the sensor listed it."""

    name: str
    url: str
    size: int
    mtime: float
    is_dir: bool = False
    is_link: bool = False
    has_marker: bool = False


class LandFilesConfig(dg.Config):
    entries: list[LandingEntry]


def landing_area(storage: StorageResource, settings: TwinSettings) -> Landing:
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


def _registered_event(spec: FileSpec, name: str, known: int) -> dg.AssetMaterialization:
    """A landed file, recorded on ``simulation_runs`` like runs registered from the launchpad."""
    row = {"run": spec.key, "kind": "file", "new": True, "description": spec.describe()}
    return dg.AssetMaterialization(
        asset_key=simulation_runs.key,
        description=f"{name!r} registered by land_files",
        metadata={
            "runs": runs_table([row]),
            "new_runs": 1,
            "partition": spec.key,
            "file": dg.MetadataValue.text(name),
            "registered_partitions": known,
            "source": "land_files",
        },
    )


def _unrecorded(log: Any, landing: Landing, storage: StorageResource, known: set[str]) -> list[tuple[FileSpec, str]]:
    """Accepted files whose partition was never recorded: a run that moved them and then died. They are
    registered now, so nothing accepted is lost."""
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
            log.error(f"accepted run {key} cannot be registered: {exc}")
            continue
        if isinstance(spec, FileSpec) and spec.key == key:
            found.append((spec, spec.url.rsplit("/", 1)[-1]))
    return found


def land(context: dg.OpExecutionContext, entries: list[Entry], storage: StorageResource, settings: TwinSettings):
    """Check, move and register ``entries`` (the body of ``land_files``); yields the asset events. Raises at the
    end, after every other entry was handled, if any entry could not be checked or moved (it stays in the landing
    area and the sensor requests it again)."""
    landing = landing_area(storage, settings)
    instance = context.instance
    known = set(instance.get_dynamic_partitions(simulation_runs_partitions.name))
    in_quarantine = len(landing.quarantined())
    stuck: list[str] = []

    def register(spec: FileSpec, name: str) -> dg.AssetMaterialization:
        if not storage.exists(storage.run_spec_url(spec.key)):
            storage.write_json(storage.run_spec_url(spec.key), spec.to_dict())
        instance.add_dynamic_partitions(simulation_runs_partitions.name, [spec.key])
        known.add(spec.key)
        return _registered_event(spec, name, len(known))

    for spec, name in _unrecorded(context.log, landing, storage, known):
        context.log.info(f"{name!r} was accepted as run {spec.key} but not recorded: registered now")
        yield register(spec, name)
    for entry in entries:
        try:
            outcome = landing.process(entry)
        except FileNotFoundError:
            context.log.info(f"{entry.name!r} left the landing area before it was checked")
            continue
        except OSError as exc:  # e.g. a permission problem moving it: the others go on, this one is retried
            context.log.error(f"{entry.name!r} could not be checked or moved: {exc}")
            stuck.append(entry.name)
            continue
        if isinstance(outcome, Quarantined):
            in_quarantine += 1
            context.log.warning(f"quarantined {outcome.name!r} ({outcome.check}): {outcome.reason}")
            yield _quarantine_event(outcome, in_quarantine)
        elif isinstance(outcome, Accepted) and outcome.key in known:
            context.log.info(f"{outcome.name!r} holds the same bytes as run {outcome.key}: kept, not ingested twice")
        else:
            context.log.info(f"{outcome.name!r} accepted as run {outcome.key} ({outcome.n_events} events)")
            yield register(outcome.spec, outcome.name)
    if stuck:
        raise dg.Failure(
            f"{len(stuck)} file(s) could not be checked or moved and stay in the landing area, to be requested "
            f"again: {', '.join(stuck[:10])}"
        )


@dg.op(out={}, description="Check landed files completely, then accept (partition and run spec) or quarantine each.")
def check_landed_files(context: dg.OpExecutionContext, config: LandFilesConfig, storage: StorageResource):
    entries = [Entry(**entry.model_dump()) for entry in config.entries]
    yield from land(context, entries, storage, SETTINGS)


@dg.job(
    name="land_files",
    tags={LOOP_TAG: "land"},
    description="Check files from the landing area (each read in a child process with memory and time limits), "
    "move them to data/landed/ or quarantine/, and register the good ones as partitions of raw_showers.",
)
def land_files_job():
    check_landed_files()


def sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if loop_running_by_default() else dg.DefaultSensorStatus.STOPPED


def _finished(instance: dg.DagsterInstance, run_key: str) -> bool:
    """Whether the run requested under ``run_key`` ended (or never came to be)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    return not runs or runs[0].is_finished


#: a run in one of these is queued or running
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def busy(
    instance: dg.DagsterInstance, job_name: str, statuses: list[dg.DagsterRunStatus] = IN_PROGRESS
) -> list[dg.DagsterRun]:
    """Runs of ``job_name`` in ``statuses`` (at most 10, newest first)."""
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=statuses), limit=10))


def _landing_in_progress(instance: dg.DagsterInstance) -> bool:
    """Whether a ``land_files`` run is created, queued or running (its accepted files may not be recorded yet)."""
    return bool(busy(instance, "land_files", [dg.DagsterRunStatus.NOT_STARTED, *IN_PROGRESS]))


def on_run_status(
    name: str,
    status: dg.DagsterRunStatus,
    monitored: dg.JobDefinition,
    request_job: Any,
    request: Callable[[dg.DagsterInstance, dg.DagsterRun], Any],
    description: str,
) -> dg.SensorDefinition:
    """A loop sensor that answers each run of ``monitored`` ending in ``status`` with ``request(instance, run)``."""

    @dg.run_status_sensor(
        name=name,
        run_status=status,
        monitored_jobs=[monitored],
        request_job=request_job,
        default_status=sensor_status(),
        minimum_interval_seconds=5,
        description=description,
    )
    def sensor(context: dg.RunStatusSensorContext):
        return request(context.instance, context.dagster_run)

    return sensor


def landing_tick(context: dg.SensorEvaluationContext, settings: TwinSettings, landing: Landing) -> dg.SensorResult:
    """One look at the landing area (the body of ``landing_sensor``): lists it and requests ``land_files`` runs;
    reads no file."""
    s = settings.landing
    cursor = json.loads(context.cursor) if context.cursor else {}
    ready, settling = landing.scan(cursor.get("settling", {}))
    requested: dict[str, list] = cursor.get("requested", {})
    ended: dict[str, bool] = {}
    kept: dict[str, list] = {}
    new: list[tuple[Entry, int]] = []
    for entry in ready:
        before = requested.get(entry.name)
        if before is not None and before[:2] == [float(entry.size), float(entry.mtime)]:
            run_key, attempt = before[2], before[3]
            if run_key not in ended:
                ended[run_key] = _finished(context.instance, run_key)
            if not ended[run_key]:
                kept[entry.name] = before  # its run is queued or running
                continue
            if attempt >= s.attempts:
                context.log.error(
                    f"{entry.name!r} is still in the landing area after {attempt} land_files run(s) "
                    f"(the last: {run_key}); see their logs"
                )
                kept[entry.name] = before
                continue
            new.append((entry, attempt + 1))
        else:
            new.append((entry, 1))
    requests = []
    for start in range(0, len(new), s.batch_size):
        batch = new[start : start + s.batch_size]
        key = sha256_json([[e.name, e.size, e.mtime, attempt] for e, attempt in batch], 16)
        run_key = f"land-{key}"
        for entry, attempt in batch:
            kept[entry.name] = [float(entry.size), float(entry.mtime), run_key, attempt]
        names = ",".join(e.name for e, _ in batch)
        config = {"entries": [_entry_config(e) for e, _ in batch]}
        requests.append(
            dg.RunRequest(
                run_key=run_key,
                run_config={"ops": {"check_landed_files": {"config": config}}},
                tags={LOOP_TAG: "land", "calotwin/files": names[:200], "calotwin/n_files": str(len(batch))},
            )
        )
    if not requests and not kept and not _landing_in_progress(context.instance):
        # files a run accepted but did not record (it died after moving them): a run registers them
        known = set(context.instance.get_dynamic_partitions(simulation_runs_partitions.name))
        if unrecorded := sorted(landing.landed_keys() - known):
            requests.append(
                dg.RunRequest(
                    run_key=f"land-recover-{sha256_json(unrecorded, 16)}",
                    run_config={"ops": {"check_landed_files": {"config": {"entries": []}}}},
                    tags={LOOP_TAG: "land", "calotwin/files": ",".join(unrecorded)[:200], "calotwin/n_files": "0"},
                )
            )
    new_cursor = json.dumps({"settling": settling, "requested": kept}, sort_keys=True)
    if not requests:
        waiting = f"{len(settling)} file(s) still settling" if settling else "nothing new in the landing area"
        if kept:
            waiting += f"; {len(kept)} file(s) being landed"
        return dg.SensorResult(skip_reason=waiting, cursor=new_cursor)
    return dg.SensorResult(run_requests=requests, cursor=new_cursor)


def _entry_config(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "url": entry.url,
        "size": entry.size,
        "mtime": entry.mtime,
        "is_dir": entry.is_dir,
        "is_link": entry.is_link,
        "has_marker": entry.has_marker,
    }


@dg.sensor(
    job=land_files_job,
    minimum_interval_seconds=SETTINGS.landing.min_interval_seconds,
    default_status=sensor_status(),
    description="Lists the landing area for 3DGAN / CaloChallenge HDF5 files and zarr stores, and requests a "
    "land_files run for the ready ones (a .done marker, renamed from .part, or size and mtime unchanged for one "
    "tick). It reads no file: the run checks, moves and registers them.",
)
def landing_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    return landing_tick(context, SETTINGS, landing_area(storage, SETTINGS))


def registered_partitions(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(partition, file name) of each partition a ``land_files`` run registered, in order."""
    found = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        if materialization is not None and materialization.asset_key == simulation_runs.key:
            meta = materialization.metadata
            if "partition" in meta:
                found.append((str(meta["partition"].value), str(meta["file"].value)))
    return found


def ingestion_requests(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[dg.RunRequest] | dg.SkipReason:
    """An ``ingest_runs`` run for each partition a finished ``land_files`` run registered."""
    found = registered_partitions(instance, run.run_id)
    if not found:
        return dg.SkipReason(f"land_files run {run.run_id[:8]} registered no new partition")
    return [
        dg.RunRequest(
            run_key=f"ingest-{key}",
            partition_key=key,
            tags={LOOP_TAG: "ingest", "calotwin/file": name[:200], "calotwin/landed_by": run.run_id},
        )
        for key, name in found
    ]


def _ingestion_sensor(status: dg.DagsterRunStatus, name: str, when: str) -> dg.SensorDefinition:
    return on_run_status(
        name,
        status,
        land_files_job,
        ingest_runs_job,
        ingestion_requests,
        f"Requests an ingest_runs run for every partition a land_files run registered ({when}).",
    )


ingest_after_landing = _ingestion_sensor(dg.DagsterRunStatus.SUCCESS, "ingest_after_landing", "once each")
ingest_after_failed_landing = _ingestion_sensor(
    dg.DagsterRunStatus.FAILURE, "ingest_after_failed_landing", "a run that failed on some files registers the others"
)
landing_sensors = [landing_sensor, ingest_after_landing, ingest_after_failed_landing]
