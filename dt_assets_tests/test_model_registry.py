"""MLflow: the registry round trip, and gan_model through Dagster (params, metrics, tagged version)."""

from __future__ import annotations

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from conftest import SMALL
from dt_assets import build_generator, generate, load_generator
from dt_assets.defs.model import gan_model
from dt_assets.defs.pipeline import materialize_training_set
from dt_assets.defs.preprocess import training_set
from dt_assets.model.registry import default_tracking_uri, ensure_experiment, log_generator, set_alias
from resources import LocalCompute, LocalStorage, tracking_resource

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def test_registry_round_trip_log_register_alias_load_generate(home):
    uri = default_tracking_uri()
    assert uri == f"sqlite:///{home}/mlflow/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment("roundtrip", uri))
    generator = build_generator(SMALL)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(0.01 * torch.randn_like(p))
    with mlflow.start_run():
        version = log_generator(generator, "roundtrip-model", tags={"partitions": "mc-a-1,mc-b-2"})
    assert str(version.version) == "1" and version.tags["partitions"] == "mc-a-1,mc-b-2"
    set_alias("champion", version.version, "roundtrip-model")
    expected = generate(generator, 8, 50.0, 90.0, seed=2).energy_deposit.values
    for model_uri in ("models:/roundtrip-model@champion", "models:/roundtrip-model/1"):
        loaded = load_generator(model_uri)
        assert np.array_equal(generate(loaded, 8, 50.0, 90.0, seed=2).energy_deposit.values, expected), model_uri
    experiment = MlflowClient(uri).get_experiment_by_name("roundtrip")
    assert experiment.artifact_location == str(home / "mlflow" / "artifacts")


def test_registry_uri_without_a_generator_file_is_named(home):
    mlflow.set_tracking_uri(default_tracking_uri())
    mlflow.set_experiment(experiment_id=ensure_experiment("foreign", default_tracking_uri()))
    with mlflow.start_run():
        mlflow.pytorch.log_model(
            torch.nn.Linear(2, 2),
            name="m",
            input_example=np.zeros((1, 2), dtype=np.float32),
            pip_requirements=["torch"],
            registered_model_name="foreign-model",
        )
    with pytest.raises(FileNotFoundError, match="no CaloTwin generator file"):
        load_generator("models:/foreign-model/1")


def test_gan_model_asset_trains_logs_registers_and_resumes(home, instance):
    resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
    sims = [{"n_events": 600, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": SMALL, "seed": 4}]
    (key,) = materialize_training_set(instance, resources, sims)
    config = {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 16}
    result = dg.materialize(
        [gan_model],
        instance=instance,
        resources=resources,
        run_config={"ops": {"gan_model": {"config": config}}, **QUIET},
    )
    metadata = result.asset_materializations_for_node("gan_model")[0].metadata
    assert metadata["model_uri"].value == "models:/calotwin-3dgan/1"
    assert metadata["loss_curves"].value.startswith("![loss curves](data:image/png;base64,")
    assert metadata["epochs_trained"].value == 2 and metadata["partitions"].value == key
    client = MlflowClient(default_tracking_uri())
    version = client.get_model_version("calotwin-3dgan", "1")
    assert version.tags["dagster_run_id"] == result.run_id and version.tags["partitions"] == key
    assert str(client.get_model_version_by_alias("calotwin-3dgan", "challenger").version) == "1"
    run = client.get_run(metadata["mlflow_run_id"].value)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["geometry"] == SMALL
    assert [m.step for m in client.get_metric_history(run.info.run_id, "g")] == [0, 1]
    assert "loss_curves.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
    # more epochs with the same data and settings resume from the checkpoint
    config["epochs"] = 3
    again = dg.materialize(
        [gan_model],
        instance=instance,
        resources=resources,
        run_config={"ops": {"gan_model": {"config": config}}, **QUIET},
    )
    metadata = again.asset_materializations_for_node("gan_model")[0].metadata
    assert metadata["epochs_trained"].value == 1 and metadata["model_uri"].value == "models:/calotwin-3dgan/2"
    assert load_generator("models:/calotwin-3dgan@challenger").geometry.name == SMALL


def test_gan_model_without_runs_of_its_geometry_fails_clearly(home, instance):
    resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
    dg.materialize([training_set], instance=instance, resources=resources, run_config=QUIET)
    result = dg.materialize([gan_model], instance=instance, resources=resources, run_config=QUIET, raise_on_error=False)
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "no preprocessed run on geometry 'small_ecal_15x15x12'" in message
    # the MLflow run the resource started is ended as FAILED, not left active for the next run
    assert mlflow.active_run() is None
    (run,) = MlflowClient(default_tracking_uri()).search_runs(
        [MlflowClient(default_tracking_uri()).get_experiment_by_name("calotwin").experiment_id]
    )
    assert run.info.status == "FAILED"
