"""The conditions grid: cells in (primary energy x incidence angle) where generator and MC are compared.

The default follows the 3DGAN analysis: cells of +-5 GeV around energies spread over the
training range (the first and last cells touch its edges) and of +-0.1 rad around 62, 90 and 118
degrees (the outer two reach the 60-120 degree edges). Cells are clipped to the training range, so a
cell at an edge is as wide as the range allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..simulation import ENERGY_RANGE_GEV, THETA_RANGE_DEG


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a centre and the (clipped) energy and angle ranges around it."""

    energy_gev: float
    theta_deg: float
    energy_range_gev: tuple[float, float]
    theta_range_deg: tuple[float, float]

    @property
    def id(self) -> str:
        """A short key, e.g. ``E100_T90`` (usable in MLflow metric names)."""
        return f"E{self.energy_gev:g}_T{self.theta_deg:g}".replace(".", "p")

    @property
    def label(self) -> str:
        return f"{self.energy_gev:g} GeV, {self.theta_deg:g} deg"

    def contains(self, energy_gev: np.ndarray, theta_rad: np.ndarray) -> np.ndarray:
        theta_deg = np.rad2deg(theta_rad)
        e_low, e_high = self.energy_range_gev
        t_low, t_high = self.theta_range_deg
        return (energy_gev >= e_low) & (energy_gev <= e_high) & (theta_deg >= t_low) & (theta_deg <= t_high)


@dataclass(frozen=True)
class ConditionsGrid:
    """Energies (GeV) x angles (degrees), each cell +- the half widths, clipped to the training range."""

    energies_gev: tuple[float, ...]
    angles_deg: tuple[float, ...] = (62.0, 90.0, 118.0)
    energy_half_width_gev: float = 5.0
    angle_half_width_rad: float = 0.1
    energy_range_gev: tuple[float, float] = (10.0, 200.0)
    angle_range_deg: tuple[float, float] = THETA_RANGE_DEG

    def __post_init__(self) -> None:
        e_low, e_high = self.energy_range_gev
        t_low, t_high = self.angle_range_deg
        if not ENERGY_RANGE_GEV[0] <= e_low < e_high <= ENERGY_RANGE_GEV[1]:
            raise ValueError(
                f"grid energy_range_gev {self.energy_range_gev} must be increasing within {ENERGY_RANGE_GEV}"
            )
        if not THETA_RANGE_DEG[0] <= t_low < t_high <= THETA_RANGE_DEG[1]:
            raise ValueError(f"grid angle_range_deg {self.angle_range_deg} must be increasing within {THETA_RANGE_DEG}")
        if not self.energies_gev or not self.angles_deg:
            raise ValueError("the grid needs at least one energy and one angle")
        if self.energy_half_width_gev <= 0 or self.angle_half_width_rad <= 0:
            raise ValueError("grid half widths must be > 0")
        for e in self.energies_gev:
            if not e_low <= e <= e_high:
                raise ValueError(f"grid energy {e} GeV lies outside the energy range {self.energy_range_gev}")
        for a in self.angles_deg:
            if not t_low <= a <= t_high:
                raise ValueError(f"grid angle {a} deg lies outside the angle range {self.angle_range_deg}")

    @classmethod
    def spanning(
        cls,
        energy_range_gev: tuple[float, float] = (10.0, 200.0),
        n_energies: int = 5,
        angles_deg: tuple[float, ...] = (62.0, 90.0, 118.0),
        energy_half_width_gev: float = 5.0,
        angle_half_width_rad: float = 0.1,
    ) -> ConditionsGrid:
        """``n_energies`` evenly spaced centres from ``low + half width`` to ``high - half width``."""
        if n_energies < 1:
            raise ValueError(f"n_energies must be >= 1, got {n_energies}")
        low, high = energy_range_gev
        centres = np.linspace(low + energy_half_width_gev, high - energy_half_width_gev, n_energies)
        return cls(
            energies_gev=tuple(round(float(e), 1) for e in centres),
            angles_deg=tuple(float(a) for a in angles_deg),
            energy_half_width_gev=energy_half_width_gev,
            angle_half_width_rad=angle_half_width_rad,
            energy_range_gev=(float(low), float(high)),
        )

    def cells(self) -> list[Cell]:
        e_low, e_high = self.energy_range_gev
        t_low, t_high = self.angle_range_deg
        half_deg = float(np.rad2deg(self.angle_half_width_rad))
        e_half = self.energy_half_width_gev
        return [
            Cell(
                energy_gev=float(e),
                theta_deg=float(a),
                energy_range_gev=(max(e - e_half, e_low), min(e + e_half, e_high)),
                theta_range_deg=(max(a - half_deg, t_low), min(a + half_deg, t_high)),
            )
            for e in self.energies_gev
            for a in self.angles_deg
        ]

    def to_dict(self) -> dict:
        return {
            "energies_gev": list(self.energies_gev),
            "angles_deg": list(self.angles_deg),
            "energy_half_width_gev": self.energy_half_width_gev,
            "angle_half_width_rad": self.angle_half_width_rad,
            "energy_range_gev": list(self.energy_range_gev),
            "angle_range_deg": list(self.angle_range_deg),
        }
