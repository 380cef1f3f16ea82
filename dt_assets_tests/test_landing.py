"""The landing area: when entries are ready, bad input quarantined intact, good data accepted by checksum."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
import xarray as xr

from conftest import SMALL
from dt_assets import simulate, write_hdf5, write_showers
from dt_assets.landing import Accepted, Landing, LandingChecks, Quarantined, areas, safe_name, sanitized
from dt_assets.physics.geometry import get_geometry
from dt_assets.runs import zarr_checksum
from dt_assets.showers.store import write_blocks

GRID = (15, 15, 12)


@pytest.fixture(scope="module")
def showers() -> xr.Dataset:
    return simulate(40, (10.0, 100.0), (60.0, 120.0), "e-", geometry=SMALL, seed=5)


@pytest.fixture
def landing_dir(tmp_path: Path) -> Path:
    path = tmp_path / "landing"
    path.mkdir()
    return path


@pytest.fixture
def area(tmp_path: Path, landing_dir: Path) -> Landing:
    return Landing(str(landing_dir), str(tmp_path / "accepted"), str(tmp_path / "quarantine"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(path: str | Path) -> object:
    """What must survive a move unchanged: a link's target, a file's bytes, a folder's files."""
    path = str(path)
    if os.path.islink(path):
        return ("link", os.readlink(path))
    if os.path.isdir(path):
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}
    return Path(path).read_bytes()


def ready_after_two_scans(area: Landing) -> list:
    _, observed = area.scan()
    ready, _ = area.scan(observed)
    return ready


def only_entry(area: Landing, name: str):
    ready = ready_after_two_scans(area)
    assert [e.name for e in ready] == [name]
    return ready[0]


def write_raw_3dgan(path: Path, n: int = 20, ecal_units: str | None = None, **overrides) -> None:
    """A 3DGAN file written with plain h5py, as an external producer would; overrides replace keys (None drops)."""
    rng = np.random.default_rng(0)
    data = {
        "ECAL": rng.exponential(1e-3, (n, *GRID)).astype(np.float32),  # about 2.7 GeV per event
        "energy": rng.uniform(10.0, 100.0, n),
        "theta": rng.uniform(1.1, 2.0, n),  # 63-115 deg
    }
    data.update(overrides)
    with h5py.File(path, "w") as h5:
        for key, value in data.items():
            if value is not None:
                h5.create_dataset(key, data=value)
        if ecal_units is not None:
            h5["ECAL"].attrs["units"] = ecal_units


def ecal_with(value: float, event: int = 12) -> np.ndarray:
    ecal = np.random.default_rng(1).exponential(1e-3, (20, *GRID)).astype(np.float32)
    ecal[event, 3, 4, 5] = value
    return ecal


def good_h5_bytes(showers: xr.Dataset, tmp_path: Path) -> bytes:
    path = tmp_path / "good-source.h5"
    write_hdf5(showers, str(path), layout="3dgan")
    return path.read_bytes()


# Each builder puts one bad entry in the landing folder and returns its name.
Builder = Callable[[Path, Path, xr.Dataset], str]


def _raw(name: str, **kw) -> Builder:
    def build(landing: Path, tmp: Path, ds: xr.Dataset) -> str:
        write_raw_3dgan(landing / name, **kw)
        return name

    return build


def _bytes(name: str, make: Callable[[bytes], bytes]) -> Builder:
    def build(landing: Path, tmp: Path, ds: xr.Dataset) -> str:
        (landing / name).write_bytes(make(good_h5_bytes(ds, tmp)))
        return name

    return build


def _symlink_outside(landing: Path, tmp: Path, ds: xr.Dataset) -> str:
    secret = tmp / "outside" / "secret.h5"
    secret.parent.mkdir()
    secret.write_bytes(good_h5_bytes(ds, tmp))
    os.symlink(secret, landing / "link.h5")
    return "link.h5"


def _plain_folder(landing: Path, tmp: Path, ds: xr.Dataset) -> str:
    (landing / "data.h5").mkdir()
    (landing / "data.h5" / "part0").write_bytes(b"some bytes")
    return "data.h5"


def _zarr_missing_chunk(landing: Path, tmp: Path, ds: xr.Dataset) -> str:
    write_showers(ds, str(landing / "run.zarr"))
    next(p for p in (landing / "run.zarr" / "energy_deposit" / "c").rglob("*") if p.is_file()).unlink()
    return "run.zarr"


