"""Data-quality checks of a stored shower dataset (the domain side of the Dagster asset checks).

The stored run is read back once (:func:`scan_store`, block by block) and each check judges the
numbers of that scan, so checking costs one pass over the data whatever the number of checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..physics.gflash import DEFAULT_TUNING
from .errors import ShowerDataError
from .schema import DEPOSIT, validate_showers
from .store import iter_blocks, open_store


@dataclass(frozen=True)
class CheckOutcome:
    """Result of one data-quality check: pass/fail, a sentence, and the numbers behind it."""

    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreScan:
    """What one pass over a stored run measures."""

    url: str
    schema_problem: str | None
    n_events: int = 0
    geometry: str = ""
    units: dict[str, str] = field(default_factory=dict)
    sampling_fraction: float = float("nan")
    nan_cells: int = 0
    inf_cells: int = 0
    negative_cells: int = 0
    #: per event, visible energy / (primary energy x sampling fraction)
    visible_ratio: np.ndarray = field(default_factory=lambda: np.empty(0))
    primary_energy_gev: np.ndarray = field(default_factory=lambda: np.empty(0))


def scan_store(url: str, storage_options: Mapping[str, Any] | None = None) -> StoreScan:
    """Read a stored run back block by block and measure everything the checks judge."""
    try:
        ds = open_store(url, storage_options)
        validate_showers(ds, url, deposits=False)
    except ShowerDataError as exc:
        return StoreScan(url=url, schema_problem=exc.problem)
    fraction = float(ds.attrs["sampling_fraction"])
    nan = inf = negative = 0
    ratios, energies = [], []
    for block in iter_blocks(ds):
        cells = block[DEPOSIT].values
        nan += int(np.isnan(cells).sum())
        inf += int(np.isinf(cells).sum())
        negative += int((cells < 0).sum())
        energy = block["primary_energy"].values
        ratios.append(np.nansum(cells, axis=(1, 2, 3), dtype=np.float64) / (energy * 1e3 * fraction))
        energies.append(energy)
    return StoreScan(
        url=url,
        schema_problem=None,
        n_events=int(ds.sizes["event"]),
        geometry=str(ds.attrs["geometry"]),
        units={name: str(ds[name].attrs.get("units")) for name in (DEPOSIT, "primary_energy", "theta")},
        sampling_fraction=fraction,
        nan_cells=nan,
        inf_cells=inf,
        negative_cells=negative,
        visible_ratio=np.concatenate(ratios),
        primary_energy_gev=np.concatenate(energies),
    )


def check_schema(scan: StoreScan) -> CheckOutcome:
    """Variables, dimensions, grid shape, units, geometry and conditions follow the schema."""
    if scan.schema_problem:
        return CheckOutcome(False, scan.schema_problem)
    return CheckOutcome(
        True,
        f"{scan.n_events} events on the {scan.geometry} grid, units {scan.units}",
        {"events": scan.n_events, "geometry": scan.geometry, **{f"units_{k}": v for k, v in scan.units.items()}},
    )


def check_finite_non_negative(scan: StoreScan) -> CheckOutcome:
    """Every cell energy is finite and >= 0."""
    if scan.schema_problem:
        return CheckOutcome(False, f"not checked: {scan.schema_problem}")
    counts = {"nan_cells": scan.nan_cells, "inf_cells": scan.inf_cells, "negative_cells": scan.negative_cells}
    bad = {k: v for k, v in counts.items() if v}
    return CheckOutcome(not bad, f"bad cells: {bad}" if bad else "all cell energies finite and non-negative", counts)


def check_sampling_fraction(
    scan: StoreScan,
    contained: tuple[float, float] = (0.7, 1.05),
    n_sigma: float = 5.0,
    resolution: float = DEFAULT_TUNING.sampling_resolution,
) -> CheckOutcome:
    """Visible energy agrees with the geometry's sampling fraction.

    With r = E_visible / (E_primary x sampling fraction), the mean of r (the contained fraction)
    lies in ``contained``, and no event exceeds full containment by more than ``n_sigma`` sampling
    fluctuations, r <= 1 + n_sigma x resolution / sqrt(E_primary / GeV): no event makes energy.
    """
    if scan.schema_problem:
        return CheckOutcome(False, f"not checked: {scan.schema_problem}")
    r = scan.visible_ratio
    over = int((r > 1.0 + n_sigma * resolution / np.sqrt(scan.primary_energy_gev)).sum())
    mean = float(r.mean())
    passed = bool(contained[0] <= mean <= contained[1] and over == 0)
    metadata = {
        "sampling_fraction": scan.sampling_fraction,
        "mean_visible_over_expected": mean,
        "min_visible_over_expected": float(r.min()),
        "max_visible_over_expected": float(r.max()),
        "events_above_bound": over,
    }
    return CheckOutcome(
        passed,
        f"mean E_vis/(E_p x {scan.sampling_fraction:.4g}) = {mean:.3f} (allowed {contained[0]}-{contained[1]}), "
        f"{over} event(s) above the {n_sigma:g} sigma bound",
        metadata,
    )


#: The checks of a raw shower store, by name.
RAW_SHOWER_CHECKS = {
    "schema_and_units": check_schema,
    "finite_non_negative": check_finite_non_negative,
    "sampling_fraction_consistency": check_sampling_fraction,
}
