"""Import and export of the two HDF5 layouts of the field.

- **3DGAN** (CERN openlab angle-conditioned 3DGAN training files): ``ECAL`` (N, 51, 51, 25) cell
  energies in GeV, ``energy`` (N,) or (N, 1) primary energy in GeV, ``theta`` (N,) in rad. Older
  files carry ``eta`` (pseudorapidity, converted with theta = 2 atan(exp(-eta))) or ``mtheta``
  (the measured angle) instead of ``theta``. An ``ECAL`` dataset attribute ``units`` ("GeV" or
  "MeV") overrides the GeV convention.
- **CaloChallenge** (Fast Calorimeter Simulation Challenge 2022): ``incident_energies`` (N, 1) in
  MeV, ``showers`` (N, n_voxels) in MeV. CaloChallenge's own data sets are voxelised in cylindrical
  (r, alpha, z) bins; CaloTwin's grids are cartesian, so a CaloChallenge file maps onto a geometry
  whose cell count equals ``n_voxels``, flattened in (x, y, z) C order. Showers enter at normal
  incidence unless the file has a ``theta`` dataset (which CaloTwin's exports add).

A file that reaches outside itself (a virtual dataset, external storage or links, a filter plugin) is
refused before any data is read (:mod:`dt_assets.showers.hdf5_safety`). Files are read in blocks of
events; every block is checked (keys, shapes, NaN/inf, negative
energies, truncation), and any problem raises :class:`ShowerDataError` naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from ..fsio import sha256_file, url_to_fs
from ..physics.geometry import Geometry, geometry_for_cells, geometry_for_shape, get_geometry
from ..physics.particles import pdg_code
from .errors import ShowerDataError
from .hdf5_safety import check_self_contained
from .schema import (
    DEPOSIT,
    EVENTS_PER_CHUNK,
    check_deposits,
    concat_blocks,
    dataset_geometry,
    shower_dataset,
    validate_showers,
)
from .store import iter_blocks

LAYOUTS = ("3dgan", "calochallenge")
_ECAL_SCALE_TO_MEV = {"GeV": 1e3, "MeV": 1.0}


def detect_layout(keys: set[str], source: str) -> str:
    """Which layout a file's top-level keys belong to."""
    if "ECAL" in keys:
        return "3dgan"
    if "showers" in keys or "incident_energies" in keys:
        return "calochallenge"
    raise ShowerDataError(
        source,
        f"missing key(s): neither 'ECAL' (3DGAN layout) nor 'showers' + 'incident_energies' "
        f"(CaloChallenge layout) found; keys are {sorted(keys)}",
    )


def hdf5_blocks(
    url: str,
    geometry: str | Geometry | None = None,
    particle: str | int = "e-",
    storage_options: Mapping[str, Any] | None = None,
    block_events: int = EVENTS_PER_CHUNK,
) -> Iterator[xr.Dataset]:
    """Read a 3DGAN or CaloChallenge HDF5 file as a stream of validated shower datasets.

    ``geometry`` defaults to the preset whose grid matches the file; ``particle`` is used when the
    file does not say (neither layout records it). Each block's attributes name the source file.
    """
    fs, path = url_to_fs(url, storage_options)
    if not fs.exists(path):
        raise ShowerDataError(url, "no such file")
    if fs.size(path) == 0:
        raise ShowerDataError(url, "empty file (0 bytes)")
    with fs.open(path, "rb") as raw:
        try:
            h5 = h5py.File(raw, "r")
        except OSError as exc:
            raise ShowerDataError(url, f"not a readable HDF5 file, or a truncated one ({exc})") from None
        with h5:
            check_self_contained(h5, url)
            reader = _Reader(h5, url, geometry, particle)
            for start in range(0, reader.n, block_events):
                yield reader.block(start, min(start + block_events, reader.n))