def _zarr_with_nan(landing: Path, tmp: Path, ds: xr.Dataset) -> str:
    bad = ds.copy(deep=True)
    bad.energy_deposit.values[7, 1, 2, 3] = np.nan
    write_blocks(bad, str(landing / "nan.zarr"), validate=None)  # a producer that does not check
    return "nan.zarr"


def _zarr_not_a_store(landing: Path, tmp: Path, ds: xr.Dataset) -> str:
    (landing / "junk.zarr").mkdir()
    (landing / "junk.zarr" / "notes.txt").write_text("not a store")
    return "junk.zarr"


def _hdf5_reaching_out(kind: str) -> Builder:
    """A 3DGAN file that looks good but whose ECAL (or an extra object) reaches outside the file."""

    def build(landing: Path, tmp: Path, ds: xr.Dataset) -> str:
        source = tmp / "elsewhere.h5"
        with h5py.File(source, "w") as h5:
            h5["d"] = np.full((20, *GRID), 1e-3, np.float32)
        name = f"{kind}.h5"
        write_raw_3dgan(landing / name, ECAL=None)
        with h5py.File(landing / name, "a") as h5:
            if kind == "virtual":
                layout = h5py.VirtualLayout(shape=(20, *GRID), dtype=np.float32)
                layout[:] = h5py.VirtualSource(str(source), "d", shape=(20, *GRID))
                h5.create_virtual_dataset("ECAL", layout, fillvalue=0)
            elif kind == "external_storage":
                (tmp / "raw.bin").write_bytes(np.full((20, *GRID), 1e-3, np.float32).tobytes())
                h5.create_dataset("ECAL", (20, *GRID), np.float32, external=[(str(tmp / "raw.bin"), 0, 20 * 2700 * 4)])
            elif kind == "external_link":
                h5["ECAL"] = h5py.ExternalLink(str(source), "d")
            elif kind == "soft_link_out":
                h5["ECAL"] = np.full((20, *GRID), 1e-3, np.float32)
                h5["elsewhere"] = h5py.ExternalLink(str(source), "d")
                h5["alias"] = h5py.SoftLink("/elsewhere")
            else:  # a Zstandard-filtered dataset (filter 32015): needs a plugin from the reading machine
                h5.create_dataset(
                    "ECAL", data=np.full((20, *GRID), 1e-3, np.float32), compression=32015, allow_unknown_filter=True
                )
        return name

    return build


