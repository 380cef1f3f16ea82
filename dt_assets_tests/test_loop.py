"""The loop's sensors and schedules, evaluated in-process: landing, retraining, validation and promotion requests,
the settings file, the training pool."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import dagster as dg
import h5py
import numpy as np
import pytest

from conftest import SMALL, bad_landing_files, register_untrained_generator
from dt_assets import simulate
from dt_assets.defs.data import raw_showers, simulation_runs
from dt_assets.defs.landing import (
    LOOP_TAG,
    ingestion_requests,
    land_files_job,
    landing_area,
    landing_sensor,
    landing_tick,
)
from dt_assets.defs.loop import (
    latest_trained,
    loop_sensors,
    nightly_revalidation,
    promotion_request,
    retrain_tick,
    validation_request,
    weekly_full_retraining,
)
from dt_assets.defs.model import flow_model, gan_model
from dt_assets.defs.preprocess import preprocessed_showers, training_set
from dt_assets.defs.twin_settings import TwinSettings, load_settings
from dt_assets.home import ensure_dagster_home
from dt_assets.landing import Landing
from dt_assets.showers.hdf5 import write_hdf5
from dt_assets.twin import LOOP_SENSORS
from resources import LocalCompute, LocalStorage, ModelRegistry, tracking_resource

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
MODEL = "calotwin-generator"
FAST = TwinSettings.model_validate(
    {"retrain": {"family": "3dgan", "gan_model": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16}}}
)
#: the loop's default family, the flow, with a tiny training
FAST_FLOW = TwinSettings.model_validate(
    {"retrain": {"flow_model": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16, "stage2_hidden": 32}}}
)


@pytest.fixture
def storage(home: Path) -> LocalStorage:
    return LocalStorage(root=str(home))


@pytest.fixture(scope="module")
def good_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("files") / "good.h5"
    write_hdf5(simulate(300, (10.0, 100.0), (60.0, 120.0), "e-", geometry=SMALL, seed=21), str(path))
    return path


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def tick(instance, storage, cursor=None, settings=FAST) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return landing_tick(context, settings, landing_area(storage, settings))


def land(instance, storage, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """What the daemon does with a land_files request: the run, with its run key."""
    assert request.job_name in (None, "land_files") and request.tags[LOOP_TAG] == "land"
    return land_files_job.execute_in_process(
        run_config={**request.run_config, **QUIET},
        instance=instance,
        resources={"storage": storage},
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )


def entries(request: dg.RunRequest) -> list[str]:
    return [e["name"] for e in request.run_config["ops"]["check_landed_files"]["config"]["entries"]]


def test_the_landing_sensor_reads_no_file_and_its_run_registers_a_stable_file_once_under_its_checksum(
    home, storage, instance, good_h5
):
    landing = home / "landing"
    landing.mkdir(parents=True)
    shutil.copy(good_h5, landing / "run-a.h5")
    (landing / "upload.h5.part").write_bytes(b"half an upload")  # still being written: never touched
    first = tick(instance, storage)
    assert not first.run_requests and "2 file(s) still settling" in first.skip_reason.skip_message

    second = tick(instance, storage, first.cursor)
    (request,) = second.run_requests
    assert entries(request) == ["run-a.h5"] and request.run_key.startswith("land-")
    assert (landing / "run-a.h5").exists() and not (home / "data" / "landed").exists()  # the tick moved nothing
    assert tick(instance, storage, first.cursor).run_requests[0].run_key == request.run_key  # a replay: same key

    run = land(instance, storage, request)
    assert run.success
    key = f"file-{sha12(good_h5)}"
    (registered,) = [e for e in run.get_asset_materialization_events() if e.asset_key == simulation_runs.key]
    meta = registered.step_materialization_data.materialization.metadata
    assert meta["partition"].value == key and meta["file"].value == "run-a.h5"
    assert instance.get_dynamic_partitions("simulation_runs") == [key]
    landed = home / "data" / "landed" / key / "run-a.h5"
    assert landed.read_bytes() == good_h5.read_bytes() and not (landing / "run-a.h5").exists()
    spec = json.loads((home / "data" / "runs" / f"{key}.json").read_text())
    assert spec["url"] == str(landed) and spec["geometry"] == SMALL and spec["layout"] == "3dgan"
    (ingest,) = ingestion_requests(instance, instance.get_run_by_id(run.run_id))
    assert ingest.partition_key == key and ingest.run_key == f"ingest-{key}" and ingest.tags[LOOP_TAG] == "ingest"
    assert ingest.tags["calotwin/file"] == "run-a.h5"
    assert not tick(instance, storage, second.cursor).run_requests  # landed: nothing more to request

    # the same bytes under another name, with a .done marker: ready at once, kept, not a second partition
    shutil.copy(good_h5, landing / "same-bytes.h5")
    (landing / "same-bytes.h5.done").touch()
    (request,) = tick(instance, storage, second.cursor).run_requests
    run = land(instance, storage, request)
    assert run.success and isinstance(ingestion_requests(instance, instance.get_run_by_id(run.run_id)), dg.SkipReason)
    assert (home / "data" / "landed" / key / "same-bytes.h5").read_bytes() == good_h5.read_bytes()
    assert instance.get_dynamic_partitions("simulation_runs") == [key]
    assert (landing / "upload.h5.part").read_bytes() == b"half an upload"

    # the registered partition ingests from the landed copy
    result = dg.materialize(
        [raw_showers, preprocessed_showers], partition_key=key, instance=instance, resources={"storage": storage}
    )
    assert result.success
    assert result.asset_materializations_for_node("raw_showers")[0].metadata["events"].value == 300


def test_a_file_renamed_from_part_is_requested_on_the_first_tick_after_the_rename(home, storage, instance, good_h5):
    landing = home / "landing"
    landing.mkdir(parents=True)
    shutil.copy(good_h5, landing / "run.h5.part")
    first = tick(instance, storage)
    assert not first.run_requests
    (landing / "run.h5.part").rename(landing / "run.h5")
    (request,) = tick(instance, storage, first.cursor).run_requests
    assert entries(request) == ["run.h5"]


def test_the_land_run_quarantines_a_bad_file_and_keeps_going(home, storage, instance, good_h5):
    landing = home / "landing"
    landing.mkdir(parents=True)
    bad = landing / "bad-nan.h5"
    shutil.copy(good_h5, bad)
    with h5py.File(bad, "r+") as h5:
        h5["ECAL"][3, 1, 1, 1] = np.nan
    bad_bytes = bad.read_bytes()
    shutil.copy(good_h5, landing / "good.h5")
    for name in ("bad-nan.h5", "good.h5"):
        (landing / f"{name}.done").touch()
    result = landing_sensor(dg.build_sensor_context(instance=instance, resources={"storage": storage}))
    (request,) = result.run_requests
    assert entries(request) == ["bad-nan.h5", "good.h5"]
    run = land(instance, storage, request)
    assert run.success
    (quarantined,) = [e for e in run.get_asset_materialization_events() if e.asset_key.path == ["quarantined_files"]]
    meta = {k: v.value for k, v in quarantined.step_materialization_data.materialization.metadata.items()}
    assert meta["file"] == "bad-nan.h5" and "NaN" in meta["reason"] and meta["files_in_quarantine"] == 1
    assert Path(meta["quarantined_to"]).read_bytes() == bad_bytes  # moved, not deleted or altered
    sidecar = json.loads(Path(meta["sidecar"]).read_text())
    assert sidecar["original_name"] == "bad-nan.h5" and "NaN" in sidecar["reason"]
    assert instance.get_dynamic_partitions("simulation_runs") == [f"file-{sha12(good_h5)}"]
    assert sorted(p.name for p in landing.iterdir()) == []


def test_a_file_that_cannot_be_moved_fails_its_run_after_the_others_and_is_requested_again(
    home, storage, instance, good_h5, monkeypatch
):
    landing = home / "landing"
    landing.mkdir(parents=True)
    for name in ("a-stuck.h5", "b-good.h5"):
        shutil.copy(good_h5, landing / name)
        (landing / f"{name}.done").touch()
    process = Landing.process

    def refuse_one(self, entry):
        if entry.name == "a-stuck.h5":
            raise PermissionError(13, "Permission denied", entry.url)
        return process(self, entry)

    monkeypatch.setattr(Landing, "process", refuse_one)
    first = tick(instance, storage)
    (request,) = first.run_requests
    # as the daemon does with the request: a run (not started yet) under its key
    instance.create_run_for_job(
        land_files_job, run_config=request.run_config, tags={"dagster/run_key": request.run_key}
    )
    assert not tick(instance, storage, first.cursor).run_requests  # requested, its run not ended: not again
    run = land(instance, storage, request)
    assert not run.success and (landing / "a-stuck.h5").exists()
    (ingest,) = ingestion_requests(instance, instance.get_run_by_id(run.run_id))  # the other one goes on
    assert ingest.tags["calotwin/file"] == "b-good.h5"
    monkeypatch.setattr(Landing, "process", process)
    (again,) = tick(instance, storage, first.cursor).run_requests  # its run ended: requested again
    assert entries(again) == ["a-stuck.h5"] and again.run_key != request.run_key
    assert land(instance, storage, again).success and not (landing / "a-stuck.h5").exists()


def test_a_file_accepted_by_a_run_that_died_is_registered_by_the_next_run(home, storage, instance, good_h5):
    landing = home / "landing"
    landing.mkdir(parents=True)
    shutil.copy(good_h5, landing / "run.h5")
    (landing / "run.h5.done").touch()
    key = f"file-{sha12(good_h5)}"
    area = landing_area(storage, FAST)
    (entry,) = area.scan()[0]
    area.process(entry)  # a run moved the file, then died before it registered the partition or the spec
    (request,) = tick(instance, storage).run_requests
    assert request.run_key.startswith("land-recover-") and entries(request) == []
    run = land(instance, storage, request)
    assert run.success and instance.get_dynamic_partitions("simulation_runs") == [key]
    spec = json.loads((home / "data" / "runs" / f"{key}.json").read_text())
    assert spec["url"] == str(home / "data" / "landed" / key / "run.h5") and spec["sha256"].startswith(key[5:])
    assert [r.partition_key for r in ingestion_requests(instance, instance.get_run_by_id(run.run_id))] == [key]
    assert not tick(instance, storage).run_requests


def register_champion(seed: int) -> str:
    """An (untrained) small generator registered as a new version and made champion."""
    return register_untrained_generator("champion", seed, MODEL)


def ingest(instance, storage, key_seed: int) -> str:
    """Register and ingest one small MC run."""
    config = {"simulations": [{"n_events": 200, "geometry": SMALL, "seed": key_seed}]}
    result = dg.materialize(
        [simulation_runs],
        instance=instance,
        resources={"storage": storage},
        run_config={"ops": {"simulation_runs": {"config": config}}, **QUIET},
    )
    (row,) = result.asset_materializations_for_node("simulation_runs")[0].metadata["runs"].value.records
    key = row.data["run"]
    dg.materialize(
        [raw_showers, preprocessed_showers],
        partition_key=key,
        instance=instance,
        resources={"storage": storage},
        run_config=QUIET,
    )
    return key


def retrain(instance, storage, cursor=None, settings=FAST):
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return retrain_tick(context, storage, ModelRegistry(), settings)


def test_retraining_waits_for_ingestion_warm_starts_from_the_champion_and_takes_all_new_data(home, storage, instance):
    first = ingest(instance, storage, 31)
    result = retrain(instance, storage)
    (request,) = result.run_requests
    assert request.run_config["ops"]["gan_model"]["config"]["warm_start"] == ""  # no champion yet
    assert request.tags["calotwin/new_runs"] == first

    champion = register_champion(5)
    second = ingest(instance, storage, 32)
    result = retrain(instance, storage, result.cursor)
    (request,) = result.run_requests
    config = request.run_config["ops"]["gan_model"]["config"]
    assert config["warm_start"] == f"models:/{MODEL}/{champion}"
    assert request.tags["calotwin/new_runs"] == ",".join(sorted([first, second]))

    # the requested run trains on both runs, from the champion's weights, and registers a new version
    trained = dg.materialize(
        [training_set, gan_model],
        instance=instance,
        resources={"storage": storage, "compute": LocalCompute(), "mlflow": tracking_resource()},
        run_config={**request.run_config, **QUIET},
        tags=request.tags,
    )
    meta = {k: v.value for k, v in trained.asset_materializations_for_node("gan_model")[0].metadata.items()}
    assert meta["warm_start"] == f"models:/{MODEL}/{champion}" and meta["geometry"] == SMALL
    assert set(meta["partitions"].split(",")) == {first, second} == latest_trained(instance, SMALL, "3dgan")
    assert not retrain(instance, storage, result.cursor).run_requests  # nothing new since

    # the finished training's version is validated next, with the loop's settings
    run = instance.get_run_by_id(trained.run_id)
    validation = validation_request(instance, run, FAST)
    ops = validation.run_config["ops"]
    assert ops["generated_showers"]["config"]["model_uri"] == meta["model_uri"] == f"models:/{MODEL}/2"
    assert ops["mc_reference"]["config"]["geometry"] == SMALL and validation.tags[LOOP_TAG] == "validate"
    # a run that is not a loop validation, or that wrote no report, gets no promotion
    assert isinstance(promotion_request(instance, run, FAST), dg.SkipReason)


def test_the_loop_retrains_its_family_and_warm_starts_only_from_a_champion_of_that_family(home, storage, instance):
    first = ingest(instance, storage, 35)
    register_champion(7)  # a 3DGAN champion: a flow cannot start from it
    result = retrain(instance, storage, settings=FAST_FLOW)
    (request,) = result.run_requests
    assert set(request.run_config["ops"]) == {"flow_model"}
    assert request.run_config["ops"]["flow_model"]["config"]["warm_start"] == ""
    trained = dg.materialize(
        [training_set, flow_model],
        instance=instance,
        resources={"storage": storage, "compute": LocalCompute(), "mlflow": tracking_resource()},
        run_config={**request.run_config, **QUIET},
        tags=request.tags,
    )
    meta = {k: v.value for k, v in trained.asset_materializations_for_node("flow_model")[0].metadata.items()}
    assert meta["family"] == "flow" and latest_trained(instance, SMALL, "flow") == {first}
    assert latest_trained(instance, SMALL, "3dgan") == set()  # the 3DGAN's latest model saw none of it
    validation = validation_request(instance, instance.get_run_by_id(trained.run_id), FAST_FLOW)
    assert validation.run_config["ops"]["generated_showers"]["config"]["model_uri"] == meta["model_uri"]
    from dt_assets.model.registry import set_alias

    set_alias("champion", meta["model_version"], MODEL)  # now a flow is the champion
    ingest(instance, storage, 36)
    (request,) = retrain(instance, storage, settings=FAST_FLOW).run_requests
    assert request.run_config["ops"]["flow_model"]["config"]["warm_start"] == meta["model_uri"]
    # a retraining set for another network (make champion trains with layer_skewness, the loop without) keeps the
    # champion's, which its warm start needs; the rest of its settings are its own
    other = TwinSettings.model_validate(
        {"retrain": {"flow_model": {"epochs": 3, "stage2_hidden": 64, "layer_skewness": True}}}
    )
    (request,) = retrain(instance, storage, settings=other).run_requests
    config = request.run_config["ops"]["flow_model"]["config"]
    assert config["warm_start"] == meta["model_uri"] and config["epochs"] == 3
    assert config["stage2_hidden"] == 32 and config["layer_skewness"] is False


def test_data_that_lands_during_a_training_goes_into_the_next_one_and_a_canceled_one_is_not_retried(
    home, storage, instance
):
    first = ingest(instance, storage, 33)
    second = None
    for job_name in ("train_gan", "ingest_runs"):
        run = instance.add_run(
            dg.DagsterRun(job_name=job_name, run_id=f"{job_name}-run", status=dg.DagsterRunStatus.STARTED)
        )
        skipped = retrain(instance, storage)
        assert isinstance(skipped, dg.SkipReason) and "in progress" in skipped.skip_message, job_name
        if job_name == "train_gan":
            second = ingest(instance, storage, 34)  # lands while the training runs
        instance.delete_run(run.run_id)
    (request,) = retrain(instance, storage).run_requests
    assert request.tags["calotwin/new_runs"] == ",".join(sorted([first, second]))

    # a retraining canceled (or failed) on this data and these settings is not requested again
    instance.add_run(
        dg.DagsterRun(
            job_name="train_gan",
            run_id="canceled-run",
            status=dg.DagsterRunStatus.CANCELED,
            tags={"dagster/run_key": request.run_key},
        )
    )
    skipped = retrain(instance, storage)
    assert "ended CANCELED (run canceled" in skipped.skip_reason.skip_message


def test_the_twin_client_names_every_loop_sensor():
    assert set(LOOP_SENSORS) == {sensor.name for sensor in loop_sensors}


def test_schedules_are_off_by_default_and_build_their_runs(home, instance):
    context = dg.build_schedule_context(instance=instance, resources={"registry": ModelRegistry()})
    skipped = nightly_revalidation(context)
    assert isinstance(skipped, dg.SkipReason) and "no champion" in skipped.skip_message
    champion = register_champion(6)
    request = nightly_revalidation(context)
    assert request.run_config["ops"]["generated_showers"]["config"]["model_uri"] == f"models:/{MODEL}/{champion}"
    assert request.tags[LOOP_TAG] == "revalidate"
    weekly = weekly_full_retraining(dg.build_schedule_context(scheduled_execution_time=_dt("2026-11-29")))
    config = weekly.run_config["ops"]["flow_model"]["config"]  # the loop's default family
    assert config["warm_start"] == "" and config["seed"] == 202648 and config["epochs"] == 12


def _dt(day: str):
    import datetime

    return datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC)


def test_settings_file_overrides_and_bad_values_are_named(tmp_path):
    path = tmp_path / "twin.yaml"
    path.write_text("landing: {min_interval_seconds: 5}\nretrain: {family: 3dgan, gan_model: {epochs: 2}}\n")
    settings = load_settings(path)
    assert settings.landing.min_interval_seconds == 5 and settings.retrain.gan_model.epochs == 2
    assert settings.retrain.gan_model.max_steps_per_epoch == 0  # a section given replaces the loop's default
    assert settings.training_run_config("")["ops"]["gan_model"]["config"]["epochs"] == 2
    for text, named in [
        ("landing: {min_interval_seconds: 0}", "landing.min_interval_seconds"),
        (
            "retrain: {gan_model: {geometry: nowhere}}",
            "retrain.gan_model.geometry: Input should be 'clic_ecal_25x25x25'",
        ),
        ("revalidation: {cron: 'every night'}", "not a cron expression"),
        ("validation: {mc_reference: {events_per_cell: -3}}", "validation.mc_reference.events_per_cell"),
        ("landing: {energy_range_gev: [500, 1]}", "energy_range_gev"),
        ("retrain: {epochs: 2}", "retrain.epochs"),
        ("retrain: {family: vae}", "retrain.family: Input should be '3dgan' or 'flow'"),
        ("- a list", "expected a mapping"),
        ("landing: {", "not valid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match="twin settings") as err:
            load_settings(path)
        assert named in str(err.value), text
    with pytest.raises(ValueError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")


def test_the_default_instance_runs_one_training_at_a_time(home):
    dagster_home = ensure_dagster_home()
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    # a dagster.yaml CaloTwin wrote before pools existed gains the section once, nothing else changes
    config = dagster_home / "dagster.yaml"
    old = config.read_text().split("concurrency:")[0]
    config.write_text(old)
    ensure_dagster_home()
    ensure_dagster_home()
    assert config.read_text().count("concurrency:") == 1 and config.read_text().startswith(old.rstrip())


def test_fifty_files_at_once_land_exactly_once_intact_and_one_retraining_takes_them_all(
    home, storage, instance, tmp_path
):
    landing = home / "landing"
    landing.mkdir(parents=True)
    good: dict[str, bytes] = {}
    for i in range(35):  # 35 distinct good files, the first 5 dropped twice under another name
        path = tmp_path / f"good-{i:02d}.h5"
        write_hdf5(simulate(20, (10.0, 100.0), (60.0, 120.0), "e-", geometry=SMALL, seed=500 + i), str(path))
        good[path.name] = path.read_bytes()
        if i < 5:
            good[f"copy-{i:02d}.h5"] = good[path.name]
    for name, data in good.items():
        (landing / name).write_bytes(data)
    refused = bad_landing_files(landing, good["good-00.h5"], tmp_path)
    dropped = {p.name: p.read_bytes() for p in landing.iterdir()}
    assert len(dropped) == 50

    first = tick(instance, storage)
    assert not first.run_requests
    for request in tick(instance, storage, first.cursor).run_requests:
        land(instance, storage, request)

    assert sorted(p.name for p in landing.iterdir()) == []  # nothing stays in the landing area
    accepted = {p.name: p.read_bytes() for p in (home / "data" / "landed").glob("*/*")}
    sidecars = [json.loads(p.read_text()) for p in (home / "quarantine").glob("*.json")]
    quarantined = {s["original_name"]: (s["check"], Path(s["url"]).read_bytes()) for s in sidecars}
    assert len(accepted) + len(sidecars) == 50 and not set(accepted) & set(quarantined)  # each exactly once
    assert accepted == good  # with its bytes intact
    assert {name: check for name, (check, _) in quarantined.items()} == refused
    assert all(data == dropped[name] for name, (_, data) in quarantined.items())
    keys = {f"file-{hashlib.sha256(data).hexdigest()[:12]}" for data in good.values()}
    assert set(instance.get_dynamic_partitions("simulation_runs")) == keys and len(keys) == 35

    # every partition ingested once, then one retraining covers them all
    requests = [r for run in instance.get_runs() for r in ingestion_requests(instance, run)]
    assert sorted(r.partition_key for r in requests) == sorted(keys)
    for request in requests:
        dg.materialize(
            [raw_showers, preprocessed_showers],
            partition_key=request.partition_key,
            instance=instance,
            resources={"storage": storage},
            run_config=QUIET,
        )
    assert set(instance.get_materialized_partitions(preprocessed_showers.key)) == keys
    (retraining,) = retrain(instance, storage).run_requests
    assert retraining.tags["calotwin/new_runs"] == ",".join(sorted(keys))[:200]
