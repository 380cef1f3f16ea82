"""The production setup end to end: object storage on an S3 server, the Dagster instance of
deploy/dagster.yaml on PostgreSQL, and an MLflow tracking server (deploy/mlflow.sh) with its store in
PostgreSQL and its artifacts on S3. The small pipeline runs from simulation to the validation report,
and the landing area works on the object store.

Servers (dt_assets_tests/servers.py): moto's S3 server, a throwaway PostgreSQL, MLflow; all on
127.0.0.1. Without PostgreSQL the slow test is skipped, or fails under CALOTWIN_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.tracking import fluent
from mlflow.tracking._tracking_service import utils as tracking_utils
from servers import MlflowServer, Postgres, S3Server

from conftest import REPO, SMALL
from dt_assets import simulate, write_hdf5, write_showers
from dt_assets.definitions import defs
from dt_assets.defs.data import raw_showers, simulation_runs
from dt_assets.defs.model import gan_model
from dt_assets.defs.preprocess import preprocessed_showers, training_set
from dt_assets.defs.validation import generated_showers, mc_reference, validation_report
from dt_assets.home import CONCURRENCY_YAML
from dt_assets.landing import Accepted, Landing, Quarantined
from dt_assets.model.generation import load_generator
from resources import LocalStorage, ObjectStorage, storage_from_env

DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
MODEL = "calotwin-generator"
PREFIX = "calotwin"  # the storage root in the bucket: s3://<bucket>/calotwin
SIMULATION = {"n_events": 256, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": SMALL, "seed": 7}
GAN = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16}
REFERENCE = {"geometry": SMALL, "events_per_cell": 100, "n_energies": 1, "angles_deg": [90.0]}
REPORT = {"bootstrap": 5, "classifier_epochs": 1}


def test_deploy_instance_has_the_embedded_instance_concurrency_and_env_credentials():
    deploy = yaml.safe_load(DEPLOY_YAML.read_text())
    assert deploy["concurrency"] == yaml.safe_load(CONCURRENCY_YAML)["concurrency"]
    assert deploy["run_coordinator"]["class"] == "QueuedRunCoordinator"
    db = deploy["storage"]["postgres"]["postgres_db"]
    assert {key: value for key, value in db.items() if key != "scheme"} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }


def test_storage_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CALOTWIN_STORAGE_URL", "s3://bucket/calotwin")
    options = {"endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-west-1"}}
    monkeypatch.setenv("CALOTWIN_STORAGE_OPTIONS", json.dumps(options))
    storage = storage_from_env()
    assert isinstance(storage, ObjectStorage) and storage.options() == options
    assert storage.url("data") == "s3://bucket/calotwin/data"
    for bad in ("{not json", "[1, 2]", '"http://127.0.0.1:9000"'):
        monkeypatch.setenv("CALOTWIN_STORAGE_OPTIONS", bad)
        with pytest.raises(ValueError, match=r"\$CALOTWIN_STORAGE_OPTIONS"):
            storage_from_env()
    monkeypatch.setenv("CALOTWIN_STORAGE_OPTIONS", "  ")
    monkeypatch.setenv("CALOTWIN_STORAGE_URL", "/srv/calotwin")
    assert storage_from_env() == LocalStorage(root="/srv/calotwin")


def materialized(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


@pytest.mark.slow
def test_pipeline_runs_on_s3_a_postgres_instance_and_an_mlflow_server(
    postgres: Postgres,  # first: without PostgreSQL the test skips before anything starts
    s3_server: S3Server,
    mlflow_server: MlflowServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    home, dagster_home = tmp_path / "calotwin", tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(DEPLOY_YAML, dagster_home / "dagster.yaml")  # the deploy file itself; the environment points it here
    environment = {
        "CALOTWIN_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_PG_HOST": postgres.host,
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USERNAME": postgres.user,
        "DAGSTER_PG_PASSWORD": postgres.password,
        "DAGSTER_PG_DB": postgres.create_database("dagster"),
        "CALOTWIN_STORAGE_URL": f"s3://{s3_server.bucket}/{PREFIX}",
        "CALOTWIN_STORAGE_OPTIONS": json.dumps(s3_server.storage_options),
        "CALOTWIN_MLFLOW_URI": mlflow_server.uri,
        **s3_server.env,
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    # the endpoints come from the settings above; MLflow's globals (which the resources set) are restored afterwards
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    storage = storage_from_env()
    assert storage == ObjectStorage(
        url_prefix=f"s3://{s3_server.bucket}/{PREFIX}", storage_options=s3_server.storage_options
    )

    # every resource of the Definitions (a new one is picked up), with storage as the environment says;
    # mlflow and registry read CALOTWIN_MLFLOW_URI when a run starts
    resources = {**defs.resources, "storage": storage}
    fs = s3_server.fs()
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert [limit["key"] for limit in concurrency.run_queue_config.tag_concurrency_limits] == ["calotwin/queue"]

        def run(assets, config=None, **kwargs) -> dg.ExecuteInProcessResult:
            ops = {name: {"config": value} for name, value in (config or {}).items()}
            return dg.materialize(
                assets, instance=instance, resources=resources, run_config={"ops": ops, **QUIET}, **kwargs
            )

        # data: one dynamic partition, raw and preprocessed zarr stores, the training set's manifest
        results = [run([simulation_runs], {"simulation_runs": {"simulations": [SIMULATION]}})]
        (key,) = instance.get_dynamic_partitions("simulation_runs")
        results.append(run([raw_showers, preprocessed_showers], partition_key=key))
        results.append(run([training_set]))
        manifest = materialized(results[-1], "training_set")["path"]
        # model: training on S3, logged and registered on the MLflow server (started meanwhile)
        mlflow_server.ready()
        results.append(run([gan_model], {"gan_model": GAN}))
        trained = materialized(results[-1], "gan_model")
        assert trained["model_uri"] == f"models:/{MODEL}/1"
        # validation: MC reference, generated showers and the report on S3, logged to the model's run
        results.append(
            run(
                [mc_reference, generated_showers, validation_report],
                {"mc_reference": REFERENCE, "validation_report": REPORT},
            )
        )
        report = materialized(results[-1], "validation_report")
        assert all(result.success for result in results)

        # the object store holds everything, under the storage root
        root = f"{s3_server.bucket}/{PREFIX}"
        for url in (
            storage.run_spec_url(key),
            storage.raw_showers_url(key),
            storage.preprocessed_url(key),
            manifest,
            trained["checkpoint"],
            report["report"],
            report["result_json"],
            report["reference_path"],
        ):
            assert url.startswith(f"s3://{root}/"), url
            assert fs.exists(url), url
        assert fs.exists(f"{storage.raw_showers_url(key)}/energy_deposit/zarr.json")
        assert fs.exists(f"{storage.preprocessed_url(key)}/zarr.json")
        samples = fs.find(f"{root}/validation")
        assert any("/mc_reference/ref-" in p for p in samples) and any("/generated/" in p for p in samples)
        # no file beside the samples: what the assets hand on is in their materializations' metadata
        assert not [p for p in samples if p.rpartition("/")[0] == f"{root}/validation"]
        assert trained["checkpoint"].endswith("/last.pt") and "/checkpoints/gan-" in trained["checkpoint"]
        assert not [p for p in fs.find(root) if ".tmp-" in p]  # no temporary keys left behind

        # MLflow: the version is registered on the server; its artifacts are on S3 under the MLflow prefix
        client = MlflowClient(mlflow_server.uri)
        version = client.get_model_version(MODEL, "1")
        assert version.tags["dagster_run_id"] == results[3].run_id and version.tags["partitions"] == key
        assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "1"
        assert client.get_experiment_by_name("calotwin").artifact_location.startswith("mlflow-artifacts:")
        assert version.tags["validation_report"] == report["report"]
        mlflow_keys = s3_server.keys("mlflow/")
        assert any(k.endswith("/extra_files/generator.pt") for k in mlflow_keys), mlflow_keys
        assert any(k.endswith("/MLmodel") for k in mlflow_keys)
        assert any(k.endswith("/loss_curves.png") for k in mlflow_keys)
        assert any(k.endswith("/validation/report.html") for k in mlflow_keys)
        artifacts = {a.path for a in client.list_artifacts(version.run_id, "validation")}
        assert artifacts == {"validation/report.html", "validation/result.json"}
        generator = load_generator(f"models:/{MODEL}/1")
        assert generator.geometry.name == SMALL

        # Dagster: runs and materializations are in PostgreSQL
        runs = instance.get_runs()
        assert {r.run_id for r in runs} == {r.run_id for r in results}
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert instance.get_latest_materialization_event(dg.AssetKey("validation_report")) is not None
        assert postgres.query("dagster", "SELECT count(*) FROM runs WHERE status = 'SUCCESS'") == [(len(results),)]
        rows = postgres.query(
            "dagster",
            "SELECT DISTINCT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'",
        )
        assert {json.loads(row[0])[0] for row in rows} == {
            "simulation_runs",
            "raw_showers",
            "preprocessed_showers",
            "training_set",
            "gan_model",
            "mc_reference",
            "generated_showers",
            "validation_report",
        }
        assert postgres.query("mlflow", "SELECT name FROM registered_models") == [(MODEL,)]

    # the landing area on S3: an HDF5 file and a zarr store accepted by checksum, a corrupt file quarantined
    showers = simulate(40, (10.0, 100.0), (60.0, 120.0), "e-", geometry=SMALL, seed=3)
    landing_url = storage.landing_url()
    write_hdf5(showers, f"{landing_url}/batch_0042.h5", "3dgan", storage.options())
    write_showers(showers.isel(event=slice(0, 20)), f"{landing_url}/batch_0043.zarr", storage.options())
    fs.pipe(f"{landing_url}/broken.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 500)
    for name in ("batch_0042.h5", "batch_0043.zarr", "broken.h5"):
        fs.pipe(f"{landing_url}/{name}.done", b"")
    landing = Landing(landing_url, storage.landed_url(), storage.quarantine_url(), storage.options())
    ready, settling = landing.scan()
    assert [e.name for e in ready] == ["batch_0042.h5", "batch_0043.zarr", "broken.h5"] and not settling
    assert [e.is_dir for e in ready] == [False, True, False]
    outcomes = {entry.name: landing.process(entry) for entry in ready}
    for name in ("batch_0042.h5", "batch_0043.zarr"):
        accepted = outcomes[name]
        assert isinstance(accepted, Accepted), accepted
        assert accepted.spec.url == f"{storage.landed_url()}/{accepted.key}/{name}"
    assert outcomes["batch_0043.zarr"].n_events == 20
    assert fs.exists(f"{outcomes['batch_0043.zarr'].spec.url}/energy_deposit/zarr.json")
    assert fs.exists(f"{outcomes['batch_0042.h5'].spec.url}.done")
    assert landing.landed_keys() == {outcomes[n].key for n in ("batch_0042.h5", "batch_0043.zarr")}
    bad = outcomes["broken.h5"]
    assert isinstance(bad, Quarantined) and bad.check == "unreadable", bad
    assert bad.url.startswith(storage.quarantine_url() + "/") and fs.exists(bad.url)
    sidecar = json.loads(fs.cat(bad.sidecar_url))
    assert sidecar["original_name"] == "broken.h5" and sidecar["check"] == "unreadable"
    assert [r["original_name"] for r in landing.quarantined()] == ["broken.h5"]
    assert fs.find(landing_url) == []  # everything moved out, markers included

    # nothing went to the local data home
    written = sorted(p for p in home.rglob("*") if p.is_file()) if home.exists() else []
    assert written == []