BAD_INPUTS = {
    # id: (builder, check, a substring of the reason)
    "empty_file": (_bytes("empty.h5", lambda good: b""), "empty", "empty file (0 bytes)"),
    "truncated_hdf5": (_bytes("half.h5", lambda good: good[: len(good) // 2]), "unreadable", "truncated"),
    "not_hdf5": (_bytes("zip.h5", lambda good: b"PK\x03\x04 a zip file"), "unreadable", "not a readable HDF5 file"),
    "wrong_keys": (_raw("keys.h5", ECAL=None, energy=None, theta=None, foo=np.ones(3)), "bad_content", "missing key"),
    "wrong_shape": (_raw("shape.h5", ECAL=np.ones((20, 7, 7, 3), np.float32)), "bad_content", "wrong shape"),
    "nan": (_raw("nan.h5", ECAL=ecal_with(np.nan)), "bad_content", "NaN (first in event 12)"),
    "inf": (_raw("inf.h5", ECAL=ecal_with(np.inf)), "bad_content", "inf (first in event 12)"),
    "negative": (_raw("neg.h5", ECAL=ecal_with(-1.0)), "bad_content", "negative values (first in event 12)"),
    "mismatched_lengths": (_raw("len.h5", energy=np.full(19, 50.0)), "bad_content", "mismatched lengths"),
    "theta_in_degrees": (_raw("deg.h5", theta=np.full(20, 90.0)), "bad_content", "is it in degrees?"),
    "energy_out_of_range": (
        _raw("hot.h5", energy=np.r_[np.full(3, 50.0), 5000.0, np.full(16, 50.0)]),
        "out_of_range",
        "primary energy 5000 GeV in event 3 is outside the allowed range 1-500 GeV",
    ),
    "theta_out_of_range": (
        _raw("steep.h5", theta=np.r_[np.full(4, 1.5), math.radians(30.0), np.full(15, 1.5)]),
        "out_of_range",
        "theta 30 deg in event 4 is outside the allowed range 60-120 deg",
    ),
    "deposits_exceed_primary": (
        _raw("mev.h5", ECAL=ecal_with(0.0) * 1000, ecal_units="GeV"),
        "out_of_range",
        "more than its primary energy",
    ),
    "unsupported_type": (_bytes("notes.txt", lambda good: b"hello"), "unsupported_type", "accepted are HDF5 files"),
    "folder_not_zarr": (_plain_folder, "unsupported_type", "directory named 'data.h5'"),
    "symlink_outside": (_symlink_outside, "symlink_outside", "outside the landing area"),
    "traversal_name": (_bytes("..\\..\\evil.h5", lambda good: good), "unsafe_name", "path traversal"),
    "double_dot_name": (_bytes("a..b.h5", lambda good: good), "unsafe_name", "'a..b.h5'"),
    "newline_name": (_bytes("new\nline.h5", lambda good: good), "unsafe_name", "'new\\nline.h5'"),
    "zarr_missing_chunk": (_zarr_missing_chunk, "unreadable", "incomplete store"),
    "zarr_with_nan": (_zarr_with_nan, "bad_content", "NaN (first in event 7)"),
    "zarr_not_a_store": (_zarr_not_a_store, "unreadable", "not a readable zarr store"),
    "virtual_dataset": (_hdf5_reaching_out("virtual"), "unsafe_hdf5", "'/ECAL' is a virtual dataset"),
    "external_storage": (_hdf5_reaching_out("external_storage"), "unsafe_hdf5", "keeps its bytes in external file"),
    "external_link": (_hdf5_reaching_out("external_link"), "unsafe_hdf5", "'/ECAL' is an external link"),
    "soft_link_out": (_hdf5_reaching_out("soft_link_out"), "unsafe_hdf5", "external link"),
    "filter_plugin": (_hdf5_reaching_out("filter_plugin"), "unsafe_hdf5", "needs filter 32015"),
    "showers_without_energy": (
        _raw("blank.h5", ECAL=np.zeros((20, *GRID), np.float32)),
        "no_energy",
        "20 of 20 showers (100.0%) carry no visible energy",
    ),
    "some_showers_without_energy": (
        _raw("holes.h5", ECAL=ecal_with(0.0) * (np.arange(20) % 4 > 0)[:, None, None, None]),
        "no_energy",
        "5 of 20 showers",
    ),
    "total_not_visible_energy": (
        _raw("total.h5", ECAL=np.full((20, *GRID), 0.015, np.float32), energy=np.full(20, 50.0)),
        "bad_response",
        "mean visible fraction E_sum/E_p 0.81",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_is_quarantined_intact_with_its_reason(kind, area, landing_dir, tmp_path, showers):
    build, check, reason = BAD_INPUTS[kind]
    name = build(landing_dir, tmp_path, showers)
    before = fingerprint(landing_dir / name)
    was_file = not os.path.islink(landing_dir / name) and (landing_dir / name).is_file()

    result = area.process(only_entry(area, name))

    assert isinstance(result, Quarantined), result
    assert (result.check, result.name) == (check, name)
    assert reason in result.reason
    assert os.listdir(landing_dir) == []
    assert Path(result.url).parent == tmp_path / "quarantine"
    assert fingerprint(result.url) == before
    assert result.sha256 == (sha256(before) if was_file else None)
    sidecar = json.loads(Path(result.sidecar_url).read_text())
    assert sidecar["original_name"] == name and sidecar["reason"] == result.reason and sidecar["check"] == check
    assert sidecar["sha256"] == result.sha256 and sidecar["size"] == result.size
    if kind == "symlink_outside":
        assert os.path.islink(result.url) and sidecar["kind"] == "symlink"
        assert sidecar["link_target"] == str(tmp_path / "outside" / "secret.h5")
        assert (tmp_path / "outside" / "secret.h5").read_bytes() == good_h5_bytes(showers, tmp_path)
    assert area.quarantined()[0]["original_name"] == name


@pytest.mark.parametrize("layout", ["3dgan", "calochallenge"])
def test_good_hdf5_is_accepted_under_its_checksum_key(layout, area, landing_dir, tmp_path, showers):
    write_hdf5(showers, str(landing_dir / "run_a.h5"), layout=layout)
    digest = sha256((landing_dir / "run_a.h5").read_bytes())

    result = area.process(only_entry(area, "run_a.h5"))

    assert isinstance(result, Accepted), result
    assert result.key == f"file-{digest[:12]}" and not result.duplicate and result.n_events == 40
    assert Path(result.spec.url) == tmp_path / "accepted" / result.key / "run_a.h5"
    assert (result.spec.layout, result.spec.geometry, result.spec.sha256) == (layout, SMALL, digest)
    assert os.listdir(landing_dir) == [] and not (tmp_path / "quarantine").exists()
    back = xr.concat(list(result.spec.blocks()), dim="event")
    np.testing.assert_allclose(back.primary_energy.values, showers.primary_energy.values, rtol=1e-6)
    np.testing.assert_allclose(back.energy_deposit.values, showers.energy_deposit.values, rtol=1e-5, atol=1e-6)


def test_zarr_store_is_accepted_under_its_checksum_key(area, landing_dir, tmp_path, showers):
    write_showers(showers, str(landing_dir / "run.zarr"))
    digest = zarr_checksum(str(landing_dir / "run.zarr"))

    result = area.process(only_entry(area, "run.zarr"))

    assert isinstance(result, Accepted), result
    assert result.key == f"file-{digest[:12]}" and result.spec.layout == "zarr" and result.n_events == 40
    assert Path(result.spec.url) == tmp_path / "accepted" / result.key / "run.zarr"
    assert os.listdir(landing_dir) == []
    back = xr.concat(list(result.spec.blocks()), dim="event")
    np.testing.assert_array_equal(back.energy_deposit.values, showers.energy_deposit.values)


def test_same_bytes_under_any_name_are_one_key_and_every_copy_is_kept(area, landing_dir, tmp_path, showers):
    good = good_h5_bytes(showers, tmp_path)
    (landing_dir / "a.h5").write_bytes(good)
    (landing_dir / "b.h5").write_bytes(good)
    first, second = (area.process(e) for e in ready_after_two_scans(area))
    assert first.key == second.key == f"file-{sha256(good)[:12]}"
    assert (first.duplicate, second.duplicate) == (False, True)

    (landing_dir / "a.h5").write_bytes(good)  # the same file landed again under the same name
    third = area.process(only_entry(area, "a.h5"))
    assert third.duplicate and Path(third.spec.url).name == "a.h5.1"
    folder = tmp_path / "accepted" / first.key
    assert sorted(os.listdir(folder)) == ["a.h5", "a.h5.1", "b.h5"]
    assert all((folder / n).read_bytes() == good for n in os.listdir(folder))


def test_entry_is_ready_once_its_size_and_mtime_stop_changing(area, landing_dir, tmp_path, showers):
    good = good_h5_bytes(showers, tmp_path)
    (landing_dir / "growing.h5").write_bytes(good[:1000])
    ready, observed = area.scan()
    assert ready == [] and observed == {"growing.h5": [1000.0, (landing_dir / "growing.h5").stat().st_mtime]}

    with open(landing_dir / "growing.h5", "ab") as handle:
        handle.write(good[1000:])
    ready, observed = area.scan(observed)
    assert ready == [] and observed["growing.h5"][0] == len(good)

    ready, observed = area.scan(observed)
    assert [e.name for e in ready] == ["growing.h5"] and observed == {}
    assert ready[0].size == len(good) and not ready[0].has_marker
    assert isinstance(area.process(ready[0]), Accepted)


def test_done_marker_makes_an_entry_ready_at_once_and_travels_with_it(area, landing_dir, tmp_path, showers):
    (landing_dir / "m.h5").write_bytes(good_h5_bytes(showers, tmp_path))
    (landing_dir / "m.h5.done").write_text("")
    ready, observed = area.scan()
    assert [(e.name, e.has_marker) for e in ready] == [("m.h5", True)] and observed == {}

    result = area.process(ready[0])
    assert isinstance(result, Accepted)
    assert (Path(result.spec.url).parent / "m.h5.done").exists()
    assert os.listdir(landing_dir) == []


def test_temporary_hidden_and_marker_files_are_ignored_links_are_ready_at_once_unsafe_names_settle(
    area, landing_dir, tmp_path
):
    for name in ("up.h5.part", "dl.h5.crdownload", "x.h5.TMP", ".up.h5.Xy12ab", "orphan.h5.done"):
        (landing_dir / name).write_bytes(b"in progress")
    (landing_dir / "..sneaky.h5").write_bytes(b"x")
    (tmp_path / "elsewhere.h5").write_bytes(b"y")
    os.symlink(tmp_path / "elsewhere.h5", landing_dir / "link.h5")

    ready, observed = area.scan()
    assert [e.name for e in ready] == ["link.h5"] and ready[0].is_link
    # an unsafe name is quarantined once its upload is complete; temporary names are observed (to see their rename)
    assert sorted(observed) == ["..sneaky.h5", "dl.h5.crdownload", "up.h5.part", "x.h5.TMP"]
    ready, _ = area.scan(observed)
    assert [e.name for e in ready] == ["..sneaky.h5", "link.h5"]


def test_an_entry_renamed_from_a_temporary_name_the_last_scan_saw_is_ready_at_once(area, landing_dir):
    (landing_dir / "run.h5.part").write_bytes(b"uploading")
    (landing_dir / "other.h5").write_bytes(b"new")
    _, observed = area.scan()
    (landing_dir / "run.h5.part").rename(landing_dir / "run.h5")
    (landing_dir / "fresh.h5").write_bytes(b"no temporary name seen")
    ready, observed = area.scan(observed)
    assert [e.name for e in ready] == ["other.h5", "run.h5"] and list(observed) == ["fresh.h5"]


def test_symlink_inside_the_landing_area_is_quarantined_and_its_target_accepted(area, landing_dir, tmp_path, showers):
    (landing_dir / "real.h5").write_bytes(good_h5_bytes(showers, tmp_path))
    os.symlink(landing_dir / "real.h5", landing_dir / "alias.h5")
    entries = {e.name: e for e in ready_after_two_scans(area)}

    link = area.process(entries["alias.h5"])
    target = area.process(entries["real.h5"])

    assert isinstance(link, Quarantined) and link.check == "symlink" and "drop the file itself" in link.reason
    assert os.path.islink(link.url)  # the link itself, kept
    assert isinstance(target, Accepted) and target.n_events == 40 and not os.path.islink(target.spec.url)


def test_the_checks_are_configurable(tmp_path, landing_dir, showers):
    strict = Landing(
        str(landing_dir), str(tmp_path / "a"), str(tmp_path / "q"), checks=LandingChecks(energy_range_gev=(50, 500))
    )
    write_hdf5(showers, str(landing_dir / "low.h5"))
    result = strict.process(only_entry(strict, "low.h5"))
    assert isinstance(result, Quarantined) and result.check == "out_of_range"
    assert "outside the allowed range 50-500 GeV" in result.reason


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"energy_range_gev": (500.0, 1.0)}, "energy_range_gev"),
        ({"energy_range_gev": (0.0, 10.0)}, "energy_range_gev"),
        ({"theta_range_deg": (120.0, 60.0)}, "theta_range_deg"),
        ({"theta_range_deg": (60.0, 200.0)}, "theta_range_deg"),
        ({"particle": "muon"}, "particle"),
        ({"geometry": "no_such_calorimeter"}, "geometry"),
    ],
)
def test_landing_checks_refuse_bad_settings_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LandingChecks(**kwargs)


def test_landing_checks_normalise_the_particle():
    assert LandingChecks(particle="electron").particle == "e-"


def test_quarantine_never_overwrites_and_lists_newest_first(area, landing_dir, tmp_path, monkeypatch):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2020, 1, 2, 3, 4, 5, 678, tzinfo=UTC)

    monkeypatch.setattr(areas, "datetime", FrozenClock)
    results = []
    for content in (b"first", b"second"):
        (landing_dir / "bad.h5").write_bytes(content)
        results.append(area.process(only_entry(area, "bad.h5")))
    assert [Path(r.url).name for r in results] == ["20200102T030405000678Z-bad.h5", "20200102T030405000678Z-bad.h5-1"]
    assert [Path(r.url).read_bytes() for r in results] == [b"first", b"second"]

    monkeypatch.undo()  # the clock runs again: a later quarantine is listed first
    (landing_dir / "later.h5").write_bytes(b"third")
    results.append(area.process(only_entry(area, "later.h5")))
    listed = area.quarantined()
    assert [r["original_name"] for r in listed] == ["later.h5", "bad.h5", "bad.h5"]
    assert {r["sidecar_url"] for r in listed} == {r.sidecar_url for r in results}


