"""Per-event observables of showers, in a registry: adding one is one decorated function.

An observable maps a :class:`ShowerBlock` (a block of events with their geometry) to one number per
event (``(n,)``, a *scalar* observable) or to a vector over fixed bins per event (``(n, k)``, a
*binned* observable such as the longitudinal profile, whose bins are the layers). Metrics compare
the distributions of scalar observables, and the summed (mean) shapes of binned ones.

Add your own::

    from dt_assets.validation.observables import observable

    @observable("e_first_layers", unit="MeV", description="visible energy in the first 3 layers")
    def e_first_layers(block):
        return block.layer_energy[:, :3].sum(axis=1)

and name it in the validation config (``observables: [..., e_first_layers]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch
import xarray as xr

from ..physics.geometry import Geometry
from ..showers.schema import DEPOSIT, check_deposits, dataset_geometry

#: Cells below this visible energy (MeV) count as empty (the preprocessing threshold, 1e-4 GeV).
DEFAULT_THRESHOLD_MEV = 0.1
#: How an observable's mean is compared (see :class:`Observable`).
ObservableKind = Literal["magnitude", "position", "log_magnitude"]
#: Bin edges of the cell-energy spectrum, log10(E / MeV).
SPECTRUM_EDGES = np.linspace(-1.0, 4.0, 41)


@dataclass
class ShowerBlock:
    """A block of events: deposits (MeV) with their conditions and geometry, and shared sums."""

    cells: np.ndarray  # (n, n_x, n_y, n_layers), MeV
    energy_gev: np.ndarray  # (n,)
    theta_rad: np.ndarray  # (n,)
    geometry: Geometry
    threshold_mev: float = DEFAULT_THRESHOLD_MEV

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, threshold_mev: float = DEFAULT_THRESHOLD_MEV) -> ShowerBlock:
        return cls(
            cells=np.asarray(ds[DEPOSIT].values, dtype=np.float64),
            energy_gev=np.asarray(ds["primary_energy"].values, dtype=np.float64),
            theta_rad=np.asarray(ds["theta"].values, dtype=np.float64),
            geometry=dataset_geometry(ds),
            threshold_mev=threshold_mev,
        )

    def __len__(self) -> int:
        return len(self.energy_gev)

    @cached_property
    def x_mm(self) -> np.ndarray:
        return self.geometry.x_centres_mm()

    @cached_property
    def y_mm(self) -> np.ndarray:
        return self.geometry.y_centres_mm()

    @cached_property
    def layer(self) -> np.ndarray:
        return np.arange(self.geometry.n_layers, dtype=np.float64)

    @cached_property
    def layer_energy(self) -> np.ndarray:
        """Visible energy per layer (n, n_layers), MeV: the longitudinal profile."""
        return self.cells.sum(axis=(1, 2))

    @cached_property
    def x_energy(self) -> np.ndarray:
        """Visible energy per x slice (n, n_x), MeV."""
        return self.cells.sum(axis=(2, 3))

    @cached_property
    def y_energy(self) -> np.ndarray:
        """Visible energy per y slice (n, n_y), MeV."""
        return self.cells.sum(axis=(1, 3))

    @cached_property
    def total(self) -> np.ndarray:
        return self.layer_energy.sum(axis=1)

    def moments(self, profile: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Energy-weighted mean, width (standard deviation) and skewness of ``position`` per event.

        Empty events give 0 for all three.
        """
        weight = _safe_ratio(profile, profile.sum(axis=1, keepdims=True))
        mean = (weight * position).sum(axis=1)
        centred = position[None, :] - mean[:, None]
        variance = (weight * centred**2).sum(axis=1)
        width = np.sqrt(variance)
        skewness = _safe_ratio((weight * centred**3).sum(axis=1), width**3)
        return mean, width, skewness

    @cached_property
    def x_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.moments(self.x_energy, self.x_mm)

    @cached_property
    def y_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.moments(self.y_energy, self.y_mm)

    @cached_property
    def z_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.moments(self.layer_energy, self.layer)

    @cached_property
    def hottest_cell(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices (ix, iy, iz) of the cell with the largest deposit, per event."""
        flat = self.cells.reshape(len(self), -1).argmax(axis=1)
        return np.unravel_index(flat, self.cells.shape[1:])


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    np.divide(numerator, denominator, out=out, where=np.broadcast_to(denominator > 0, out.shape))
    return out


@dataclass(frozen=True)
class Observable:
    """A registered observable: its function, unit, description and how its mean is compared.

    ``kind="magnitude"``: the relative error of the mean is ``(mean_c - mean_r) / |mean_r|``.
    ``kind="position"`` (centres, positions, skewness, which may sit near 0): the mean shift is
    divided by the reference's standard deviation instead, but never by less than ``resolution``
    (for discrete positions such as the hottest cell's, whose spread can be zero).
    ``kind="log_magnitude"`` (values or bins in log10 of a magnitude, such as the cell-energy spectrum's): the mean
    error is ``10^(mean_c - mean_r) - 1``, the relative error of the magnitude's geometric mean, whatever its unit
    (``|mean_r|`` of a log depends on the unit's zero: in MeV, where cells sit near log10 = 0, a 4% lower
    geometric mean cell energy read as a 5% error, in GeV as 0.5%). Binned observables
    give ``bins`` (the bin centres, in ``unit``) from the geometry.
    """

    name: str
    func: Callable[[ShowerBlock], np.ndarray]
    unit: str
    description: str
    kind: ObservableKind = "magnitude"
    bins: Callable[[Geometry], np.ndarray] | None = None
    resolution: Callable[[Geometry], float] | None = None

    @property
    def binned(self) -> bool:
        return self.bins is not None

    def __call__(self, block: ShowerBlock) -> np.ndarray:
        values = np.asarray(self.func(block), dtype=np.float64)
        expected = (len(block),) if self.bins is None else (len(block), len(self.bins(block.geometry)))
        if values.shape != expected:
            raise ValueError(f"observable {self.name!r} returned shape {values.shape}, expected {expected}")
        return values


OBSERVABLES: dict[str, Observable] = {}


def observable(
    name: str,
    unit: str,
    description: str,
    kind: ObservableKind = "magnitude",
    bins: Callable[[Geometry], np.ndarray] | None = None,
    resolution: Callable[[Geometry], float] | None = None,
) -> Callable[[Callable[[ShowerBlock], np.ndarray]], Callable[[ShowerBlock], np.ndarray]]:
    """Register ``func`` as an observable under ``name`` (a decorator); the name must be new."""

    def register(func: Callable[[ShowerBlock], np.ndarray]) -> Callable[[ShowerBlock], np.ndarray]:
        if name in OBSERVABLES:
            raise ValueError(f"an observable named {name!r} is already registered")
        OBSERVABLES[name] = Observable(name, func, unit, description, kind, bins, resolution)
        return func

    return register


def get_observable(name: str) -> Observable:
    try:
        return OBSERVABLES[name]
    except KeyError:
        raise KeyError(f"unknown observable {name!r}; registered: {', '.join(sorted(OBSERVABLES))}") from None


@observable("e_sum", "MeV", "total visible energy")
def _e_sum(block: ShowerBlock) -> np.ndarray:
    return block.total


@observable("e_ratio", "MeV/GeV", "total visible energy over primary energy (E_sum/E_p)")
def _e_ratio(block: ShowerBlock) -> np.ndarray:
    return block.total / block.energy_gev


@observable("center_x", "mm", "energy-weighted centre in x (the plane of incidence)", kind="position")
def _center_x(block: ShowerBlock) -> np.ndarray:
    return block.x_moments[0]


@observable("center_y", "mm", "energy-weighted centre in y", kind="position")
def _center_y(block: ShowerBlock) -> np.ndarray:
    return block.y_moments[0]


@observable("center_z", "layer", "energy-weighted mean layer (shower depth)", kind="position")
def _center_z(block: ShowerBlock) -> np.ndarray:
    return block.z_moments[0]


@observable("width_x", "mm", "energy-weighted standard deviation in x")
def _width_x(block: ShowerBlock) -> np.ndarray:
    return block.x_moments[1]


@observable("width_y", "mm", "energy-weighted standard deviation in y")
def _width_y(block: ShowerBlock) -> np.ndarray:
    return block.y_moments[1]


@observable("width_z", "layer", "energy-weighted standard deviation of the layer (longitudinal spread)")
def _width_z(block: ShowerBlock) -> np.ndarray:
    return block.z_moments[1]


@observable("skewness_x", "1", "energy-weighted skewness (third moment) in x", kind="position")
def _skewness_x(block: ShowerBlock) -> np.ndarray:
    return block.x_moments[2]


@observable("skewness_y", "1", "energy-weighted skewness (third moment) in y", kind="position")
def _skewness_y(block: ShowerBlock) -> np.ndarray:
    return block.y_moments[2]


@observable("skewness_z", "1", "energy-weighted skewness (third moment) of the layer", kind="position")
def _skewness_z(block: ShowerBlock) -> np.ndarray:
    return block.z_moments[2]


@observable("occupancy", "cells", "number of cells above the threshold (sparsity = 1 - occupancy / cells)")
def _occupancy(block: ShowerBlock) -> np.ndarray:
    return (block.cells > block.threshold_mev).sum(axis=(1, 2, 3))


@observable("max_deposit", "MeV", "energy of the hottest cell")
def _max_deposit(block: ShowerBlock) -> np.ndarray:
    return block.cells.reshape(len(block), -1).max(axis=1)


@observable("max_x", "mm", "x of the hottest cell", kind="position", resolution=lambda g: g.cell_size_mm)
def _max_x(block: ShowerBlock) -> np.ndarray:
    return block.x_mm[block.hottest_cell[0]]


@observable("max_y", "mm", "y of the hottest cell", kind="position", resolution=lambda g: g.cell_size_mm)
def _max_y(block: ShowerBlock) -> np.ndarray:
    return block.y_mm[block.hottest_cell[1]]


@observable("max_layer", "layer", "layer of the hottest cell", kind="position", resolution=lambda g: 1.0)
def _max_layer(block: ShowerBlock) -> np.ndarray:
    return block.hottest_cell[2].astype(np.float64)


@observable("measured_theta", "rad", "incidence angle from a line fit through the per-layer barycentres")
def _measured_theta(block: ShowerBlock) -> np.ndarray:
    from ..model.gan3d import AngleEstimator  # the estimator the 3DGAN's discriminator uses

    with torch.no_grad():
        return AngleEstimator(block.geometry)(torch.from_numpy(block.cells)).double().numpy()


@observable(
    "longitudinal_profile",
    "MeV",
    "visible energy per layer",
    kind="position",
    bins=lambda g: np.arange(g.n_layers, dtype=float),
)
def _longitudinal_profile(block: ShowerBlock) -> np.ndarray:
    return block.layer_energy


@observable(
    "transverse_profile_x", "MeV", "visible energy per x slice (mm)", kind="position", bins=lambda g: g.x_centres_mm()
)
def _transverse_profile_x(block: ShowerBlock) -> np.ndarray:
    return block.x_energy


@observable(
    "transverse_profile_y", "MeV", "visible energy per y slice (mm)", kind="position", bins=lambda g: g.y_centres_mm()
)
def _transverse_profile_y(block: ShowerBlock) -> np.ndarray:
    return block.y_energy


@observable(
    "cell_energy_spectrum",
    "cells",
    "number of cells per bin of log10(cell energy / MeV), above the threshold",
    kind="log_magnitude",
    bins=lambda g: 0.5 * (SPECTRUM_EDGES[1:] + SPECTRUM_EDGES[:-1]),
)
def _cell_energy_spectrum(block: ShowerBlock) -> np.ndarray:
    n, n_bins = len(block), len(SPECTRUM_EDGES) - 1
    flat = block.cells.reshape(n, -1)
    event, cell = np.nonzero(flat > block.threshold_mev)
    index = np.clip(np.searchsorted(SPECTRUM_EDGES, np.log10(flat[event, cell]), side="right") - 1, 0, n_bins - 1)
    return np.bincount(event * n_bins + index, minlength=n * n_bins).reshape(n, n_bins).astype(np.float64)


#: The observables a default validation uses (all built-in ones).
DEFAULT_OBSERVABLES = tuple(OBSERVABLES)


def compute_observables(
    ds: xr.Dataset,
    names: tuple[str, ...] | list[str] = DEFAULT_OBSERVABLES,
    threshold_mev: float = DEFAULT_THRESHOLD_MEV,
    source: str = "showers",
    events_per_block: int = 256,
) -> dict[str, np.ndarray]:
    """Every named observable for every event of ``ds``, read block by block (bounded memory).

    Returns ``{name: values}`` plus ``primary_energy`` (GeV) and ``theta`` (rad). Deposits are
    checked on the way: NaN, inf or negative values raise :class:`ShowerDataError` naming ``source``.
    """
    chosen = [get_observable(name) for name in names]
    parts: dict[str, list[np.ndarray]] = {o.name: [] for o in chosen}
    parts["primary_energy"], parts["theta"] = [], []
    for start in range(0, ds.sizes["event"], events_per_block):
        block = ShowerBlock.from_dataset(ds.isel(event=slice(start, start + events_per_block)), threshold_mev)
        check_deposits(block.cells, source, first_event=start)
        parts["primary_energy"].append(block.energy_gev)
        parts["theta"].append(block.theta_rad)
        for o in chosen:
            parts[o.name].append(o(block))
    return {name: np.concatenate(values) for name, values in parts.items()}
