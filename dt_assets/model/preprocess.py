"""Preprocessing of raw showers into GAN tensors, as in the 3DGAN reference, and its inverse.

Per event: cell energies to GeV, cells below 1e-4 GeV set to 0, events with almost no visible
energy dropped, cells power-scaled x^0.85, conditions normalised (E_p/100, theta in rad). Each
event is assigned to train / validation / test by a hash of (run key, event index), so adding data
never moves an event between splits. The store holds everything needed to invert the transform.

Variables of a preprocessed store: ``cells(event, x, y, z)`` (scaled), ``energy`` (E_p/100),
``theta`` (rad), ``total`` (un-scaled sum, GeV), ``measured_theta`` (rad, from barycentres, the
target of the angle loss), ``particle``, ``source_event`` and ``split`` (0 train, 1 validation,
2 test).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import overload

import numpy as np
import torch
import xarray as xr

from ..physics.geometry import Geometry
from ..showers.schema import DEPOSIT, dataset_geometry, geometry_attrs, geometry_coords
from .gan3d import AngleEstimator

SPLITS = {"train": 0, "validation": 1, "test": 2}
CELLS = "cells"


@dataclass(frozen=True)
class Transform:
    """The preprocessing transform (defaults: the 3DGAN reference) and its inverse."""

    mev_per_unit: float = 1000.0  # cell energies are handled in GeV
    threshold: float = 1e-4  # cells below this (GeV) are set to 0
    power: float = 0.85
    energy_scale_gev: float = 100.0  # conditioning input is E_p / 100
    min_total: float = 1e-3  # events with less visible energy (GeV) are dropped

    def __post_init__(self) -> None:
        for name in ("mev_per_unit", "power", "energy_scale_gev"):
            if not getattr(self, name) > 0:
                raise ValueError(f"transform {name} must be positive, got {getattr(self, name)}")
        if self.threshold < 0 or self.min_total < 0:
            raise ValueError("transform threshold and min_total must be >= 0")

    def unscaled(self, cells_mev: np.ndarray) -> np.ndarray:
        """Cell energies in GeV after the threshold."""
        cells = np.asarray(cells_mev, dtype=np.float32) / np.float32(self.mev_per_unit)
        cells[cells < self.threshold] = 0.0
        return cells

    def scale(self, unscaled: np.ndarray) -> np.ndarray:
        """Power scaling of thresholded GeV cells (the GAN's input space)."""
        return np.power(unscaled, np.float32(self.power))

    def forward(self, cells_mev: np.ndarray) -> np.ndarray:
        return self.scale(self.unscaled(cells_mev))

    @overload
    def inverse(self, scaled: torch.Tensor) -> torch.Tensor: ...
    @overload
    def inverse(self, scaled: np.ndarray) -> np.ndarray: ...
    def inverse(self, scaled: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Scaled cells back to MeV (values below the threshold stay as the model made them)."""
        if isinstance(scaled, torch.Tensor):
            return scaled.clamp_min(0).pow(1.0 / self.power) * self.mev_per_unit
        return np.power(np.maximum(scaled, 0), 1.0 / self.power, dtype=np.float32) * np.float32(self.mev_per_unit)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        return cls(**d)


def split_of(run_key: str, events: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Split (0 train, 1 validation, 2 test) of each event, from a hash of (run key, event index)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    u = (
        np.array(
            [
                int.from_bytes(hashlib.blake2b(f"{run_key}:{int(i)}".encode(), digest_size=8).digest(), "little")
                for i in events
            ],
            dtype=np.float64,
        )
        / 2.0**64
    )
    edges = np.cumsum(fractions)[:2]
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def preprocess_blocks(
    blocks: Iterable[xr.Dataset],
    run_key: str,
    transform: Transform = Transform(),
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Iterator[xr.Dataset]:
    """Transform a stream of raw shower blocks into blocks of GAN tensors (one block in memory at a time)."""
    first = 0
    estimator: AngleEstimator | None = None
    for block in blocks:
        geometry = dataset_geometry(block)
        if estimator is None:
            estimator = AngleEstimator(geometry)
        n = block.sizes["event"]
        events = np.arange(first, first + n)
        first += n
        unscaled = transform.unscaled(block[DEPOSIT].values)
        total = unscaled.sum(axis=(1, 2, 3), dtype=np.float64)
        keep = total >= transform.min_total
        unscaled, total, events = unscaled[keep], total[keep], events[keep]
        with torch.no_grad():
            measured = estimator(torch.from_numpy(unscaled)).numpy()
        yield _dataset(
            cells=transform.scale(unscaled),
            block=block.isel(event=np.flatnonzero(keep)),
            total=total,
            measured=measured,
            events=events,
            split=split_of(run_key, events, fractions),
            geometry=geometry,
            run_key=run_key,
            transform=transform,
        )


def _dataset(
    *,
    cells: np.ndarray,
    block: xr.Dataset,
    total: np.ndarray,
    measured: np.ndarray,
    events: np.ndarray,
    split: np.ndarray,
    geometry: Geometry,
    run_key: str,
    transform: Transform,
) -> xr.Dataset:
    energy = block["primary_energy"].values
    ds = xr.Dataset(
        {
            CELLS: (("event", "x", "y", "z"), cells, {"long_name": f"(cell energy / GeV)^{transform.power}"}),
            "energy": (
                ("event",),
                (energy / transform.energy_scale_gev).astype(np.float32),
                {"long_name": "E_p / 100 GeV"},
            ),
            "primary_energy": (("event",), energy, {"units": "GeV"}),
            "theta": (("event",), block["theta"].values.astype(np.float32), {"units": "rad"}),
            "total": (
                ("event",),
                total.astype(np.float32),
                {"units": "GeV", "long_name": "visible energy after threshold"},
            ),
            "measured_theta": (
                ("event",),
                measured.astype(np.float32),
                {"units": "rad", "long_name": "angle from barycentres"},
            ),
            "particle": (("event",), block["particle"].values),
            "source_event": (("event",), events.astype(np.int64), {"long_name": "event index in the raw run"}),
            "split": (("event",), split, {"long_name": "0 train, 1 validation, 2 test"}),
        },
        coords=geometry_coords(geometry),
    )
    ds.attrs.update(geometry_attrs(geometry))
    ds.attrs.update({"run_key": run_key, "transform": json.dumps(transform.to_dict(), sort_keys=True)})
    return ds


def preprocessed_transform(ds: xr.Dataset) -> Transform:
    return Transform.from_dict(json.loads(ds.attrs["transform"]))
