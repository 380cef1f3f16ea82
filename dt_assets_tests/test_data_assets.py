"""The Dagster layer: the pinned graph, run registration, raw_showers with its checks, storage."""

from __future__ import annotations

import json

import dagster as dg
import h5py
import numpy as np
import pytest

from dt_assets import read_showers, write_hdf5
from dt_assets.definitions import defs
from dt_assets.defs.data import raw_showers, simulation_runs
from dt_assets.defs.model import gan_model
from dt_assets.defs.pipeline import materialize_training_set
from dt_assets.defs.preprocess import training_set
from resources import LocalStorage, ObjectStorage, storage_from_env

SMALL_RUN = {
    "n_events": 300,
    "energy_min_gev": 10.0,
    "energy_max_gev": 100.0,
    "geometry": "small_ecal_15x15x12",
    "seed": 5,
}


def register(instance, storage, simulations=(), import_files=()):
    config = {"simulations": list(simulations), "import_files": list(import_files)}
    result = dg.materialize(
        [simulation_runs],
        run_config={"ops": {"simulation_runs": {"config": config}}},
        instance=instance,
        resources={"storage": storage},
    )
    table = result.asset_materializations_for_node("simulation_runs")[0].metadata["runs"].value
    return [row.data["run"] for row in table.records]


def ingest(instance, storage, key, raise_on_error=True):
    return dg.materialize(
        [raw_showers],
        partition_key=key,
        instance=instance,
        resources={"storage": storage},
        raise_on_error=raise_on_error,
    )


def test_definitions_load_with_the_pinned_graph():
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "simulation_runs",
        "raw_showers",
        "preprocessed_showers",
        "training_set",
        "hpo_study",
        "gan_model",
        "flow_model",
        "tuned_model",
        "mc_reference",
        "generated_showers",
        "validation_report",
        "champion_model",
        "speed_benchmark",
        "exported_generator",
        "quarantined_files",
    }
    assert {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys} == {
        ("raw_showers", "schema_and_units"),
        ("raw_showers", "finite_non_negative"),
        ("raw_showers", "sampling_fraction_consistency"),
        ("validation_report", "coverage_gate"),
        ("validation_report", "fpd_gate"),
        ("validation_report", "kpd_gate"),
        ("validation_report", "classifier_auc_gate"),
    }
    lineage = {
        "raw_showers": {"simulation_runs"},
        "preprocessed_showers": {"raw_showers"},
        "training_set": {"preprocessed_showers"},
        "hpo_study": {"training_set"},
        "gan_model": {"training_set"},  # hpo_study only upstream of the training that uses its parameters
        "flow_model": {"training_set"},
        "tuned_model": {"training_set", "hpo_study"},
        "generated_showers": {"mc_reference", "gan_model", "flow_model", "tuned_model"},
        "validation_report": {"generated_showers", "mc_reference"},
        "champion_model": {"validation_report"},
        "speed_benchmark": {"gan_model", "flow_model", "tuned_model"},
        "exported_generator": {"champion_model"},
    }
    for child, parents in lineage.items():
        assert {k.to_user_string() for k in graph.get(dg.AssetKey(child)).parent_keys} == parents, child
    for partitioned in ("raw_showers", "preprocessed_showers"):
        assert graph.get(dg.AssetKey(partitioned)).partitions_def.name == "simulation_runs"
    assert {j.name for j in repo.get_all_jobs()} - {"__ASSET_JOB"} == {
        "register_runs",
        "land_files",
        "ingest_runs",
        "train_gan",
        "train_flow",
        "train_tuned",
        "validate_and_promote",
        "validate_model",
        "promote_champion",
    }
    # schedules and sensors exist and are off until a user turns them on (make ui / make twin turn the loop on)
    assert {s.name: s.default_status for s in repo.schedule_defs} == {
        "nightly_revalidation": dg.DefaultScheduleStatus.STOPPED,
        "weekly_full_retraining": dg.DefaultScheduleStatus.STOPPED,
    }
    assert {s.name: s.default_status for s in repo.sensor_defs} == {
        name: dg.DefaultSensorStatus.STOPPED
        for name in (
            "default_automation_condition_sensor",  # evaluates raw_showers' on_missing() condition
            "landing_sensor",
            "ingest_after_landing",
            "ingest_after_failed_landing",
            "retrain_sensor",
            "validate_after_training",
            "promote_after_validation",
            "promote_after_failed_validation",
        )
    }
    pools = [graph.get(dg.AssetKey(key)).pools for key in ("gan_model", "flow_model", "tuned_model", "hpo_study")]
    assert pools == [{"training"}] * 4
    assert set(defs.resources) == {"storage", "compute", "mlflow", "registry"}
    assert type(defs.resources["compute"]).__name__ == "LocalCompute"  # no compute.yaml: in-process
    assert gan_model.required_resource_keys >= {"compute", "storage", "mlflow"}


def test_registering_the_same_run_twice_makes_one_partition(home, instance):
    storage = LocalStorage()
    first = register(instance, storage, [SMALL_RUN])
    again = register(instance, storage, [SMALL_RUN, {**SMALL_RUN, "seed": 6}])
    assert first[0] == again[0] and again[0] != again[1]
    assert sorted(instance.get_dynamic_partitions("simulation_runs")) == sorted(again)
    spec = json.loads((home / "data" / "runs" / f"{first[0]}.json").read_text())
    assert spec["kind"] == "simulation" and spec["seed"] == 5


