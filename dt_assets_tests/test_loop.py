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

from conftest import SMALL, register_untrained_generator
from dt_assets import simulate
from dt_assets.defs.data import raw_showers, simulation_runs
from dt_assets.defs.loop import (
    LOOP_TAG,
    landing_sensor,
    landing_tick,
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
    return landing_tick(context, storage, settings)


def apply(instance, result: dg.SensorResult) -> None:
    """What the daemon does with a tick's partition requests."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_landing_sensor_registers_a_stable_file_once_under_its_checksum(home, storage, instance, good_h5):
    landing = home / "landing"
    landing.mkdir(parents=True)
    shutil.copy(good_h5, landing / "run-a.h5")
    (landing / "upload.h5.part").write_bytes(b"half an upload")  # still being written: never touched
    first = tick(instance, storage)
    assert not first.run_requests and "1 file(s) still settling" in first.skip_reason.skip_message
    assert (landing / "run-a.h5").exists()  # not touched while it may still be growing

    second = tick(instance, storage, first.cursor)
    key = f"file-{sha12(good_h5)}"
    (request,) = second.run_requests
    assert request.partition_key == key and request.run_key == f"ingest-{key}" and request.tags[LOOP_TAG] == "ingest"
    assert second.dynamic_partitions_requests[0].partition_keys == [key]
    (registered,) = second.asset_events
    assert registered.asset_key == simulation_runs.key and registered.metadata["new_runs"].value == 1
    landed = home / "data" / "landed" / key / "run-a.h5"
    assert landed.read_bytes() == good_h5.read_bytes() and not (landing / "run-a.h5").exists()
    spec = json.loads((home / "data" / "runs" / f"{key}.json").read_text())
    assert spec["url"] == str(landed) and spec["geometry"] == SMALL and spec["layout"] == "3dgan"
    apply(instance, second)

    # the same bytes under another name, with a .done marker: ready at once, kept, not a second run
    shutil.copy(good_h5, landing / "same-bytes.h5")
    (landing / "same-bytes.h5.done").touch()
    third = tick(instance, storage, second.cursor)
    assert not third.run_requests and not third.dynamic_partitions_requests
    assert (home / "data" / "landed" / key / "same-bytes.h5").read_bytes() == good_h5.read_bytes()
    assert instance.get_dynamic_partitions("simulation_runs") == [key]
    assert (landing / "upload.h5.part").read_bytes() == b"half an upload"

    # the registered partition ingests from the landed copy
    result = dg.materialize(
        [raw_showers, preprocessed_showers], partition_key=key, instance=instance, resources={"storage": storage}
    )
    assert result.success
    assert result.asset_materializations_for_node("raw_showers")[0].metadata["events"].value == 300


def test_landing_sensor_quarantines_a_bad_file_and_keeps_going(home, storage, instance, good_h5):
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
    assert request.partition_key == f"file-{sha12(good_h5)}"
    (quarantined,) = [e for e in result.asset_events if e.asset_key == dg.AssetKey("quarantined_files")]
    meta = {k: v.value for k, v in quarantined.metadata.items()}
    assert meta["file"] == "bad-nan.h5" and "NaN" in meta["reason"] and meta["files_in_quarantine"] == 1
    assert Path(meta["quarantined_to"]).read_bytes() == bad_bytes  # moved, not deleted or altered
    sidecar = json.loads(Path(meta["sidecar"]).read_text())
    assert sidecar["original_name"] == "bad-nan.h5" and "NaN" in sidecar["reason"]
    assert sorted(p.name for p in landing.iterdir()) == []


def test_a_file_that_cannot_be_moved_is_retried_and_does_not_hold_up_the_others(
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
    result = tick(instance, storage)
    (request,) = result.run_requests
    assert request.tags["calotwin/file"] == "b-good.h5"
    assert "a-stuck.h5" in json.loads(result.cursor)["settling"] and (landing / "a-stuck.h5").exists()
    monkeypatch.setattr(Landing, "process", process)
    apply(instance, result)
    again = tick(instance, storage, result.cursor)  # retried: the same bytes, so kept as a duplicate
    assert not again.run_requests and not (landing / "a-stuck.h5").exists()


def test_a_tick_whose_result_was_lost_is_made_good_by_the_next(home, storage, instance, good_h5):
    landing = home / "landing"
    landing.mkdir(parents=True)
    shutil.copy(good_h5, landing / "run.h5")
    (landing / "run.h5.done").touch()
    key = f"file-{sha12(good_h5)}"
    lost = tick(instance, storage)  # it moved the file, then the daemon lost the result (a timeout, a crash) ...
    assert lost.run_requests and not (landing / "run.h5").exists()
    (home / "data" / "runs" / f"{key}.json").unlink()  # ... even before the run spec was written
    again = tick(instance, storage)
    (request,) = again.run_requests
    assert request.partition_key == key and again.dynamic_partitions_requests[0].partition_keys == [key]
    spec = json.loads((home / "data" / "runs" / f"{key}.json").read_text())
    assert spec["url"] == str(home / "data" / "landed" / key / "run.h5") and spec["sha256"].startswith(key[5:])
    apply(instance, again)
    assert not tick(instance, storage, again.cursor).run_requests


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
