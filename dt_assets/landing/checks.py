"""What a landed file must satisfy: a safe name, the shower schema, the allowed ranges and a plausible response.

:class:`LandingChecks` holds the settings; :func:`read_entry` reads an HDF5 file or zarr store completely
and checks it (in the reader's child process, see :meth:`~dt_assets.landing.Landing.process`); a failed
check is a :class:`RefusedError` carrying its code (one of :data:`CHECKS`) and a sentence.

Units: primary energy in GeV, angles in degrees in the checks and messages
(radians in the data), deposits in MeV in the data and GeV in messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..isolation import Limits
from ..physics.geometry import get_geometry
from ..physics.particles import particle_name, pdg_code
from ..showers.errors import ShowerDataError, UnsafeHdf5Error
from ..showers.hdf5 import hdf5_blocks
from ..showers.schema import DEPOSIT, dataset_geometry, validate_showers
from ..showers.store import iter_blocks, read_showers
from ..simulation import ENERGY_RANGE_GEV, THETA_RANGE_DEG

#: Accepted data: HDF5 files by these suffixes, zarr stores (directories) by this one.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIX = ".zarr"
#: Check codes of :class:`~dt_assets.landing.Quarantined`.
CHECKS = (
    "unsafe_name",
    "symlink_outside",
    "symlink",
    "empty",
    "unsupported_type",
    "unreadable",
    "bad_content",
    "out_of_range",
    "unsafe_hdf5",
    "no_energy",
    "bad_response",
    "reader_crashed",
    "reader_out_of_memory",
    "reader_timeout",
)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_UNREADABLE_HDF5 = ("not a readable HDF5 file, or a truncated one", "truncated or corrupt")
_THETA_TOLERANCE_RAD = 1e-6
#: The longest safe name (characters).
MAX_NAME = 255
_MAX_SANITIZED = 120


def safe_name(name: str) -> bool:
    """Whether ``name`` is a plain file name: letters, digits and ``. _ + -``, starting with a letter or
    digit, no ``..``, at most 255 characters (so no path separators, control characters or newlines)."""
    return len(name) <= MAX_NAME and ".." not in name and _SAFE_NAME.fullmatch(name) is not None


def sanitized(name: str) -> str:
    """A safe stand-in for ``name``: characters outside ``[A-Za-z0-9._+-]`` become ``_``, runs of dots
    collapse to one, at most 120 characters (never empty)."""
    clean = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._+-]", "_", name))
    return clean[:_MAX_SANITIZED] or "_"


@dataclass(frozen=True)
class LandingChecks:
    """What a landed file must satisfy beyond the shower schema, and what to assume when it does not say."""

    #: primary energies must lie inside (GeV, inclusive)
    energy_range_gev: tuple[float, float] = ENERGY_RANGE_GEV
    #: incidence angles must lie inside (degrees, 90 = perpendicular to the face; 1e-6 rad tolerance)
    theta_range_deg: tuple[float, float] = THETA_RANGE_DEG
    #: particle recorded for files that do not say (canonical name after validation)
    particle: str = "e-"
    #: geometry preset the files must fit; None: the preset matching each file's grid
    geometry: str | None = None
    #: the largest fraction of showers that may carry no visible energy at all
    max_empty_fraction: float = 0.01
    #: the mean visible fraction (E_sum / E_p over the showers) must lie within these multiples of the
    #: geometry's sampling fraction (a wide window: it catches empty files, unit mix-ups, total instead of
    #: visible energy, not a different calorimeter)
    response_window: tuple[float, float] = (0.1, 10.0)
    #: each file is read in a child process that may use this much memory (MB) and time (s)
    reader_memory_mb: int = 4096
    reader_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "energy_range_gev", _range(self.energy_range_gev, "energy_range_gev", 0.0, math.inf))
        if self.energy_range_gev[0] <= 0:
            raise ValueError(f"energy_range_gev must be positive, got {self.energy_range_gev}")
        object.__setattr__(self, "theta_range_deg", _range(self.theta_range_deg, "theta_range_deg", 0.0, 180.0))
        try:
            object.__setattr__(self, "particle", particle_name(pdg_code(self.particle)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"particle: {exc}") from None
        if self.geometry is not None:
            try:
                get_geometry(self.geometry)
            except ValueError as exc:
                raise ValueError(f"geometry: {exc}") from None
        if not (isinstance(self.max_empty_fraction, int | float) and 0 <= self.max_empty_fraction <= 1):
            raise ValueError(f"max_empty_fraction must lie within [0, 1], got {self.max_empty_fraction!r}")
        window = _range(self.response_window, "response_window", 0.0, math.inf)
        if window[0] <= 0:
            raise ValueError(f"response_window must be positive multiples, got {self.response_window}")
        object.__setattr__(self, "response_window", window)
        try:
            self.reader_limits()
        except ValueError as exc:
            raise ValueError(f"reader_{exc}") from None

    def reader_limits(self) -> Limits:
        """The memory and time each file's reader may use."""
        return Limits(memory_mb=self.reader_memory_mb, timeout_s=self.reader_timeout_s)


