"""Reproducibility records: gan_model stores one per version; a model rebuilt from it has the same weights."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch
import zarr
from mlflow import MlflowClient

from conftest import SMALL
from dt_assets.defs.model import flow_model, gan_model
from dt_assets.defs.pipeline import materialize_training_set
from dt_assets.model.cli import main as cli
from dt_assets.model.generation import download_generator
from dt_assets.model.record import (
    RECORD_TAG,
    SCHEMA_VERSION,
    DataChangedError,
    ReproducibilityRecord,
    compare_weights,
    read_record,
    reproduce,
    verify_data,
)
from dt_assets.model.registry import default_tracking_uri
from dt_assets.version import __version__
from resources import LocalCompute, LocalStorage, tracking_resource

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
TRAIN = {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 16, "seed": 5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A data home with a small gan_model registered twice: models:/calotwin-generator/1 (2 epochs) and /2 (3
    epochs, resumed from the first's checkpoint). Yields (the first's metadata, the run key)."""
    home = tmp_path_factory.mktemp("reproducibility") / "calotwin"
    with pytest.MonkeyPatch.context() as mp, dg.DagsterInstance.ephemeral() as instance:
        mp.setenv("CALOTWIN_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        mp.delenv("CALOTWIN_STORAGE_URL", raising=False)
        resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
        sims = [{"n_events": 600, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": SMALL, "seed": 4}]
        (key,) = materialize_training_set(instance, resources, sims)
        metadata = []
        for epochs in (2, 3):
            config = {**TRAIN, "epochs": epochs}
            result = dg.materialize(
                [gan_model],
                instance=instance,
                resources=resources,
                run_config={"ops": {"gan_model": {"config": config}}, **QUIET},
            )
            metadata.append(result.asset_materializations_for_node("gan_model")[0].metadata)
        mlflow.set_tracking_uri(default_tracking_uri())
        yield metadata[0], key


def test_a_registered_version_is_rebuilt_bit_identically_from_its_record(trained, tmp_path, capsys):
    metadata, key = trained
    assert metadata["model_uri"].value == "models:/calotwin-generator/1"
    model_uri = metadata["model_uri"].value
    record = read_record(model_uri)
    assert metadata["reproducibility_record"].value.endswith("reproducibility/record.json")
    version = MlflowClient(default_tracking_uri()).get_model_version("calotwin-generator", "1")
    assert version.tags[RECORD_TAG] == record.checksum()
    # what it holds
    assert record.schema_version == SCHEMA_VERSION and record.geometry == SMALL
    (store,) = record.data
    assert store.run == key and store.url.endswith(".zarr") and len(store.sha256) == 64
    assert store.n_train > 0 and store.n_validation > 0
    assert record.config["seed"] == 5 and record.config["epochs"] == 2 and record.config["max_steps_per_epoch"] == 2
    assert record.config["batch_size"] == 16 and record.config["loss_weights"] == [3.0, 0.1, 25.0, 0.1]
    assert record.family == "3dgan" and record.config["weight_count"] == 0.0
    assert record.warm_start is None and record.stages == [2]
    assert record.code_version == __version__ and record.git_commit
    env = record.environment
    assert env["packages"]["torch"] == torch.__version__ and env["packages"]["numpy"] == np.__version__
    assert {"dagster", "mlflow", "zarr", "calotwin"} <= env["packages"].keys() and env["python"]
    assert env["device"] == "cpu" and env["world_size"] == 1 and env["torch_threads"] >= 1
    assert ReproducibilityRecord.from_json(record.to_json()) == record
    # rebuilt from the record alone into a fresh folder: the same weights, every tensor
    threads = torch.get_num_threads()
    result = reproduce(record, str(tmp_path / "again"))
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    registered = download_generator(model_uri).state_dict()
    rebuilt = result.generator.state_dict()
    assert registered.keys() == rebuilt.keys()
    for name, tensor in registered.items():
        assert torch.equal(tensor, rebuilt[name].cpu()), name
    assert compare_weights(result.generator, download_generator(model_uri)) == (True, 0.0)
    # the command line says so too
    assert cli(["reproduce", "--model-uri", model_uri, "--checkpoint", str(tmp_path / "cli")]) == 0
    assert "bit-identical to the registered generator's (max abs difference 0)" in capsys.readouterr().out


def test_a_resumed_training_is_rebuilt_stage_by_stage(trained, tmp_path):
    record = read_record("models:/calotwin-generator/2")
    assert record.stages == [2, 3] and record.config["epochs"] == 3
    result = reproduce(record, str(tmp_path / "again"))
    assert len(result.history) == 3 and result.resumed_from_epoch == 2
    assert compare_weights(result.generator, download_generator("models:/calotwin-generator/2")) == (True, 0.0)


def test_changed_or_missing_training_data_is_detected_and_named(trained, tmp_path):
    metadata, _ = trained
    record = read_record(metadata["model_uri"].value)
    verify_data(record)  # unchanged
    (store,) = record.data
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.url, copy)
    payload = json.loads(record.to_json())
    payload["data"][0]["url"] = str(copy)
    moved = ReproducibilityRecord.from_json(json.dumps(payload))
    verify_data(moved)  # a faithful copy has the same checksum
    group = zarr.open_group(str(copy), mode="r+")
    event = int(np.flatnonzero(group["split"][:] == 0)[0])  # a training event
    group["cells"][event] = group["cells"][event] + 1.0
    with pytest.raises(DataChangedError, match=f"store {copy} .*changed"):
        verify_data(moved)
    with pytest.raises(DataChangedError, match=f"store {copy} .*changed"):
        reproduce(moved, str(tmp_path / "never"))
    shutil.rmtree(copy)
    with pytest.raises(DataChangedError, match=f"store {copy} .*missing"):
        verify_data(moved)


def test_a_flow_version_records_its_family_and_is_rebuilt_bit_identically(tmp_path):
    """The flow family through flow_model: the record names the family and the particle, and rebuilds it."""
    home = tmp_path / "calotwin"
    with pytest.MonkeyPatch.context() as mp, dg.DagsterInstance.ephemeral() as instance:
        mp.setenv("CALOTWIN_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        mp.delenv("CALOTWIN_STORAGE_URL", raising=False)
        resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
        sims = [{"n_events": 600, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": SMALL, "seed": 4}]
        materialize_training_set(instance, resources, sims)
        config = {"epochs": 2, "max_steps_per_epoch": 3, "batch_size": 32, "stage2_hidden": 64, "seed": 5}
        result = dg.materialize(
            [flow_model],
            instance=instance,
            resources=resources,
            run_config={"ops": {"flow_model": {"config": config}}, **QUIET},
        )
        model_uri = result.asset_materializations_for_node("flow_model")[0].metadata["model_uri"].value
        mlflow.set_tracking_uri(default_tracking_uri())
        record = read_record(model_uri)
        assert record.family == "flow" and record.particle == "e-"
        assert record.config["stage2_hidden"] == 64 and record.config["lr"] == 1e-3
        assert ReproducibilityRecord.from_json(record.to_json()) == record
        rebuilt = reproduce(record, str(tmp_path / "again"))
        assert rebuilt.generator.family == "flow"
        assert compare_weights(rebuilt.generator, download_generator(model_uri)) == (True, 0.0)