class _Reader:
    """Checks a file's keys and shapes once, then reads validated blocks of events."""

    def __init__(self, h5: h5py.File, source: str, geometry: str | Geometry | None, particle: str | int):
        self.h5, self.source = h5, source
        self.layout = detect_layout(set(h5.keys()), source)
        self.particle = pdg_code(particle)
        if self.layout == "3dgan":
            self.deposits = self._dataset("ECAL")
            if self.deposits.ndim != 4:
                raise ShowerDataError(source, f"ECAL has shape {self.deposits.shape}, expected (N, n_x, n_y, n_layers)")
            grid = tuple(self.deposits.shape[1:])
            units = self.deposits.attrs.get("units", "GeV")
            units = units.decode() if isinstance(units, bytes) else str(units)
            if units not in _ECAL_SCALE_TO_MEV:
                raise ShowerDataError(source, f"ECAL units {units!r} not understood; use 'GeV' or 'MeV'")
            self.scale = _ECAL_SCALE_TO_MEV[units]
            self.energy = self._vector("energy")
            self.energy_scale = 1.0
            self.angle_key = next((k for k in ("theta", "eta", "mtheta") if k in h5), None)
            if self.angle_key is None:
                raise ShowerDataError(source, "missing key: none of 'theta', 'eta', 'mtheta' (the incidence angle)")
            self.angle = self._vector(self.angle_key)
        else:
            self.deposits = self._dataset("showers")
            self.energy = self._vector("incident_energies")
            if self.deposits.ndim != 2:
                raise ShowerDataError(source, f"showers has shape {self.deposits.shape}, expected (N, n_voxels)")
            grid = None
            self.scale, self.energy_scale = 1.0, 1e-3  # MeV -> MeV, MeV -> GeV
            self.angle_key = "theta" if "theta" in h5 else None
            self.angle = self._vector("theta") if self.angle_key else None
        self.particles = self._vector("particle") if "particle" in h5 else None
        self.n = self.deposits.shape[0]
        if self.n == 0:
            raise ShowerDataError(source, "contains no events")
        for name, vector in (("energy", self.energy), (self.angle_key, self.angle), ("particle", self.particles)):
            if vector is not None and vector.shape[0] != self.n:
                raise ShowerDataError(
                    source, f"mismatched lengths: {vector.shape[0]} {name} values for {self.n} showers"
                )
        self.geometry = self._geometry(geometry, grid)

    def _dataset(self, key: str) -> h5py.Dataset:
        if key not in self.h5:
            raise ShowerDataError(
                self.source, f"missing key {key!r} ({self.layout} layout); keys are {sorted(self.h5.keys())}"
            )
        item = self.h5[key]
        if not isinstance(item, h5py.Dataset):
            raise ShowerDataError(self.source, f"{key!r} is a group, expected a dataset")
        if not np.issubdtype(item.dtype, np.number):
            raise ShowerDataError(self.source, f"{key!r} has non-numeric type {item.dtype}")
        return item

    def _vector(self, key: str) -> h5py.Dataset:
        item = self._dataset(key)
        if item.ndim == 0 or item.ndim > 2 or (item.ndim == 2 and item.shape[1] != 1):
            raise ShowerDataError(self.source, f"{key!r} has shape {item.shape}, expected (N,) or (N, 1)")
        return item

    def _geometry(self, geometry: str | Geometry | None, grid: tuple[int, ...] | None) -> Geometry:
        if geometry is not None:
            geo = get_geometry(geometry)
        elif "geometry_json" in self.h5.attrs:  # written by CaloTwin
            try:
                geo = Geometry.from_dict(json.loads(_text(self.h5.attrs["geometry_json"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ShowerDataError(self.source, f"bad geometry description: {exc}") from None
        elif grid is not None:
            try:
                geo = geometry_for_shape(grid)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ShowerDataError(self.source, f"wrong shape: {exc}") from None
        else:
            try:
                geo = geometry_for_cells(self.deposits.shape[1])
            except ValueError as exc:
                raise ShowerDataError(self.source, f"wrong shape: {exc}") from None
        expected = geo.shape if self.layout == "3dgan" else (geo.n_cells,)
        if tuple(self.deposits.shape[1:]) != expected:
            raise ShowerDataError(
                self.source,
                f"wrong shape: showers of shape {self.deposits.shape[1:]} do not fit geometry {geo.name} "
                f"(expects {expected})",
            )
        return geo

    def block(self, start: int, stop: int) -> xr.Dataset:
        try:
            deposits = np.asarray(self.deposits[start:stop], dtype=np.float64) * self.scale
            energy = np.asarray(self.energy[start:stop], dtype=np.float64).reshape(-1) * self.energy_scale
            angle = None if self.angle is None else np.asarray(self.angle[start:stop], dtype=np.float64).reshape(-1)
        except (OSError, RuntimeError) as exc:
            raise ShowerDataError(
                self.source, f"truncated or corrupt data in events {start}-{stop - 1} ({exc})"
            ) from None
        check_deposits(deposits, self.source, first_event=start)
        if angle is None:
            theta = np.full(stop - start, np.pi / 2)
        elif self.angle_key == "eta":
            theta = 2.0 * np.arctan(np.exp(-angle))
        else:
            theta = angle
        n = stop - start
        if self.particles is None:
            particle = np.full(n, self.particle, dtype=np.int32)
        else:
            particle = np.asarray(self.particles[start:stop], dtype=np.int32).reshape(-1)
        attrs = {
            "source_file": self.source,
            "source_layout": self.layout,
            "simulator": _text(self.h5.attrs.get("simulator", "external")),
        }
        ds = shower_dataset(deposits.reshape(n, *self.geometry.shape), energy, theta, particle, self.geometry, attrs)
        try:
            validate_showers(ds, self.source, first_event=start)
        except ShowerDataError as exc:
            raise ShowerDataError(self.source, f"{exc.problem} (events {start}-{stop - 1})") from None
        return ds


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_hdf5(
    url: str,
    geometry: str | Geometry | None = None,
    particle: str | int = "e-",
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Read a whole 3DGAN or CaloChallenge HDF5 file into memory, with its SHA-256 in the attributes."""
    ds = concat_blocks(list(hdf5_blocks(url, geometry, particle, storage_options)))
    ds.attrs["source_sha256"] = sha256_file(url, storage_options)
    return ds


def write_hdf5(
    ds: xr.Dataset,
    url: str,
    layout: str = "3dgan",
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Export a shower dataset to a 3DGAN or CaloChallenge HDF5 file, atomically, block by block."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    geometry = dataset_geometry(ds)
    n = ds.sizes["event"]
    fs, path = url_to_fs(url, storage_options)
    local_dir = (os.path.dirname(path) or ".") if isinstance(fs, LocalFileSystem) else None
    if local_dir:
        os.makedirs(local_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5.tmp", dir=local_dir)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["geometry_json"] = geometry.to_json()
            h5.attrs["simulator"] = str(ds.attrs.get("simulator", "unknown"))
            h5.attrs["producer"] = "calotwin"
            if layout == "3dgan":
                cells = h5.create_dataset(
                    "ECAL",
                    (n, *geometry.shape),
                    dtype="float32",
                    chunks=(min(n, 64), *geometry.shape),
                    compression="gzip",
                    compression_opts=4,
                )
                cells.attrs["units"] = "GeV"
                h5.create_dataset("energy", data=ds["primary_energy"].values.astype(np.float32))
                scale = 1e-3
            else:
                cells = h5.create_dataset(
                    "showers",
                    (n, geometry.n_cells),
                    dtype="float32",
                    chunks=(min(n, 64), geometry.n_cells),
                    compression="gzip",
                    compression_opts=4,
                )
                h5.create_dataset("incident_energies", data=(ds["primary_energy"].values * 1e3).reshape(n, 1))
                scale = 1.0
            h5.create_dataset("theta", data=ds["theta"].values)
            h5.create_dataset("particle", data=ds["particle"].values.astype(np.int32))
            start = 0
            for block in iter_blocks(ds):
                values = block[DEPOSIT].values.astype(np.float32) * np.float32(scale)
                cells[start : start + len(values)] = values.reshape(cells[start : start + len(values)].shape)
                start += len(values)
        if local_dir:
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return url