def test_raw_showers_writes_the_run_with_metadata_and_passing_checks(home, instance):
    storage = LocalStorage()
    (key,) = register(instance, storage, [SMALL_RUN])
    result = ingest(instance, storage, key)
    metadata = result.asset_materializations_for_node("raw_showers")[0].metadata
    assert metadata["events"].value == 300
    assert metadata["bytes_on_disk"].value > 0
    assert metadata["mean_longitudinal_profile"].value.startswith("![mean longitudinal profile](data:image/png;base64,")
    assert 0.9 < metadata["mean_visible_over_expected"].value < 1.02
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {"schema_and_units", "finite_non_negative", "sampling_fraction_consistency"}
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
    stored = read_showers(str(home / "data" / "raw" / f"{key}.zarr"))
    assert stored.sizes["event"] == 300 and stored.attrs["run_key"] == key
    assert stored.attrs["geometry"] == "small_ecal_15x15x12"


def test_importing_a_file_becomes_a_checksum_keyed_run(home, instance, small_showers, tmp_path):
    storage = LocalStorage()
    path = tmp_path / "geant4_like.h5"
    write_hdf5(small_showers, str(path), layout="3dgan")
    (key,) = register(instance, storage, import_files=[{"path": str(path)}])
    assert key.startswith("file-")
    copy = tmp_path / "same_bytes.h5"
    copy.write_bytes(path.read_bytes())
    assert register(instance, storage, import_files=[{"path": str(copy)}]) == [key]
    ingest(instance, storage, key)
    stored = read_showers(str(home / "data" / "raw" / f"{key}.zarr"))
    np.testing.assert_allclose(stored.energy_deposit.values, small_showers.energy_deposit.values, rtol=1e-6, atol=1e-6)
    assert stored.attrs["source_layout"] == "3dgan" and stored.attrs["source_file"] == str(path)
    assert path.exists()  # inputs are never deleted


def test_energy_that_disagrees_with_the_sampling_fraction_fails_its_blocking_check(home, instance, tmp_path):
    """A file whose cells are in MeV but claims GeV (a 1000x unit slip) is caught by the check."""
    storage = LocalStorage()
    path = tmp_path / "units_slip.h5"
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as h5:
        h5["ECAL"] = rng.exponential(0.01, (40, 15, 15, 12)).astype(np.float32)  # ~20 GeV visible per 50 GeV shower
        h5["energy"] = np.full(40, 50.0)
        h5["theta"] = np.full(40, np.pi / 2)
    (key,) = register(instance, storage, import_files=[{"path": str(path)}])
    result = ingest(instance, storage, key, raise_on_error=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["sampling_fraction_consistency"].passed
    assert checks["sampling_fraction_consistency"].metadata["mean_visible_over_expected"].value > 10
    assert checks["schema_and_units"].passed and checks["finite_non_negative"].passed


def test_unregistered_partition_fails_with_instructions(home, instance):
    instance.add_dynamic_partitions("simulation_runs", ["mc-0000000000-0"])
    result = ingest(instance, LocalStorage(), "mc-0000000000-0", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "no run spec registered for partition 'mc-0000000000-0'" in failure
    assert "materialize simulation_runs" in failure


def test_bad_launchpad_config_names_the_field(home, instance):
    with pytest.raises(Exception, match="energy range reversed"):
        register(instance, LocalStorage(), [{**SMALL_RUN, "energy_min_gev": 200.0}])
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"geometry not in enum type .* got atlas"):
        register(instance, LocalStorage(), [{**SMALL_RUN, "geometry": "atlas"}])
    with pytest.raises(Exception, match="n_events"):
        register(instance, LocalStorage(), [{**SMALL_RUN, "n_events": -5}])


def test_new_runs_are_requested_by_declarative_automation(home, instance):
    """raw_showers is on_missing(): a run registered after the automation started is ingested once."""
    storage = LocalStorage()
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    (key,) = register(instance, storage, [SMALL_RUN])
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    assert after.get_requested_partitions(dg.AssetKey("raw_showers")) == {key}
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
    assert again.total_requested == 0  # requested once, not on every tick


def test_object_storage_holds_the_same_layout(home, instance):
    storage = ObjectStorage(url_prefix=f"memory://calotwin-{home.parent.name}")
    (key,) = register(instance, storage, [{**SMALL_RUN, "n_events": 50}])
    result = ingest(instance, storage, key)
    assert all(c.passed for c in result.get_asset_check_evaluations())
    ds = read_showers(storage.raw_showers_url(key))
    assert ds.sizes["event"] == 50
    assert storage.raw_showers_url(key) == f"memory://calotwin-{home.parent.name}/data/raw/{key}.zarr"


def test_storage_is_chosen_by_environment(monkeypatch, home):
    assert isinstance(storage_from_env(), LocalStorage)
    assert storage_from_env().root_url() == str(home)
    monkeypatch.setenv("CALOTWIN_STORAGE_URL", "s3://bucket/calotwin")
    chosen = storage_from_env()
    assert isinstance(chosen, ObjectStorage) and chosen.url("data") == "s3://bucket/calotwin/data"


def test_each_training_set_keeps_its_own_manifest_and_hands_it_on(home, instance):
    # the manifest is named by its content and its URL handed on in the materialization: a training that was handed
    # the first set reads the first set, even after a second one (no "latest" file that the next overwrites)
    storage = LocalStorage()
    paths = []
    for seed in (1, 2):
        materialize_training_set(instance, {"storage": storage}, [{**SMALL_RUN, "n_events": 100, "seed": seed}])
        event = instance.get_latest_materialization_event(training_set.key)
        paths.append(event.asset_materialization.metadata["path"].value)
    first, second = (storage.read_json(path) for path in paths)
    assert paths[0] != paths[1] and paths[0].startswith(storage.url("data", "training_sets"))
    assert [len(m["geometries"][SMALL_RUN["geometry"]]["runs"]) for m in (first, second)] == [1, 2]
