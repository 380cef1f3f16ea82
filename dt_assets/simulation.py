"""The Monte Carlo: a GFlash-style parametrized shower simulator, sampled event by event.

Per event it draws the correlated longitudinal parameters (ln T, ln alpha), a photon's first
conversion depth, then walks the shower axis in steps of one layer (or of a fraction of a layer,
so that no step is much longer than 1 X0). Each step gets its share of the energy (Gamma
profile), its sampling fluctuation (Gamma-distributed, sigma/dE = 0.11 / sqrt(dE/GeV)) and its
number of energy spots (spot profile); every spot gets a depth inside the step, a radius from the
two-component radial profile and a uniform azimuth, and its visible energy is added to the cell it
falls in. Everything is vectorised over events and spots with NumPy; no Python loop runs per spot.

Reproducibility: events are simulated in blocks of :data:`BLOCK_EVENTS`, block ``b`` drawing from
its own stream ``SeedSequence(seed, spawn_key=(b,))``. The same seed gives bit-identical output,
and every complete block of a run stays the same when the run asks for more events.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import xarray as xr

from .physics import gflash
from .physics.geometry import DEFAULT_GEOMETRY, Geometry, get_geometry
from .physics.particles import PHOTON, pdg_code
from .showers.schema import EVENTS_PER_CHUNK, concat_blocks, shower_dataset
from .version import __version__

#: The range the parametrization and the geometries are validated for.
ENERGY_RANGE_GEV = (1.0, 500.0)
THETA_RANGE_DEG = (60.0, 120.0)
BLOCK_EVENTS = EVENTS_PER_CHUNK

Range = float | tuple[float, float]


def gammainc(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Regularized lower incomplete gamma function P(a, x), in float64 (torch's, so SciPy is not needed)."""
    a, x = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(x, dtype=np.float64))
    return torch.special.gammainc(
        torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(x))
    ).numpy()


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

    def __init__(self, tuning: gflash.GFlashTuning = gflash.DEFAULT_TUNING, max_spots_per_chunk: int = 262_144):
        if max_spots_per_chunk < 1:
            raise ValueError(f"max_spots_per_chunk must be >= 1, got {max_spots_per_chunk}")
        self.tuning = tuning
        self.max_spots_per_chunk = max_spots_per_chunk

    def simulate_block(self, conditions: Conditions, geometry: Geometry, rng: np.random.Generator) -> np.ndarray:
        steps = self.shower_steps(conditions, geometry, rng)
        out = np.zeros((len(conditions), *geometry.shape), dtype=np.float32)
        # chunks of whole events holding at most max_spots_per_chunk spots (at least one event each)
        cum = np.concatenate([[0], np.cumsum(steps.n_spots.sum(axis=1))])
        bounds = [0]
        while bounds[-1] < len(conditions):
            first = bounds[-1]
            last = int(np.searchsorted(cum, cum[first] + self.max_spots_per_chunk, side="right")) - 1
            bounds.append(max(first + 1, min(last, len(conditions))))
        scratch = _Scratch(int(max(cum[b] - cum[a] for a, b in itertools.pairwise(bounds))))
        for start, stop in itertools.pairwise(bounds):
            self._deposit_spots(steps, start, stop, geometry, rng, out[start:stop].reshape(-1), scratch)
        return out

    def shower_steps(self, conditions: Conditions, geometry: Geometry, rng: np.random.Generator) -> ShowerSteps:
        """Per event and per longitudinal step along the axis: visible energy, spots, radial shape."""
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
        scratch: _Scratch,
    ) -> None:
        """Place the spots of events [start, stop) and add their energies to ``cells`` (flat, zeroed).

        Positions are computed in cell units. Along the axis a spot lies at ``(k + u) * step`` from
        the face (step k, u uniform); the axis crosses x = 0 at the pivot depth; the radial offset
        ``r (cos phi, sin phi)`` lies in the plane spanned by (sin theta, 0, -cos theta) and (0, 1, 0).
        Per-step quantities are computed once per step, then gathered to the spots. Every per-spot
        array lives in ``scratch`` (``out=`` everywhere): fresh allocations of this size page-fault,
        which costs more than the arithmetic.
        """
        f32 = np.float32
        n, n_steps = stop - start, steps.n_spots.shape[1]
        counts = steps.n_spots[start:stop].ravel()
        m = int(counts.sum())
        k = np.arange(n_steps, dtype=np.float64)[None, :]
        sin_t, cos_t = steps.sin_theta[start:stop, None], steps.cos_theta[start:stop, None]
        step_mm = steps.step_mm[start:stop, None]
        cell, pitch = geometry.cell_size_mm, geometry.layer_pitch_mm
        along_z = k * step_mm * sin_t  # depth of each step's start on the axis
        per_step = {
            "x0": ((along_z - geometry.pivot_mm) * cos_t / sin_t) / cell + geometry.n_x / 2,
            "x_step": step_mm * cos_t / cell,
            "x_radial": sin_t / cell,
            "z0": along_z / pitch,
            "z_step": step_mm * sin_t / pitch,
            "z_radial": cos_t / pitch,
            "core": steps.core_weight[start:stop],
            "core_mm": steps.core_radius_mm[start:stop],
            "tail_mm": steps.tail_radius_mm[start:stop],
            "energy": steps.spot_energy_mev[start:stop],
        }
        step_of_spot = step_index(counts, scratch.marks[:m], scratch.ints[0, :m])
        v = {}
        for row, (name, values) in enumerate(per_step.items()):
            source = np.ascontiguousarray(np.broadcast_to(values, (n, n_steps)), dtype=f32).ravel()
            v[name] = np.take(source, step_of_spot, out=scratch.floats[row, :m], mode="clip")
        cell_of_event = np.repeat(np.arange(n, dtype=np.int64) * geometry.n_cells, n_steps)
        flat = np.take(cell_of_event, step_of_spot, out=scratch.ints[1, :m], mode="clip")
        u = [rng.random(dtype=f32, out=scratch.uniforms[i, :m]) for i in range(4)]
        radius, tmp = scratch.floats[len(per_step), :m], scratch.floats[len(per_step) + 1, :m]
        inside, test = scratch.masks[0, :m], scratch.masks[1, :m]

        # radius: core or tail component, r = R sqrt(u / (1 - u))
        np.copyto(radius, v["tail_mm"])
        np.less(u[0], v["core"], out=inside)
        np.copyto(radius, v["core_mm"], where=inside)
        np.subtract(f32(1), u[1], out=tmp)
        np.divide(u[1], tmp, out=tmp)
        np.sqrt(tmp, out=tmp)
        np.multiply(radius, tmp, out=radius)
        # azimuth: tmp = r cos(phi) (in the tilted plane), u[2] = r sin(phi) (along y)
        np.multiply(u[2], f32(2 * np.pi), out=u[2])
        np.cos(u[2], out=tmp)
        np.sin(u[2], out=u[2])
        np.multiply(radius, tmp, out=tmp)
        np.multiply(radius, u[2], out=u[2])
        # positions in cell units: x0 <- x, z0 <- z, u[2] <- y
        for axis, sign in (("x", 1), ("z", -1)):
            np.multiply(u[3], v[f"{axis}_step"], out=v[f"{axis}_step"])
            np.add(v[f"{axis}0"], v[f"{axis}_step"], out=v[f"{axis}0"])
            np.multiply(tmp, v[f"{axis}_radial"], out=v[f"{axis}_radial"])
            (np.add if sign > 0 else np.subtract)(v[f"{axis}0"], v[f"{axis}_radial"], out=v[f"{axis}0"])
        np.multiply(u[2], f32(1 / cell), out=u[2])
        np.add(u[2], f32(geometry.n_y / 2), out=u[2])
        # spots outside the grid leak: their energy is zeroed, their index clipped into range
        inside.fill(True)
        for coordinate, size in ((v["x0"], geometry.n_x), (u[2], geometry.n_y), (v["z0"], geometry.n_layers)):
            np.greater_equal(coordinate, 0, out=test)
            np.logical_and(inside, test, out=inside)
            np.less(coordinate, size, out=test)
            np.logical_and(inside, test, out=inside)
            np.clip(coordinate, 0, size - 1, out=coordinate)
        np.logical_not(inside, out=test)
        np.copyto(v["energy"], 0, where=test)
        index = scratch.ints[0, :m]  # step_of_spot is no longer needed
        for coordinate, stride in (
            (v["x0"], geometry.n_y * geometry.n_layers),
            (u[2], geometry.n_layers),
            (v["z0"], 1),
        ):
            np.copyto(index, coordinate, casting="unsafe")  # truncation: coordinates are >= 0
            if stride != 1:
                np.multiply(index, stride, out=index)
            np.add(flat, index, out=flat)
        np.add.at(cells, flat, v["energy"])