def test_names(tmp_path):
    assert safe_name("run_2024-01.v2+e.h5")
    for bad in ("..\\..\\evil.h5", "a..b.h5", "new\nline.h5", "ok.h5\n", "a/b.h5", ".hidden", "x" * 256, "tab\t.h5"):
        assert not safe_name(bad), bad
    assert sanitized("..\\..\\evil.h5") == "._._evil.h5"
    assert sanitized("new\nline.h5") == "new_line.h5" and len(sanitized("y" * 500)) == 120


@pytest.fixture
def memory_prefix(tmp_path: Path):
    prefix = f"landing-test-{tmp_path.name}"
    yield f"memory://{prefix}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{prefix}"):
        fs.rm(f"/{prefix}", recursive=True)


def test_landing_on_an_fsspec_store(memory_prefix, showers):
    fs = fsspec.filesystem("memory")
    write_hdf5(showers, f"{memory_prefix}/landing/good.h5")
    fs.pipe(f"{memory_prefix}/landing/bad.h5", b"not hdf5")
    area = Landing(f"{memory_prefix}/landing", f"{memory_prefix}/accepted", f"{memory_prefix}/quarantine")

    ready, observed = area.scan()
    assert ready == [] and sorted(observed) == ["bad.h5", "good.h5"]
    ready, _ = area.scan(observed)
    bad, good = (area.process(e) for e in ready)

    assert isinstance(good, Accepted) and good.spec.url == f"{memory_prefix}/accepted/{good.key}/good.h5"
    assert sum(b.sizes["event"] for b in good.spec.blocks()) == 40
    assert isinstance(bad, Quarantined) and bad.check == "unreadable"
    assert fs.cat_file(bad.url) == b"not hdf5" and bad.sha256 == sha256(b"not hdf5")
    assert json.loads(fs.cat_file(bad.sidecar_url))["original_name"] == "bad.h5"
    assert area.scan() == ([], {})
    assert [r["original_name"] for r in area.quarantined()] == ["bad.h5"]


