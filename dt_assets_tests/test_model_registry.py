"""MLflow: the registry round trip of both families, gan_model and flow_model through Dagster (params, metrics,
tagged versions of one registered model), and the rename of a store from before the flow family."""

from __future__ import annotations

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from conftest import SMALL
from dt_assets import build_generator, generate, load_generator
from dt_assets.defs.model import flow_model, gan_model
from dt_assets.defs.pipeline import materialize_training_set
from dt_assets.defs.preprocess import training_set
from dt_assets.model.registry import default_tracking_uri, ensure_experiment, log_generator, set_alias
from resources import LocalCompute, LocalStorage, tracking_resource

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@pytest.mark.parametrize("family", ["3dgan", "flow"])
def test_registry_round_trip_log_register_alias_load_generate(home, family):
    uri = default_tracking_uri()
    assert uri == f"sqlite:///{home}/mlflow/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment("roundtrip", uri))
    generator = build_generator(SMALL, family)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(0.01 * torch.randn_like(p))
    with mlflow.start_run():
        version = log_generator(generator, "roundtrip-model", tags={"partitions": "mc-a-1,mc-b-2"})
    assert str(version.version) == "1" and version.tags["partitions"] == "mc-a-1,mc-b-2"
    assert version.tags["family"] == family
    set_alias("champion", version.version, "roundtrip-model")
    expected = generate(generator, 8, 50.0, 90.0, seed=2).energy_deposit.values
    for model_uri in ("models:/roundtrip-model@champion", "models:/roundtrip-model/1"):
        loaded = load_generator(model_uri)
        assert loaded.family == family
        assert np.array_equal(generate(loaded, 8, 50.0, 90.0, seed=2).energy_deposit.values, expected), model_uri
    # the MLflow model itself: a torch.export graph that loads without CaloTwin's classes and makes the same showers
    graph = mlflow.pytorch.load_model("models:/roundtrip-model/1")
    assert not isinstance(graph, type(generator))
    for conditions in ([0.5, 1.2], [1.5, 1.9]):  # the graph takes the input example's batch of one
        latent = torch.cat([torch.tensor([conditions]), torch.randn(1, generator.noise_size)], dim=1)
        with torch.no_grad():
            torch.testing.assert_close(graph(latent), generator(latent), rtol=1e-4, atol=1e-3)
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
    assert metadata["model_uri"].value == "models:/calotwin-generator/1"
    assert metadata["loss_curves"].value.startswith("![loss curves](data:image/png;base64,")
    assert metadata["epochs_trained"].value == 2 and metadata["partitions"].value == key
    client = MlflowClient(default_tracking_uri())
    version = client.get_model_version("calotwin-generator", "1")
    assert version.tags["dagster_run_id"] == result.run_id and version.tags["partitions"] == key
    assert str(client.get_model_version_by_alias("calotwin-generator", "challenger").version) == "1"
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
    assert metadata["epochs_trained"].value == 1 and metadata["model_uri"].value == "models:/calotwin-generator/2"
    assert load_generator("models:/calotwin-generator@challenger").geometry.name == SMALL


def test_flow_model_asset_registers_beside_the_3dgan_in_one_registered_model(home, instance):
    resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
    sims = [
        {"n_events": 600, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": SMALL, "seed": 4},
        {"n_events": 300, "particle": "gamma", "geometry": SMALL, "seed": 5},
    ]
    materialize_training_set(instance, resources, sims)
    gan = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16}
    flow = {"epochs": 2, "max_steps_per_epoch": 3, "batch_size": 32, "stage2_hidden": 64}
    for asset, config in ((gan_model, gan), (flow_model, flow)):
        dg.materialize(
            [asset],
            instance=instance,
            resources=resources,
            run_config={"ops": {asset.key.path[-1]: {"config": config}}, **QUIET},
        )
    client = MlflowClient(default_tracking_uri())
    versions = {v.version: v for v in client.search_model_versions("name='calotwin-generator'")}
    assert {str(v): versions[v].tags["family"] for v in versions} == {"1": "3dgan", "2": "flow"}
    assert versions[2].tags["particle"] == "e-"
    assert str(client.get_model_version_by_alias("calotwin-generator", "challenger").version) == "2"
    meta = {
        k: v.value
        for k, v in instance.get_latest_materialization_event(flow_model.key).asset_materialization.metadata.items()
    }
    assert meta["family"] == "flow" and meta["epochs_trained"] == 2 and "discriminator_parameters" not in meta
    assert meta["checkpoint"].split("/")[-2].startswith("flow-")
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.params["family"] == "flow" and run.data.params["particle"] == "e-"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_stage2")] == [0, 1]
    # trained on the electrons only: 600 e- of which the training split, not the 300 photons
    assert int(run.data.params["train_events"]) < 600
    loaded = load_generator("models:/calotwin-generator@challenger")
    assert loaded.family == "flow" and loaded.geometry.name == SMALL


def test_a_store_from_before_the_flow_family_is_renamed_with_its_versions_and_aliases(home):
    from dt_assets.model.cli import main

    mlflow.set_tracking_uri(default_tracking_uri())
    mlflow.set_experiment(experiment_id=ensure_experiment("calotwin", default_tracking_uri()))
    with mlflow.start_run():
        version = log_generator(build_generator(SMALL), "calotwin-3dgan")
    set_alias("champion", version.version, "calotwin-3dgan")
    assert main(["rename-model"]) == 0
    client = MlflowClient(default_tracking_uri())
    assert client.get_registered_model("calotwin-generator").aliases == {"champion": 1}
    assert load_generator("models:/calotwin-generator@champion").family == "3dgan"
    assert main(["rename-model"]) == 1  # nothing named calotwin-3dgan any more


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
