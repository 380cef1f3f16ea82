"""The Monte Carlo: a GFlash-style parametrized shower simulator, sampled event by event.

Per event it draws the correlated longitudinal parameters (ln T, ln alpha), a photon's first
conversion depth, then walks the shower axis in steps of one layer (or of a fraction of a layer,
so that no step is longer than 1 X0). Each step gets its share of the
energy (Gamma profile), its sampling fluctuation (Gamma-distributed, 0.11 sqrt(dE/GeV)) and its
number of energy spots (spot profile); every spot gets a depth inside the step, a radius from the
two-component radial profile and a uniform azimuth, and its visible energy is added to the cell it
falls in. Everything is vectorised over events and spots with NumPy; no Python loop runs per spot.

Reproducibility: events are simulated in blocks of :data:`BLOCK_EVENTS`, block ``b`` drawing from
its own stream ``SeedSequence(seed, spawn_key=(b,))``. The same seed gives bit-identical output,
and every complete block of a run stays the same when the run asks for more events.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.special import gammainc

from ..showers.schema import EVENTS_PER_CHUNK, shower_dataset
from ..version import __version__
from . import gflash
from .geometry import DEFAULT_GEOMETRY, Geometry, get_geometry
from .particles import PHOTON, pdg_code

#: The range the parametrization and the geometries are validated for.
ENERGY_RANGE_GEV = (1.0, 500.0)
THETA_RANGE_DEG = (60.0, 120.0)
BLOCK_EVENTS = EVENTS_PER_CHUNK

Range = float | tuple[float, float]


@dataclass(frozen=True)
class Conditions:
    """The incident particles of a block of events."""

    energy_gev: np.ndarray
    theta_rad: np.ndarray
    particle: np.ndarray

    def __len__(self) -> int:
        return len(self.energy_gev)


class Simulator(abc.ABC):
    """A shower Monte Carlo: turns incident particles into visible cell energies (MeV).

    The built-in implementation is :class:`GFlashSimulator`; a Geant4 backend implements the same
    method where Geant4 and its data sets are installed.
    """

    name: str
    version: str

    @abc.abstractmethod
    def simulate_block(self, conditions: Conditions, geometry: Geometry, rng: np.random.Generator) -> np.ndarray:
        """Return the visible energy per cell, shape ``(n, n_x, n_y, n_layers)``, float32, MeV."""


class GFlashSimulator(Simulator):
    """GFlash parametrized showers in a sampling calorimeter (see :mod:`dt_assets.physics.gflash`)."""

    name = "calotwin-gflash"
    version = __version__

    def __init__(self, tuning: gflash.GFlashTuning = gflash.DEFAULT_TUNING, max_spots_per_chunk: int = 1_000_000):
        if max_spots_per_chunk < 1:
            raise ValueError(f"max_spots_per_chunk must be >= 1, got {max_spots_per_chunk}")
        self.tuning = tuning
        self.max_spots_per_chunk = max_spots_per_chunk

    def simulate_block(self, conditions: Conditions, geometry: Geometry, rng: np.random.Generator) -> np.ndarray:
        steps = self.shower_steps(conditions, geometry, rng)
        out = np.zeros((len(conditions), *geometry.shape), dtype=np.float32)
        per_event = steps.n_spots.sum(axis=1)
        start = 0
        while start < len(conditions):
            # events [start, stop) hold at most max_spots_per_chunk spots (at least one event)
            cum = np.cumsum(per_event[start:])
            stop = start + max(1, int(np.searchsorted(cum, self.max_spots_per_chunk, side="right")))
            self._deposit_spots(steps, start, stop, geometry, rng, out[start:stop].reshape(-1))
            start = stop
        return out

    def shower_steps(self, conditions: Conditions, geometry: Geometry, rng: np.random.Generator) -> ShowerSteps:
        """Per event and per longitudinal step (one layer along the axis): energy, spots, radial shape."""
        tuning = self.tuning
        energy_gev = np.asarray(conditions.energy_gev, dtype=np.float64)
        n = len(energy_gev)
        moments = gflash.longitudinal_moments(energy_gev * 1e3, geometry, tuning)
        z1, z2 = rng.standard_normal((2, n))
        t_max, alpha = gflash.correlated_log_parameters(moments, z1, z2)
        t_spot, alpha_spot = gflash.spot_profile(t_max, alpha, geometry, tuning)
        conversion = rng.exponential(tuning.photon_conversion_x0, n)
        start_x0 = np.where(conditions.particle == PHOTON, conversion, 0.0)

        sin_t, cos_t = np.sin(conditions.theta_rad), np.cos(conditions.theta_rad)
        per_layer = steps_per_layer(geometry)
        step_x0 = geometry.layer_pitch_mm / per_layer / geometry.x0_mm / sin_t  # along the axis
        k = np.arange(geometry.n_layers * per_layer + 1)
        age = np.maximum(k[None, :] * step_x0[:, None] - start_x0[:, None], 0.0)  # shower age at step edges
        energy_cdf = gammainc(alpha[:, None], (alpha - 1.0)[:, None] / t_max[:, None] * age)
        deposited_mev = energy_gev[:, None] * 1e3 * np.diff(energy_cdf, axis=1)
        spot_cdf = gammainc(alpha_spot[:, None], (alpha_spot - 1.0)[:, None] / t_spot[:, None] * age)
        mean_spots = gflash.n_spots(energy_gev, tuning)[:, None] * np.diff(spot_cdf, axis=1)
        n_spots = np.floor(mean_spots + rng.random(mean_spots.shape)).astype(np.int64)  # unbiased rounding
        n_spots[(deposited_mev > 0) & (n_spots < 1)] = 1

        # sampling fluctuations per step: Gamma with mean dE and variance res^2 * dE * 1 GeV
        scale_mev = tuning.sampling_resolution**2 * 1e3
        shape = np.maximum(deposited_mev / scale_mev, 1e-300)
        fluctuated = np.where(deposited_mev > 0, rng.gamma(shape, scale_mev), 0.0)
        visible = fluctuated * geometry.sampling_fraction

        mid_age = np.maximum((k[:-1] + 0.5)[None, :] * step_x0[:, None] - start_x0[:, None], 0.0)
        tau = gflash.tau(mid_age, t_max[:, None], alpha[:, None], np.exp(moments.mean_log_alpha)[:, None])
        radial = gflash.radial_parameters(energy_gev[:, None], tau, geometry, tuning)
        return ShowerSteps(
            n_spots=n_spots,
            spot_energy_mev=visible / np.maximum(n_spots, 1),
            core_radius_mm=radial.core_radius * geometry.moliere_radius_mm,
            tail_radius_mm=radial.tail_radius * geometry.moliere_radius_mm,
            core_weight=radial.core_weight,
            step_mm=step_x0 * geometry.x0_mm,
            sin_theta=sin_t,
            cos_theta=cos_t,
        )

    def _deposit_spots(
        self,
        steps: ShowerSteps,
        start: int,
        stop: int,
        geometry: Geometry,
        rng: np.random.Generator,
        cells: np.ndarray,
    ) -> None:
        """Place the spots of events [start, stop) and add their energies to ``cells`` (flat, zeroed)."""
        n_layers, n_steps = geometry.n_layers, steps.n_spots.shape[1]
        n = stop - start
        counts = steps.n_spots[start:stop].ravel()
        step_of_spot = np.repeat(np.arange(n * n_steps, dtype=np.int64), counts)
        event = step_of_spot // n_steps
        step_index = (step_of_spot - event * n_steps).astype(np.float32)
        m = len(step_of_spot)
        u = rng.random((4, m), dtype=np.float32)

        def per_step(values: np.ndarray) -> np.ndarray:
            return values[start:stop].astype(np.float32).ravel()[step_of_spot]

        def per_event(values: np.ndarray) -> np.ndarray:
            return values[start:stop].astype(np.float32)[event]

        radius_scale = np.where(
            u[0] < per_step(steps.core_weight), per_step(steps.core_radius_mm), per_step(steps.tail_radius_mm)
        )
        radius = radius_scale * np.sqrt(u[1] / (1.0 - u[1]))
        phi = np.float32(2 * np.pi) * u[2]
        radial_x, radial_y = radius * np.cos(phi), radius * np.sin(phi)
        along = (step_index + u[3]) * per_event(steps.step_mm)  # mm along the axis from the face
        sin_t, cos_t = per_event(steps.sin_theta), per_event(steps.cos_theta)
        # the axis crosses x = 0 at the pivot depth; the radial plane is spanned by (sin, 0, -cos) and (0, 1, 0)
        z = along * sin_t - radial_x * cos_t
        x = (along * sin_t - np.float32(geometry.pivot_mm)) * (cos_t / sin_t) + radial_x * sin_t
        ix = np.floor(x / np.float32(geometry.cell_size_mm) + np.float32(geometry.n_x / 2)).astype(np.int64)
        iy = np.floor(radial_y / np.float32(geometry.cell_size_mm) + np.float32(geometry.n_y / 2)).astype(np.int64)
        iz = np.floor(z / np.float32(geometry.layer_pitch_mm)).astype(np.int64)
        inside = (ix >= 0) & (ix < geometry.n_x) & (iy >= 0) & (iy < geometry.n_y) & (iz >= 0) & (iz < n_layers)
        flat = ((event * geometry.n_x + ix) * geometry.n_y + iy) * n_layers + iz
        np.add.at(cells, flat[inside], per_step(steps.spot_energy_mev)[inside])  # spots outside leak


def steps_per_layer(geometry: Geometry) -> int:
    """Longitudinal steps per layer: enough that a step at normal incidence is about 1 X0 or less."""
    return max(1, int(np.ceil(geometry.layer_pitch_mm / geometry.x0_mm - 0.05)))


@dataclass(frozen=True)
class ShowerSteps:
    """Per (event, step) quantities of a block; per-event quantities are 1-D."""

    n_spots: np.ndarray
    spot_energy_mev: np.ndarray
    core_radius_mm: np.ndarray
    tail_radius_mm: np.ndarray
    core_weight: np.ndarray
    step_mm: np.ndarray
    sin_theta: np.ndarray
    cos_theta: np.ndarray


def _as_range(value: Range, name: str, allowed: tuple[float, float], unit: str) -> tuple[float, float]:
    low, high = (value, value) if np.isscalar(value) else tuple(value)  # type: ignore[misc]
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low > high:
        raise ValueError(f"{name} range is reversed: ({low}, {high}); give (low, high)")
    if low < allowed[0] or high > allowed[1]:
        raise ValueError(f"{name} must lie within [{allowed[0]}, {allowed[1]}] {unit}, got ({low}, {high})")
    return low, high


def sample_conditions(
    n: int, energy_gev: Range, theta_deg: Range, particle: str | int, rng: np.random.Generator
) -> Conditions:
    """Incident particles: energy and angle uniform in their ranges (or fixed)."""
    e_low, e_high = _as_range(energy_gev, "energy_gev", ENERGY_RANGE_GEV, "GeV")
    t_low, t_high = _as_range(theta_deg, "theta_deg", THETA_RANGE_DEG, "deg")
    energy = rng.uniform(e_low, e_high, n) if e_high > e_low else np.full(n, e_low)
    theta = rng.uniform(t_low, t_high, n) if t_high > t_low else np.full(n, t_low)
    return Conditions(
        energy_gev=energy, theta_rad=np.deg2rad(theta), particle=np.full(n, pdg_code(particle), dtype=np.int32)
    )


def simulate_blocks(
    n_events: int,
    energy_gev: Range,
    theta_deg: Range,
    particle: str | int = "e-",
    geometry: str | Geometry = DEFAULT_GEOMETRY,
    seed: int = 0,
    simulator: Simulator | None = None,
) -> Iterator[xr.Dataset]:
    """Simulate a run as a stream of datasets of at most :data:`BLOCK_EVENTS` events each.

    Memory stays bounded by one block, whatever ``n_events`` is.
    """
    if isinstance(n_events, bool) or not isinstance(n_events, (int, np.integer)) or n_events < 1:
        raise ValueError(f"n_events must be a positive integer, got {n_events!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    geo = get_geometry(geometry)
    code = pdg_code(particle)
    _as_range(energy_gev, "energy_gev", ENERGY_RANGE_GEV, "GeV")
    _as_range(theta_deg, "theta_deg", THETA_RANGE_DEG, "deg")
    sim = simulator or GFlashSimulator()
    attrs = {"simulator": sim.name, "simulator_version": sim.version, "seed": int(seed)}
    for block, first in enumerate(range(0, n_events, BLOCK_EVENTS)):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(block,))))
        conditions = sample_conditions(min(BLOCK_EVENTS, n_events - first), energy_gev, theta_deg, code, rng)
        deposits = sim.simulate_block(conditions, geo, rng)
        yield shower_dataset(deposits, conditions.energy_gev, conditions.theta_rad, conditions.particle, geo, attrs)


def simulate(
    n_events: int,
    energy_gev: Range,
    theta_deg: Range,
    particle: str | int = "e-",
    geometry: str | Geometry = DEFAULT_GEOMETRY,
    seed: int = 0,
) -> xr.Dataset:
    """Simulate ``n_events`` showers in memory; see :func:`simulate_blocks` for the streaming form.

    ``energy_gev`` (GeV) and ``theta_deg`` (degrees, 90 = perpendicular to the face) take a number
    or a ``(low, high)`` range sampled uniformly. Returns a dataset of the CaloTwin schema.
    """
    blocks = list(simulate_blocks(n_events, energy_gev, theta_deg, particle, geometry, seed))
    ds = (
        blocks[0]
        if len(blocks) == 1
        else xr.concat(
            blocks, dim="event", data_vars="minimal", coords="minimal", compat="override", combine_attrs="override"
        )
    )
    ds.attrs["n_events"] = int(n_events)
    return ds
