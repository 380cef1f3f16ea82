"""Run keys are stable: the same config and seed, or the same bytes, are one run."""

from __future__ import annotations

import shutil

import pytest

from dt_assets import write_hdf5
from dt_assets.runs import FileSpec, SimulationSpec, file_spec, spec_from_dict


def test_same_config_and_seed_give_the_same_key():
    a = SimulationSpec(n_events=100, energy_gev=(10, 100), seed=3)
    b = SimulationSpec(n_events=100, energy_gev=(10.0, 100.0), particle="electron", seed=3)
    assert a.key == b.key
    assert a.key.startswith("mc-") and a.key.endswith("-3")


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 4},
        {"n_events": 101},
        {"energy_gev": (10, 99)},
        {"particle": "gamma"},
        {"geometry": "clic_ecal_25x25x25"},
    ],
)
def test_anything_that_changes_the_data_changes_the_key(change):
    base = {"n_events": 100, "energy_gev": (10, 100), "seed": 3}
    assert SimulationSpec(**base).key != SimulationSpec(**{**base, **change}).key


def test_spec_round_trips_through_its_dict():
    spec = SimulationSpec(n_events=10, energy_gev=(20, 30), theta_deg=(80, 100), particle="gamma", seed=2)
    assert spec_from_dict(spec.to_dict()) == spec
    f = FileSpec(url="/x.h5", sha256="ab" * 32, layout="3dgan")
    assert spec_from_dict(f.to_dict()) == f


def test_same_bytes_under_another_name_are_the_same_run(small_showers, tmp_path):
    first = tmp_path / "a.h5"
    write_hdf5(small_showers, str(first))
    second = tmp_path / "renamed_copy.h5"
    shutil.copy(first, second)
    assert file_spec(str(first)).key == file_spec(str(second)).key
    assert file_spec(str(first)).layout == "3dgan"
    write_hdf5(small_showers.isel(event=slice(0, 10)), str(tmp_path / "other.h5"))
    assert file_spec(str(tmp_path / "other.h5")).key != file_spec(str(first)).key


def test_file_changed_after_registration_is_refused(small_showers, tmp_path):
    path = tmp_path / "a.h5"
    write_hdf5(small_showers, str(path))
    spec = file_spec(str(path))
    write_hdf5(small_showers.isel(event=slice(0, 10)), str(path))
    with pytest.raises(ValueError, match="file changed since it was registered"):
        next(spec.blocks())


def test_reversed_range_in_a_spec_is_named():
    with pytest.raises(ValueError, match="energy_gev range is reversed"):
        SimulationSpec(energy_gev=(100, 10))