class _Scratch:
    """Per-block buffers for the spot arithmetic, reused by every chunk of the block."""

    def __init__(self, capacity: int):
        self.floats = np.empty((12, capacity), dtype=np.float32)
        self.uniforms = np.empty((4, capacity), dtype=np.float32)
        self.ints = np.empty((2, capacity), dtype=np.int64)
        self.masks = np.empty((2, capacity), dtype=bool)
        self.marks = np.empty(capacity, dtype=np.int32)


def step_index(counts: np.ndarray, marks: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """``np.repeat(np.arange(len(counts)), counts)``, computed with a cumulative sum (several times faster).

    ``marks`` (int32) and ``out`` (int64), of length ``counts.sum()``, are optional work buffers.
    """
    total = int(counts.sum())
    marks = np.zeros(total, dtype=np.int32) if marks is None else marks
    marks.fill(0)
    ends = np.cumsum(counts)[:-1]
    np.add.at(marks, ends[ends < total], 1)  # empty steps mark the same place twice
    return np.cumsum(marks, dtype=np.int64, out=out)


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
    if np.isscalar(value):
        low = high = float(cast(float, value))
    else:  # a pair (a list or an array too): anything else fails to unpack
        low, high = (float(v) for v in cast(Iterable[float], value))
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

    Memory stays bounded by one block, whatever ``n_events`` is. Arguments are checked here, before
    the first block is asked for.
    """
    run = RunArguments.checked(n_events, energy_gev, theta_deg, particle, geometry, seed)
    sim = simulator or GFlashSimulator()
    return _blocks(run, sim)


def _blocks(run: RunArguments, sim: Simulator) -> Iterator[xr.Dataset]:
    attrs = {"simulator": sim.name, "simulator_version": sim.version, "seed": run.seed}
    for block, first in enumerate(range(0, run.n_events, BLOCK_EVENTS)):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(run.seed, spawn_key=(block,))))
        n = min(BLOCK_EVENTS, run.n_events - first)
        conditions = sample_conditions(n, run.energy_gev, run.theta_deg, run.particle, rng)
        deposits = sim.simulate_block(conditions, run.geometry, rng)
        yield shower_dataset(
            deposits, conditions.energy_gev, conditions.theta_rad, conditions.particle, run.geometry, attrs
        )


@dataclass(frozen=True)
class RunArguments:
    """The arguments of a simulation run, checked and normalised."""

    n_events: int
    energy_gev: tuple[float, float]
    theta_deg: tuple[float, float]
    particle: int
    geometry: Geometry
    seed: int

    @classmethod
    def checked(
        cls,
        n_events: int,
        energy_gev: Range,
        theta_deg: Range,
        particle: str | int,
        geometry: str | Geometry,
        seed: int,
    ) -> RunArguments:
        """Raise ``ValueError`` naming the argument if any is out of range or of the wrong kind."""
        if isinstance(n_events, bool) or not isinstance(n_events, (int, np.integer)) or n_events < 1:
            raise ValueError(f"n_events must be a positive integer, got {n_events!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        return cls(
            n_events=int(n_events),
            energy_gev=_as_range(energy_gev, "energy_gev", ENERGY_RANGE_GEV, "GeV"),
            theta_deg=_as_range(theta_deg, "theta_deg", THETA_RANGE_DEG, "deg"),
            particle=pdg_code(particle),
            geometry=get_geometry(geometry),
            seed=int(seed),
        )


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
    ds = concat_blocks(list(simulate_blocks(n_events, energy_gev, theta_deg, particle, geometry, seed)))
    ds.attrs["n_events"] = int(n_events)
    return ds
