"""Calorimeter geometry: a sampling stack of identical layers read out in a cartesian cell grid.

Coordinates (mm): ``x`` and ``y`` are transverse, centred on the middle of the cell grid; ``z`` is
the depth from the front face. Each layer is ``absorber_mm`` of absorber followed by ``active_mm``
of sensor; only the sensor's (visible) energy is read out.

The effective quantities of the sampling structure follow Grindhammer & Peters, "The
parameterized simulation of electromagnetic showers in homogeneous and sampling calorimeters",
hep-ex/0001020, section 3 (the same definitions as Geant4's
``GFlashSamplingShowerParameterisation``): mass-weighted Z and A, and radiation length, Molière
radius and critical energy combined in mass thickness (g/cm^2) so that the result is independent of
how the stack is sliced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .materials import SCALE_ENERGY_MEV, SILICON, TUNGSTEN, Material, material


@dataclass(frozen=True)
class Geometry:
    """A sampling calorimeter: ``n_layers`` layers of absorber + sensor, ``n_x`` x ``n_y`` cells."""

    name: str
    n_x: int
    n_y: int
    n_layers: int
    cell_size_mm: float
    absorber: Material = TUNGSTEN
    absorber_mm: float = 3.5
    active: Material = SILICON
    active_mm: float = 0.3
    #: Depth (mm from the front face) at which the incoming particle's axis crosses the transverse
    #: centre of the grid. ``None`` means half the stack depth, which keeps showers of every angle
    #: centred in the window, as in the 3DGAN data sets.
    pivot_depth_mm: float | None = field(default=None)

    def __post_init__(self) -> None:
        for name in ("n_x", "n_y", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"geometry {self.name!r}: {name} must be a positive integer, got {value!r}")
        for name in ("cell_size_mm", "absorber_mm", "active_mm"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"geometry {self.name!r}: {name} must be positive, got {value!r}")
        if self.pivot_depth_mm is not None and not 0 <= self.pivot_depth_mm <= self.depth_mm:
            raise ValueError(
                f"geometry {self.name!r}: pivot_depth_mm must lie in [0, {self.depth_mm}], got {self.pivot_depth_mm!r}"
            )

    # --- shape and coordinates -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Cell grid shape ``(n_x, n_y, n_layers)``."""
        return (self.n_x, self.n_y, self.n_layers)

    @property
    def n_cells(self) -> int:
        return self.n_x * self.n_y * self.n_layers

    @property
    def layer_pitch_mm(self) -> float:
        """Thickness of one absorber + sensor layer, in mm."""
        return self.absorber_mm + self.active_mm

    @property
    def depth_mm(self) -> float:
        return self.n_layers * self.layer_pitch_mm

    @property
    def width_x_mm(self) -> float:
        return self.n_x * self.cell_size_mm

    @property
    def width_y_mm(self) -> float:
        return self.n_y * self.cell_size_mm

    @property
    def pivot_mm(self) -> float:
        """Depth at which the particle axis crosses the grid's transverse centre, in mm."""
        return self.depth_mm / 2 if self.pivot_depth_mm is None else float(self.pivot_depth_mm)

    def x_centres_mm(self) -> np.ndarray:
        return (np.arange(self.n_x) - (self.n_x - 1) / 2) * self.cell_size_mm

    def y_centres_mm(self) -> np.ndarray:
        return (np.arange(self.n_y) - (self.n_y - 1) / 2) * self.cell_size_mm

    def layer_depths_mm(self) -> np.ndarray:
        """Depth of the centre of each layer's sensor, in mm from the front face."""
        return np.arange(self.n_layers) * self.layer_pitch_mm + self.absorber_mm + self.active_mm / 2

    # --- effective quantities of the sampling structure -----------------------------------------
    @property
    def _mass_thickness(self) -> tuple[float, float]:
        """Mass thickness per layer (g/cm^2) of absorber and of sensor."""
        return (
            self.absorber.density_g_cm3 * self.absorber_mm / 10.0,
            self.active.density_g_cm3 * self.active_mm / 10.0,
        )

    @property
    def mass_weights(self) -> tuple[float, float]:
        """Mass fractions (absorber, sensor) of one layer."""
        m_abs, m_act = self._mass_thickness
        return m_abs / (m_abs + m_act), m_act / (m_abs + m_act)

    @property
    def density_g_cm3(self) -> float:
        """Mean density of the stack."""
        m_abs, m_act = self._mass_thickness
        return (m_abs + m_act) / (self.layer_pitch_mm / 10.0)

    @property
    def z_eff(self) -> float:
        w_abs, w_act = self.mass_weights
        return w_abs * self.absorber.z + w_act * self.active.z

    @property
    def a_eff(self) -> float:
        w_abs, w_act = self.mass_weights
        return w_abs * self.absorber.a + w_act * self.active.a

    @property
    def x0_g_cm2(self) -> float:
        """Effective radiation length, 1/X0 = sum_i w_i / X0_i, in g/cm^2."""
        w_abs, w_act = self.mass_weights
        return 1.0 / (w_abs / self.absorber.radiation_length_g_cm2 + w_act / self.active.radiation_length_g_cm2)

    @property
    def x0_mm(self) -> float:
        """Effective radiation length as a length, in mm."""
        return self.x0_g_cm2 / self.density_g_cm3 * 10.0

    @property
    def _ec_over_x0(self) -> float:
        w_abs, w_act = self.mass_weights
        return (
            w_abs * self.absorber.critical_energy_mev / self.absorber.radiation_length_g_cm2
            + w_act * self.active.critical_energy_mev / self.active.radiation_length_g_cm2
        )

    @property
    def critical_energy_mev(self) -> float:
        """Effective critical energy, E_c = X0_eff * sum_i w_i E_c,i / X0_i, in MeV."""
        return self.x0_g_cm2 * self._ec_over_x0

    @property
    def moliere_radius_mm(self) -> float:
        """Effective Molière radius, 1/R_M = sum_i w_i E_c,i / (X0_i E_s), in mm."""
        return SCALE_ENERGY_MEV / self._ec_over_x0 / self.density_g_cm3 * 10.0

    @property
    def sampling_frequency(self) -> float:
        """F_s = X0_eff / (d_absorber + d_sensor), the GFlash sampling frequency."""
        return self.x0_mm / self.layer_pitch_mm

    @property
    def e_hat(self) -> float:
        """e/mip ratio of the sampling structure, 1 / (1 + 0.007 (Z_absorber - Z_sensor))."""
        return 1.0 / (1.0 + 0.007 * (self.absorber.z - self.active.z))

    @property
    def mip_fraction(self) -> float:
        """Fraction of a minimum-ionizing particle's energy loss that lands in the sensor."""
        e_act = self.active.dedx_min_mev_mm * self.active_mm
        e_abs = self.absorber.dedx_min_mev_mm * self.absorber_mm
        return e_act / (e_act + e_abs)

    @property
    def sampling_fraction(self) -> float:
        """Visible / deposited energy for electromagnetic showers: e_hat times the mip fraction."""
        return self.e_hat * self.mip_fraction

    @property
    def depth_x0(self) -> float:
        return self.depth_mm / self.x0_mm

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: the construction parameters."""
        return {
            "name": self.name,
            "n_x": int(self.n_x),
            "n_y": int(self.n_y),
            "n_layers": int(self.n_layers),
            "cell_size_mm": float(self.cell_size_mm),
            "absorber": self.absorber.name,
            "absorber_mm": float(self.absorber_mm),
            "active": self.active.name,
            "active_mm": float(self.active_mm),
            "pivot_depth_mm": None if self.pivot_depth_mm is None else float(self.pivot_depth_mm),
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Geometry:
        spec = dict(spec)
        spec["absorber"] = material(spec["absorber"])
        spec["active"] = material(spec["active"])
        return cls(**spec)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def effective(self) -> dict[str, float]:
        """The effective quantities, as stored in shower dataset attributes."""
        return {
            "x0_mm": self.x0_mm,
            "moliere_radius_mm": self.moliere_radius_mm,
            "critical_energy_mev": self.critical_energy_mev,
            "z_eff": self.z_eff,
            "a_eff": self.a_eff,
            "density_g_cm3": self.density_g_cm3,
            "sampling_frequency": self.sampling_frequency,
            "e_hat": self.e_hat,
            "mip_fraction": self.mip_fraction,
            "sampling_fraction": self.sampling_fraction,
            "depth_x0": self.depth_x0,
        }


#: CLIC-like W/Si ECAL on the angle-conditioned 3DGAN grid: 25 layers of 3.5 mm W + 0.3 mm Si
#: (about 1 X0 each, about 25 X0 deep), 51 x 51 cells of 5.1 mm.
CLIC_ECAL_51x51x25 = Geometry(name="clic_ecal_51x51x25", n_x=51, n_y=51, n_layers=25, cell_size_mm=5.1)

#: The same stack on the fixed-angle 3DGAN grid, 25 x 25 cells.
CLIC_ECAL_25x25x25 = Geometry(name="clic_ecal_25x25x25", n_x=25, n_y=25, n_layers=25, cell_size_mm=5.1)

#: A coarse stack for tests and the CPU demo: 12 layers of 7.0 mm W + 0.6 mm Si (about 2 X0 each,
#: about 24 X0 deep), 15 x 15 cells of 10.2 mm.
SMALL_ECAL_15x15x12 = Geometry(
    name="small_ecal_15x15x12",
    n_x=15,
    n_y=15,
    n_layers=12,
    cell_size_mm=10.2,
    absorber_mm=7.0,
    active_mm=0.6,
)

GEOMETRIES: dict[str, Geometry] = {g.name: g for g in (CLIC_ECAL_51x51x25, CLIC_ECAL_25x25x25, SMALL_ECAL_15x15x12)}
DEFAULT_GEOMETRY = CLIC_ECAL_51x51x25.name


def get_geometry(geometry: str | Geometry) -> Geometry:
    """Return a geometry preset by name, or the given :class:`Geometry` unchanged."""
    if isinstance(geometry, Geometry):
        return geometry
    try:
        return GEOMETRIES[geometry]
    except KeyError:
        raise ValueError(f"unknown geometry {geometry!r}; presets: {sorted(GEOMETRIES)}") from None


def geometry_for_shape(shape: tuple[int, int, int]) -> Geometry:
    """The preset whose cell grid has this shape (used when importing files that carry no geometry)."""
    return _preset_where(lambda g: g.shape == tuple(shape), f"the cell grid {tuple(shape)}")


def geometry_for_cells(n_cells: int) -> Geometry:
    """The preset with this many cells (for flat, CaloChallenge-style files that carry no geometry)."""
    return _preset_where(lambda g: g.n_cells == n_cells, f"{n_cells} cells")


def _preset_where(predicate: Callable[[Geometry], bool], what: str) -> Geometry:
    for g in GEOMETRIES.values():
        if predicate(g):
            return g
    presets = ", ".join(f"{g.name} {g.shape}" for g in GEOMETRIES.values())
    raise ValueError(f"no geometry preset has {what}; presets: {presets}; pass a geometry")