def test_a_file_built_to_exhaust_memory_is_quarantined_and_the_next_one_accepted(tmp_path, landing_dir, showers):
    # 6 kB on disk: a self-described 400^3-cell grid of compressed zeros, 256 MB per shower once read
    geometry = get_geometry(SMALL).to_dict() | {"name": "huge", "n_x": 400, "n_y": 400, "n_layers": 400}
    with h5py.File(landing_dir / "huge.h5", "w") as h5:
        h5.attrs["geometry_json"] = json.dumps(geometry)
        h5.create_dataset("ECAL", (2, 400, 400, 400), np.float32, chunks=(1, 100, 100, 100), compression="gzip")
        h5["energy"], h5["theta"] = np.full(2, 50.0), np.full(2, 1.5)
    before = (landing_dir / "huge.h5").read_bytes()
    write_hdf5(showers, str(landing_dir / "good.h5"))
    area = Landing(
        str(landing_dir), str(tmp_path / "a"), str(tmp_path / "q"), checks=LandingChecks(reader_memory_mb=256)
    )

    results = {entry.name: area.process(entry) for entry in ready_after_two_scans(area)}

    huge = results["huge.h5"]
    assert isinstance(huge, Quarantined) and huge.check == "reader_out_of_memory", huge
    assert "ran out of its 256 MB memory limit" in huge.reason and "reader_memory_mb" in huge.reason
    assert Path(huge.url).read_bytes() == before
    assert isinstance(results["good.h5"], Accepted) and os.listdir(landing_dir) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_empty_fraction": 1.5}, "max_empty_fraction"),
        ({"response_window": (2.0, 1.0)}, "response_window"),
        ({"response_window": (0.0, 1.0)}, "response_window"),
        ({"reader_memory_mb": 10}, "reader_memory_mb"),
        ({"reader_timeout_s": 0}, "reader_timeout_s"),
    ],
)
def test_the_new_landing_checks_refuse_bad_settings_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LandingChecks(**kwargs)
