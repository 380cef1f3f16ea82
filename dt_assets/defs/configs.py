"""Launchpad configuration of the data assets: typed, with a default and a description per field."""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field, field_validator, model_validator

from ..physics.geometry import DEFAULT_GEOMETRY, GEOMETRIES
from ..physics.simulator import ENERGY_RANGE_GEV, THETA_RANGE_DEG
from ..runs import SimulationSpec


def _known_geometry(value: str | None) -> str | None:
    if value is not None and value not in GEOMETRIES:
        raise ValueError(f"unknown geometry {value!r}; presets: {sorted(GEOMETRIES)}")
    return value


class SimulationConfig(dg.Config):
    """One Monte Carlo run of the parametrized (GFlash) shower simulator."""

    n_events: int = Field(default=1000, ge=1, description="Number of showers to simulate.")
    energy_min_gev: float = Field(
        default=10.0, ge=ENERGY_RANGE_GEV[0], le=ENERGY_RANGE_GEV[1], description="Lowest primary energy (GeV)."
    )
    energy_max_gev: float = Field(
        default=100.0, ge=ENERGY_RANGE_GEV[0], le=ENERGY_RANGE_GEV[1], description="Highest primary energy (GeV)."
    )
    theta_min_deg: float = Field(
        default=60.0,
        ge=THETA_RANGE_DEG[0],
        le=THETA_RANGE_DEG[1],
        description="Lowest polar angle of incidence (degrees; 90 = perpendicular to the face).",
    )
    theta_max_deg: float = Field(
        default=120.0, ge=THETA_RANGE_DEG[0], le=THETA_RANGE_DEG[1], description="Highest polar angle (degrees)."
    )
    particle: Literal["e-", "gamma"] = Field(default="e-", description="Incident particle.")
    geometry: str = Field(default=DEFAULT_GEOMETRY, description=f"Geometry preset, one of {sorted(GEOMETRIES)}.")
    seed: int = Field(default=0, ge=0, description="Random seed; the same config and seed give the same run.")

    _check_geometry = field_validator("geometry")(_known_geometry)

    @model_validator(mode="after")
    def _ranges_in_order(self) -> SimulationConfig:
        if self.energy_min_gev > self.energy_max_gev:
            raise ValueError(
                f"energy range reversed: energy_min_gev={self.energy_min_gev} > energy_max_gev={self.energy_max_gev}"
            )
        if self.theta_min_deg > self.theta_max_deg:
            raise ValueError(
                f"angle range reversed: theta_min_deg={self.theta_min_deg} > theta_max_deg={self.theta_max_deg}"
            )
        return self

    def to_spec(self) -> SimulationSpec:
        return SimulationSpec(
            n_events=self.n_events,
            energy_gev=(self.energy_min_gev, self.energy_max_gev),
            theta_deg=(self.theta_min_deg, self.theta_max_deg),
            particle=self.particle,
            geometry=self.geometry,
            seed=self.seed,
        )


class ImportFileConfig(dg.Config):
    """An external shower file to ingest as a run: 3DGAN or CaloChallenge HDF5, or a zarr store."""

    path: str = Field(description="Local path or fsspec URL of the file.")
    geometry: str | None = Field(
        default=None, description="Geometry preset; empty means the preset matching the file's grid."
    )
    particle: Literal["e-", "gamma"] = Field(
        default="e-", description="Incident particle, when the file does not record it."
    )

    _check_geometry = field_validator("geometry")(_known_geometry)


class SimulationRunsConfig(dg.Config):
    """Runs to register: each becomes one partition of ``raw_showers`` (registering twice is a no-op)."""

    simulations: list[SimulationConfig] = Field(
        default_factory=lambda: [SimulationConfig()], description="Monte Carlo runs to register."
    )
    import_files: list[ImportFileConfig] = Field(default_factory=list, description="External files to register.")