def _range(value: Sequence[float], field: str, low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        raise ValueError(f"{field} must be an ordered (low, high) range, got {value!r}")
    if a < low or b > high:
        raise ValueError(f"{field} must lie within [{low:g}, {high:g}], got {value!r}")
    return a, b


DEFAULT_CHECKS = LandingChecks()


class RefusedError(Exception):
    """An entry fails a check (internal to the landing: turned into a :class:`~dt_assets.landing.Quarantined`)."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check, self.reason = check, reason


#: What a reader that died in its child process says about the file, by the way it died.
READER_FAILURES = {
    "crashed": "the file makes the reading library crash",
    "out_of_memory": "reading it needs more memory than the landing's reader_memory_mb allows",
    "timeout": "reading it takes longer than the landing's reader_timeout_s allows",
}


def read_entry(url: str, is_dir: bool, checks: LandingChecks, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """Read a landed HDF5 file or zarr store completely and check it: ``{"read": [layout, geometry, events]}``,
    or ``{"refused": [check, reason]}``. Runs in the reader's child process (``Landing._read``)."""
    try:
        if is_dir:
            return {"read": list(_read_zarr(url, checks, storage_options))}
        return {"read": list(_read_hdf5(url, checks, storage_options))}
    except RefusedError as refused:
        return {"refused": [refused.check, refused.reason]}


def _read_hdf5(url: str, checks: LandingChecks, storage_options: Mapping[str, Any]) -> tuple[str, str, int]:
    layout = geometry = ""
    response = _Response(checks)
    try:
        for block in hdf5_blocks(url, checks.geometry, checks.particle, storage_options):
            if response.n_events == 0:
                layout, geometry = str(block.attrs["source_layout"]), str(block.attrs["geometry"])
            _check_ranges(block, checks, first_event=response.n_events)
            response.add(block)
    except UnsafeHdf5Error as exc:
        raise RefusedError("unsafe_hdf5", exc.problem) from None
    except ShowerDataError as exc:
        unreadable = any(marker in exc.problem for marker in _UNREADABLE_HDF5)
        raise RefusedError("unreadable" if unreadable else "bad_content", exc.problem) from None
    response.check()
    return layout, geometry, response.n_events


def _read_zarr(url: str, checks: LandingChecks, storage_options: Mapping[str, Any]) -> tuple[str, str, int]:
    try:
        ds = read_showers(url, storage_options, validate=False)
    except ShowerDataError as exc:
        raise RefusedError("unreadable", exc.problem) from None
    response = _Response(checks)
    with ds:
        geometry = str(ds.attrs.get("geometry", ""))
        if checks.geometry is not None and geometry != checks.geometry:
            raise RefusedError("bad_content", f"geometry {geometry!r}, expected {checks.geometry!r}")
        for block in iter_blocks(ds):
            try:
                validate_showers(block, url, first_event=response.n_events)
            except ShowerDataError as exc:
                raise RefusedError("bad_content", exc.problem) from None
            _check_ranges(block, checks, first_event=response.n_events)
            response.add(block)
    if response.n_events == 0:
        raise RefusedError("bad_content", "contains no events")
    response.check()
    return "zarr", geometry, response.n_events


class _Response:
    """Showers without visible energy, and the mean visible fraction, over a file's blocks."""

    def __init__(self, checks: LandingChecks) -> None:
        self.checks = checks
        self.n_events = self.n_empty = 0
        self.fraction_sum = 0.0
        self.sampling_fraction: float | None = None

    def add(self, block: xr.Dataset) -> None:
        n = block.sizes["event"]
        visible_gev = block[DEPOSIT].values.reshape(n, -1).sum(axis=1, dtype=np.float64) * 1e-3
        self.n_empty += int(np.count_nonzero(visible_gev <= 0))
        self.fraction_sum += float(np.sum(visible_gev / block["primary_energy"].values.astype(np.float64)))
        self.n_events += n
        if self.sampling_fraction is None:
            self.sampling_fraction = dataset_geometry(block).sampling_fraction

    def check(self) -> None:
        if self.n_events == 0:
            return
        empty = self.n_empty / self.n_events
        if empty > self.checks.max_empty_fraction:
            raise RefusedError(
                "no_energy",
                f"{self.n_empty} of {self.n_events} showers ({empty:.1%}) carry no visible energy at all "
                f"(at most {self.checks.max_empty_fraction:.1%} may)",
            )
        mean = self.fraction_sum / self.n_events
        low, high = (f * (self.sampling_fraction or 0.0) for f in self.checks.response_window)
        if not low <= mean <= high:
            raise RefusedError(
                "bad_response",
                f"mean visible fraction E_sum/E_p {mean:.4g} is outside {low:.3g}-{high:.3g} "
                f"({self.checks.response_window[0]:g}-{self.checks.response_window[1]:g} x the geometry's "
                f"sampling fraction {self.sampling_fraction:.4g}): are the units right, is it visible energy?",
            )


def _check_ranges(block: xr.Dataset, checks: LandingChecks, first_event: int = 0) -> None:
    """Refuse a block whose primary energies or angles leave the allowed ranges, or whose events deposit
    more than their primary energy (a units mistake). ``first_event`` numbers the events in messages."""
    energy = np.asarray(block["primary_energy"].values, dtype=np.float64)
    e0, e1 = checks.energy_range_gev
    bad = np.flatnonzero((energy < e0) | (energy > e1))
    if bad.size:
        i = int(bad[0])
        raise RefusedError(
            "out_of_range",
            f"primary energy {energy[i]:g} GeV in event {first_event + i} is outside the allowed range "
            f"{e0:g}-{e1:g} GeV",
        )
    theta = np.asarray(block["theta"].values, dtype=np.float64)
    t0, t1 = checks.theta_range_deg
    bad = np.flatnonzero(
        (theta < math.radians(t0) - _THETA_TOLERANCE_RAD) | (theta > math.radians(t1) + _THETA_TOLERANCE_RAD)
    )
    if bad.size:
        i = int(bad[0])
        raise RefusedError(
            "out_of_range",
            f"theta {math.degrees(theta[i]):g} deg in event {first_event + i} is outside the allowed range "
            f"{t0:g}-{t1:g} deg",
        )
    deposited_gev = block[DEPOSIT].values.reshape(block.sizes["event"], -1).sum(axis=1, dtype=np.float64) * 1e-3
    bad = np.flatnonzero(deposited_gev > energy * (1 + 1e-6))
    if bad.size:
        i = int(bad[0])
        raise RefusedError(
            "out_of_range",
            f"event {first_event + i} deposits {deposited_gev[i]:g} GeV, more than its primary energy "
            f"{energy[i]:g} GeV: are the units right?",
        )
