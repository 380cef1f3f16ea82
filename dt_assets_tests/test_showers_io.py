"""Shower I/O: zarr stores (atomic, complete or refused), 3DGAN and CaloChallenge HDF5, bad files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from dt_assets import ShowerDataError, read_hdf5, read_showers, write_hdf5, write_showers
from dt_assets.showers.store import open_store

SMALL_GRID = (15, 15, 12)


def assert_same_showers(a: xr.Dataset, b: xr.Dataset, rtol: float = 0.0) -> None:
    np.testing.assert_allclose(a.energy_deposit.values, b.energy_deposit.values, rtol=rtol, atol=1e-6 if rtol else 0)
    np.testing.assert_allclose(a.primary_energy.values, b.primary_energy.values, rtol=max(rtol, 1e-7))
    np.testing.assert_allclose(a.theta.values, b.theta.values, rtol=1e-12)
    assert np.array_equal(a.particle.values, b.particle.values)
    assert a.attrs["geometry"] == b.attrs["geometry"]


# --- zarr ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["local", "memory"])
def test_zarr_round_trip_is_exact(small_showers, tmp_path, where):
    url = str(tmp_path / "run.zarr") if where == "local" else f"memory://io-test-{tmp_path.name}/run.zarr"
    write_showers(small_showers, url, attrs={"run_key": "mc-test"})
    back = read_showers(url)
    assert_same_showers(small_showers, back)
    assert back.attrs["run_key"] == "mc-test" and back.attrs["n_events"] == 300
    assert back.attrs["sampling_fraction"] == small_showers.attrs["sampling_fraction"]
    assert back.energy_deposit.attrs["units"] == "MeV"


def test_zarr_store_is_v3_chunked_by_event_and_compressed(small_showers, tmp_path):
    import zarr

    url = str(tmp_path / "run.zarr")
    write_showers(small_showers, url)
    array = zarr.open_group(url, mode="r")["energy_deposit"]
    assert array.metadata.zarr_format == 3
    assert array.chunks == (256, *SMALL_GRID)
    raw = small_showers.energy_deposit.nbytes
    stored = sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file())
    assert stored < raw / 3  # showers are sparse


def test_streamed_write_of_blocks_equals_the_in_memory_write(small_showers, tmp_path):
    blocks = (small_showers.isel(event=slice(i, i + 100)) for i in range(0, 300, 100))
    write_showers(blocks, str(tmp_path / "streamed.zarr"))
    assert_same_showers(small_showers, read_showers(str(tmp_path / "streamed.zarr")))


def test_existing_store_is_not_overwritten_silently(small_showers, tmp_path):
    url = str(tmp_path / "run.zarr")
    write_showers(small_showers, url)
    with pytest.raises(FileExistsError, match="already exists"):
        write_showers(small_showers, url)
    write_showers(small_showers.isel(event=slice(0, 10)), url, overwrite=True)
    assert read_showers(url).sizes["event"] == 10


def _crashing_blocks(ds: xr.Dataset):
    yield ds.isel(event=slice(0, 256))
    raise RuntimeError("simulated crash during the write")


def test_crashed_local_write_leaves_no_store_and_no_debris(small_showers, tmp_path):
    url = str(tmp_path / "run.zarr")
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_showers(_crashing_blocks(small_showers), url)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ShowerDataError, match="no such store"):
        read_showers(url)


def test_crashed_local_overwrite_keeps_the_previous_store(small_showers, tmp_path):
    url = str(tmp_path / "run.zarr")
    write_showers(small_showers, url)
    with pytest.raises(RuntimeError):
        write_showers(_crashing_blocks(small_showers), url, overwrite=True)
    assert_same_showers(small_showers, read_showers(url))


def test_crashed_object_store_write_is_refused_on_read(small_showers, tmp_path):
    url = f"memory://crash-{tmp_path.name}/run.zarr"
    with pytest.raises(RuntimeError):
        write_showers(_crashing_blocks(small_showers), url)
    with pytest.raises(ShowerDataError, match="incomplete store: its write did not finish"):
        read_showers(url)


def test_store_with_a_missing_chunk_is_refused(small_showers, tmp_path):
    url = tmp_path / "run.zarr"
    write_showers(small_showers, str(url))
    chunk = next(p for p in (url / "energy_deposit" / "c").rglob("*") if p.is_file())
    chunk.unlink()  # a partial upload
    with pytest.raises(ShowerDataError, match=r"incomplete store: array 'energy_deposit' has 1 of 2 chunks"):
        read_showers(str(url))


def test_folder_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "notes.txt").write_text("hello")
    with pytest.raises(ShowerDataError, match="not a readable zarr store"):
        read_showers(str(tmp_path / "junk.zarr"))


def test_bad_data_is_refused_before_anything_is_written(small_showers, tmp_path):
    bad = small_showers.copy(deep=True)
    bad.energy_deposit.values[5, 1, 1, 1] = np.nan
    with pytest.raises(ShowerDataError, match=r"NaN \(first in event 5\)"):
        write_showers(bad, str(tmp_path / "bad.zarr"))
    assert not (tmp_path / "bad.zarr").exists()


def test_lazily_opened_store_reads_only_what_is_asked(small_showers, tmp_path):
    url = str(tmp_path / "run.zarr")
    write_showers(small_showers, url)
    ds = open_store(url)
    assert not ds.energy_deposit.variable._in_memory
    part = ds.energy_deposit.isel(event=slice(10, 20)).values
    np.testing.assert_array_equal(part, small_showers.energy_deposit.values[10:20])


# --- HDF5 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["3dgan", "calochallenge"])
def test_hdf5_round_trip(small_showers, tmp_path, layout):
    path = str(tmp_path / f"showers_{layout}.h5")
    write_hdf5(small_showers, path, layout=layout)
    back = read_hdf5(path)
    assert_same_showers(small_showers, back, rtol=1e-6)
    assert back.attrs["source_layout"] == layout and len(back.attrs["source_sha256"]) == 64


def test_hdf5_on_an_fsspec_url(small_showers, tmp_path):
    url = f"memory://h5-{tmp_path.name}/showers.h5"
    write_hdf5(small_showers, url, layout="3dgan")
    assert_same_showers(small_showers, read_hdf5(url), rtol=1e-6)


def test_3dgan_file_holds_the_reference_keys_in_gev(small_showers, tmp_path):
    path = tmp_path / "g.h5"
    write_hdf5(small_showers, str(path), layout="3dgan")
    with h5py.File(path) as h5:
        assert h5["ECAL"].shape == (300, *SMALL_GRID)
        assert h5["ECAL"].attrs["units"] == "GeV"
        np.testing.assert_allclose(h5["ECAL"][:].sum(), small_showers.energy_deposit.values.sum() / 1e3, rtol=1e-5)
        np.testing.assert_allclose(h5["energy"][:], small_showers.primary_energy.values, rtol=1e-6)


def test_calochallenge_file_holds_flat_showers_in_mev(small_showers, tmp_path):
    path = tmp_path / "c.h5"
    write_hdf5(small_showers, str(path), layout="calochallenge")
    with h5py.File(path) as h5:
        assert h5["showers"].shape == (300, 15 * 15 * 12)
        assert h5["incident_energies"].shape == (300, 1)
        np.testing.assert_allclose(h5["incident_energies"][:, 0], small_showers.primary_energy.values * 1e3)


def write_raw_3dgan(path: Path, n: int = 20, grid=SMALL_GRID, **overrides) -> Path:
    """A 3DGAN-layout file written with plain h5py, as an external producer would; overrides replace keys."""
    rng = np.random.default_rng(0)
    data = {
        "ECAL": rng.exponential(1e-3, (n, *grid)).astype(np.float32),
        "energy": rng.uniform(10, 100, n),
        "theta": rng.uniform(1.1, 2.0, n),
    }
    data.update(overrides)
    with h5py.File(path, "w") as h5:
        for key, value in data.items():
            if value is not None:
                h5.create_dataset(key, data=value)
    return path


def test_external_3dgan_file_without_geometry_maps_to_the_preset_of_its_grid(tmp_path):
    ds = read_hdf5(str(write_raw_3dgan(tmp_path / "ext.h5")))
    assert ds.attrs["geometry"] == "small_ecal_15x15x12"
    assert ds.energy_deposit.values.max() > 0.5  # GeV -> MeV


def test_old_3dgan_files_with_eta_get_theta(tmp_path):
    eta = np.linspace(-0.5, 0.5, 20)
    ds = read_hdf5(str(write_raw_3dgan(tmp_path / "eta.h5", theta=None, eta=eta)))
    np.testing.assert_allclose(ds.theta.values, 2 * np.arctan(np.exp(-eta)))
    assert abs(ds.theta.values[10] - np.pi / 2) < 0.03


def test_calochallenge_file_without_angle_is_normal_incidence(tmp_path):
    path = tmp_path / "cc.h5"
    with h5py.File(path, "w") as h5:
        h5["showers"] = np.ones((4, 15 * 15 * 12), dtype=np.float32)
        h5["incident_energies"] = np.full((4, 1), 50e3)
    ds = read_hdf5(str(path), particle="gamma")
    np.testing.assert_allclose(ds.theta.values, np.pi / 2)
    np.testing.assert_allclose(ds.primary_energy.values, 50.0)
    assert (ds.particle.values == 22).all()


def _nan(path):
    ecal = np.zeros((20, *SMALL_GRID), np.float32)
    ecal[3, 0, 0, 0] = np.nan
    return write_raw_3dgan(path, ECAL=ecal)


def _inf(path):
    ecal = np.zeros((20, *SMALL_GRID), np.float32)
    ecal[3, 0, 0, 0] = np.inf
    return write_raw_3dgan(path, ECAL=ecal)


def _negative(path):
    ecal = np.zeros((20, *SMALL_GRID), np.float32)
    ecal[7, 2, 2, 2] = -1.0
    return write_raw_3dgan(path, ECAL=ecal)


def _truncated(path):
    write_raw_3dgan(path, n=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _cc_wrong_voxels(path):
    with h5py.File(path, "w") as h5:
        h5["showers"] = np.ones((4, 368), dtype=np.float32)
        h5["incident_energies"] = np.full((4, 1), 50e3)
    return path


BAD_FILES = {
    "empty file": (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
    "not HDF5": (lambda p: (p.write_bytes(b"this is a text file, not HDF5\n" * 50), p)[1], "not a readable HDF5 file"),
    "truncated": (_truncated, "truncated"),
    "no shower key": (lambda p: write_raw_3dgan(p, ECAL=None), "neither 'ECAL'"),
    "no energy key": (lambda p: write_raw_3dgan(p, energy=None), "missing key 'energy'"),
    "no angle key": (lambda p: write_raw_3dgan(p, theta=None), "none of 'theta', 'eta', 'mtheta'"),
    "wrong grid": (lambda p: write_raw_3dgan(p, grid=(10, 10, 10)), "wrong shape"),
    "wrong rank": (lambda p: write_raw_3dgan(p, ECAL=np.zeros((20, 15, 15))), r"expected \(N, n_x, n_y, n_layers\)"),
    "NaN": (_nan, r"NaN \(first in event 3\)"),
    "inf": (_inf, r"inf \(first in event 3\)"),
    "negative deposit": (_negative, r"negative values \(first in event 7\)"),
    "mismatched lengths": (
        lambda p: write_raw_3dgan(p, energy=np.ones(19)),
        "mismatched lengths: 19 energy values for 20",
    ),
    "negative primary energy": (
        lambda p: write_raw_3dgan(p, energy=-np.ones(20)),
        r"primary_energy has 20 value\(s\) <= 0",
    ),
    "theta in degrees": (lambda p: write_raw_3dgan(p, theta=np.full(20, 90.0)), "theta outside"),
    "calochallenge voxels": (_cc_wrong_voxels, "no geometry preset has 368 cells"),
    "no events": (lambda p: write_raw_3dgan(p, n=0), "contains no events"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_raises_one_error_type_naming_file_and_problem(tmp_path, case):
    make, problem = BAD_FILES[case]
    path = make(tmp_path / "bad.h5")
    with pytest.raises(ShowerDataError, match=problem) as info:
        read_hdf5(str(path))
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ShowerDataError, match="no such file"):
        read_hdf5(str(tmp_path / "absent.h5"))
