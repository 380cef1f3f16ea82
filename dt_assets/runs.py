"""Runs: one batch of simulation data each, named by a stable key.

A run is either a Monte Carlo request (:class:`SimulationSpec`, key ``mc-<config hash>-<seed>``) or
an external file (:class:`FileSpec`, key ``file-<sha256[:12]>``). The key depends only on what
determines the data, so the same configuration and seed, or the same bytes under any file name,
never become two runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import xarray as xr

from .fsio import sha256_file, sha256_json, url_to_fs
from .physics.geometry import DEFAULT_GEOMETRY
from .physics.particles import particle_name
from .showers.errors import ShowerDataError
from .showers.hdf5 import hdf5_blocks
from .showers.store import iter_blocks, open_store, read_showers
from .simulation import RunArguments, simulate_blocks

FILE_LAYOUTS = ("3dgan", "calochallenge", "zarr")


@dataclass(frozen=True)
class SimulationSpec:
    """A Monte Carlo run: what :func:`dt_assets.simulate` is called with."""

    n_events: int = 1000
    energy_gev: tuple[float, float] = (10.0, 100.0)
    theta_deg: tuple[float, float] = (60.0, 120.0)
    particle: str = "e-"
    geometry: str = DEFAULT_GEOMETRY
    seed: int = 0

    def __post_init__(self) -> None:
        run = RunArguments.checked(
            self.n_events, self.energy_gev, self.theta_deg, self.particle, self.geometry, self.seed
        )
        object.__setattr__(self, "energy_gev", run.energy_gev)
        object.__setattr__(self, "theta_deg", run.theta_deg)
        object.__setattr__(self, "particle", particle_name(run.particle))

    @property
    def key(self) -> str:
        config = {k: v for k, v in self.to_dict().items() if k not in ("kind", "seed")}
        return f"mc-{sha256_json(config, 10)}-{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["energy_gev"], d["theta_deg"] = list(self.energy_gev), list(self.theta_deg)
        return {"kind": "simulation", **d}

    def describe(self) -> str:
        (e0, e1), (t0, t1) = self.energy_gev, self.theta_deg
        return (
            f"{self.n_events} {self.particle} {e0:g}-{e1:g} GeV {t0:g}-{t1:g} deg on {self.geometry}, seed {self.seed}"
        )

    def blocks(self) -> Iterator[xr.Dataset]:
        return simulate_blocks(self.n_events, self.energy_gev, self.theta_deg, self.particle, self.geometry, self.seed)


@dataclass(frozen=True)
class FileSpec:
    """An external file of showers (3DGAN or CaloChallenge HDF5, or a zarr store of our schema)."""

    url: str
    sha256: str
    layout: str
    geometry: str | None = None
    particle: str = "e-"

    def __post_init__(self) -> None:
        if self.layout not in FILE_LAYOUTS:
            raise ValueError(f"layout must be one of {FILE_LAYOUTS}, got {self.layout!r}")

    @property
    def key(self) -> str:
        return f"file-{self.sha256[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "file", **asdict(self)}

    def describe(self) -> str:
        return f"{self.layout} file {self.url} (sha256 {self.sha256[:12]})"

    def blocks(self, storage_options: Mapping[str, Any] | None = None) -> Iterator[xr.Dataset]:
        """The file's showers, block by block, after checking that its bytes did not change."""
        if self.layout != "zarr":
            now = sha256_file(self.url, storage_options)
            if now != self.sha256:
                raise ShowerDataError(
                    self.url, f"file changed since it was registered (sha256 {now[:12]}, expected {self.sha256[:12]})"
                )
            for block in hdf5_blocks(self.url, self.geometry, self.particle, storage_options):
                block.attrs["source_sha256"] = self.sha256
                yield block
        else:
            ds = read_showers(self.url, storage_options)
            for block in iter_blocks(ds):
                block.attrs.update(source_file=self.url, source_sha256=self.sha256, source_layout="zarr")
                yield block


RunSpec = SimulationSpec | FileSpec


def spec_from_dict(d: Mapping[str, Any]) -> RunSpec:
    """Rebuild a spec from :meth:`to_dict` output."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "simulation":
        d["energy_gev"], d["theta_deg"] = tuple(d["energy_gev"]), tuple(d["theta_deg"])
        return SimulationSpec(**d)
    if kind == "file":
        return FileSpec(**d)
    raise ValueError(f"unknown run kind {kind!r}")


def file_spec(
    url: str, geometry: str | None = None, particle: str = "e-", storage_options: Mapping[str, Any] | None = None
) -> FileSpec:
    """Describe an external file as a run: its layout and checksum. Unreadable files raise here."""
    fs, path = url_to_fs(url, storage_options)
    if not fs.exists(path):
        raise ShowerDataError(url, "no such file")
    if fs.isdir(path):
        open_store(url, storage_options)  # refuses a store that is incomplete or not a store
        digest = zarr_checksum(url, storage_options)
        return FileSpec(url=url, sha256=digest, layout="zarr", geometry=geometry, particle=particle)
    first = next(hdf5_blocks(url, geometry, particle, storage_options, block_events=1))
    return FileSpec(
        url=url,
        sha256=sha256_file(url, storage_options),
        layout=first.attrs["source_layout"],
        geometry=geometry,
        particle=particle,
    )


def zarr_checksum(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """SHA-256 over a zarr store's files (relative names and bytes, in sorted order)."""
    fs, path = url_to_fs(url, storage_options)
    digest = hashlib.sha256()
    for name in sorted(fs.find(path)):
        digest.update(name[len(path) :].encode())
        digest.update(fs.cat_file(name))
    return digest.hexdigest()
