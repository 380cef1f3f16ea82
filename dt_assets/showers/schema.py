"""The shower dataset: an ``xarray.Dataset`` with units, geometry and provenance, and its validation.

Variables (docs/design.md, "Units and data model"):

- ``energy_deposit(event, x, y, z)`` float32, visible (sensor) energy in MeV;
- ``primary_energy(event)`` in GeV, ``theta(event)`` polar angle in rad (pi/2 = perpendicular to
  the face), ``particle(event)`` PDG code;
- coordinates ``x``, ``y`` (cell centres, mm), ``z`` (layer index) and ``depth(z)`` (mm).

Attributes carry the geometry (name and JSON), its effective quantities (``x0_mm``,
``moliere_radius_mm``, ``critical_energy_mev``, ``z_eff``, ``sampling_fraction``, ...), and the
provenance (simulator, seed, source file and checksum, creation time, code version).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import xarray as xr

from ..physics.geometry import Geometry, get_geometry
from ..physics.particles import NAMES as PARTICLE_NAMES
from ..version import __version__
from .errors import ShowerDataError

SCHEMA_VERSION = 1
DEPOSIT = "energy_deposit"
EVENT_VARIABLES = ("primary_energy", "theta", "particle")
UNITS = {
    DEPOSIT: "MeV",
    "primary_energy": "GeV",
    "theta": "rad",
    "particle": "1",
    "x": "mm",
    "y": "mm",
    "depth": "mm",
}
#: Events per chunk of ``energy_deposit`` on disk, and per block when streaming.
EVENTS_PER_CHUNK = 256


def shower_dataset(
    energy_deposit: np.ndarray,
    primary_energy_gev: np.ndarray,
    theta_rad: np.ndarray,
    particle: np.ndarray,
    geometry: Geometry,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Assemble a shower dataset of the CaloTwin schema (no validation; see :func:`validate_showers`)."""
    n = energy_deposit.shape[0]
    ds = xr.Dataset(
        {
            DEPOSIT: (
                ("event", "x", "y", "z"),
                np.asarray(energy_deposit, dtype=np.float32),
                {"units": UNITS[DEPOSIT], "long_name": "visible (sensor) energy deposit per cell"},
            ),
            "primary_energy": (
                ("event",),
                np.asarray(primary_energy_gev, dtype=np.float64).reshape(n),
                {"units": UNITS["primary_energy"], "long_name": "energy of the incident particle"},
            ),
            "theta": (
                ("event",),
                np.asarray(theta_rad, dtype=np.float64).reshape(n),
                {"units": UNITS["theta"], "long_name": "polar angle of incidence, pi/2 = perpendicular to the face"},
            ),
            "particle": (
                ("event",),
                np.asarray(particle, dtype=np.int32).reshape(n),
                {"units": UNITS["particle"], "long_name": "PDG code of the incident particle"},
            ),
        },
        coords=geometry_coords(geometry),
    )
    ds.attrs.update(geometry_attrs(geometry))
    ds.attrs.update(
        {
            "calotwin_schema": SCHEMA_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "code_version": __version__,
        }
    )
    if attrs:
        ds.attrs.update(attrs)
    return ds


def concat_blocks(blocks: list[xr.Dataset]) -> xr.Dataset:
    """Join blocks of one run along ``event`` (attributes of the first block)."""
    if len(blocks) == 1:
        return blocks[0]
    return xr.concat(
        blocks, dim="event", data_vars="minimal", coords="minimal", compat="override", combine_attrs="override"
    )


def geometry_coords(geometry: Geometry) -> dict[str, tuple]:
    """The coordinate variables of a geometry's cell grid."""
    return {
        "x": ("x", geometry.x_centres_mm(), {"units": "mm", "long_name": "cell centre x"}),
        "y": ("y", geometry.y_centres_mm(), {"units": "mm", "long_name": "cell centre y"}),
        "z": ("z", np.arange(geometry.n_layers, dtype=np.int32), {"long_name": "layer index"}),
        "depth": ("z", geometry.layer_depths_mm(), {"units": "mm", "long_name": "depth of the layer's sensor centre"}),
    }


def geometry_attrs(geometry: Geometry) -> dict[str, Any]:
    """Dataset attributes describing a geometry: its name, its JSON and its effective quantities."""
    return {"geometry": geometry.name, "geometry_json": geometry.to_json(), **geometry.effective()}


def dataset_geometry(ds: xr.Dataset) -> Geometry:
    """The geometry a dataset was made with (from ``geometry_json``, else the named preset)."""
    if "geometry_json" in ds.attrs:
        return Geometry.from_dict(json.loads(ds.attrs["geometry_json"]))
    return get_geometry(ds.attrs["geometry"])


def validate_showers(
    ds: xr.Dataset, source: str, block_events: int = EVENTS_PER_CHUNK, deposits: bool = True, first_event: int = 0
) -> None:
    """Raise :class:`ShowerDataError` naming ``source`` and the problem if ``ds`` breaks the schema.

    Checks: variables and dimensions present, matching lengths, the geometry's grid shape, units,
    finite and in-range conditions, known particles, and (unless ``deposits`` is false) finite,
    non-negative deposits, scanned in blocks of events so a lazily opened store is never loaded whole.
    ``first_event`` is the index of ``ds``'s first event in a larger stream (for the messages).
    """
    missing = [v for v in (DEPOSIT, *EVENT_VARIABLES) if v not in ds.variables]
    if missing:
        raise ShowerDataError(source, f"missing variable(s) {missing}")
    if ds[DEPOSIT].dims != ("event", "x", "y", "z"):
        raise ShowerDataError(source, f"{DEPOSIT} has dimensions {ds[DEPOSIT].dims}, expected ('event', 'x', 'y', 'z')")
    for name in EVENT_VARIABLES:
        if ds[name].dims != ("event",):
            raise ShowerDataError(source, f"{name} has dimensions {ds[name].dims}, expected ('event',)")
    if ds.sizes["event"] == 0:
        raise ShowerDataError(source, "contains no events")
    if "geometry" not in ds.attrs:
        raise ShowerDataError(source, "missing attribute 'geometry'")
    try:
        geometry = dataset_geometry(ds)
    except (ValueError, KeyError, TypeError) as exc:
        raise ShowerDataError(source, f"bad geometry description: {exc}") from None
    grid = tuple(ds.sizes[d] for d in ("x", "y", "z"))
    if grid != geometry.shape:
        raise ShowerDataError(source, f"cell grid {grid} does not match geometry {geometry.name} {geometry.shape}")
    for name, unit in UNITS.items():
        if name in ds.variables and name != "particle" and ds[name].attrs.get("units") != unit:
            raise ShowerDataError(source, f"{name} must be in {unit}, found units={ds[name].attrs.get('units')!r}")
    energy = np.asarray(ds["primary_energy"].values, dtype=np.float64)
    if not np.all(np.isfinite(energy)):
        raise ShowerDataError(source, f"primary_energy has {int(np.sum(~np.isfinite(energy)))} NaN/inf value(s)")
    if np.any(energy <= 0):
        raise ShowerDataError(source, f"primary_energy has {int(np.sum(energy <= 0))} value(s) <= 0 GeV")
    theta = np.asarray(ds["theta"].values, dtype=np.float64)
    if not np.all(np.isfinite(theta)):
        raise ShowerDataError(source, f"theta has {int(np.sum(~np.isfinite(theta)))} NaN/inf value(s)")
    if np.any((theta < 0) | (theta > np.pi)):
        raise ShowerDataError(source, "theta outside [0, pi] rad (is it in degrees?)")
    unknown = sorted(set(np.unique(ds["particle"].values).tolist()) - set(PARTICLE_NAMES))
    if unknown:
        raise ShowerDataError(source, f"unknown particle code(s) {unknown}; supported: {sorted(PARTICLE_NAMES)}")
    if not deposits:
        return
    for start in range(0, ds.sizes["event"], block_events):
        block = np.asarray(ds[DEPOSIT].isel(event=slice(start, start + block_events)).values)
        check_deposits(block, source, first_event=first_event + start)


def check_deposits(block: np.ndarray, source: str, first_event: int = 0) -> None:
    """Raise :class:`ShowerDataError` if a block of deposits holds NaN, inf or negative values."""
    finite = np.isfinite(block)
    if not finite.all():
        bad = first_event + int(np.argwhere(~finite)[0][0])
        kind = "NaN" if np.isnan(block).any() else "inf"
        raise ShowerDataError(source, f"energy deposits contain {kind} (first in event {bad})")
    if (block < 0).any():
        bad = first_event + int(np.argwhere(block < 0)[0][0])
        raise ShowerDataError(source, f"energy deposits contain negative values (first in event {bad})")
