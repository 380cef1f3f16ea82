"""Showers at the conditions of a grid: MC (the reference) and generator output (the candidate).

Each cell gets ``n_per_cell`` events drawn uniformly in its (clipped) energy and angle ranges, from
a seed derived from ``(seed, cell index)``, so samples with different seeds are independent and a
sample is reproducible. A reference meant for :func:`~dt_assets.validation.validate.validate`'s
built-in baseline holds twice the events per cell (half reference, half baseline). ``on_cell`` (e.g.
:meth:`dt_assets.progress.Progress.update`) is called with the number of events after each cell.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr

from ..physics.geometry import Geometry
from ..showers.schema import concat_blocks
from ..simulation import simulate
from .grid import Cell, ConditionsGrid


def cell_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def per_cell(
    grid: ConditionsGrid,
    n_per_cell: int,
    seed: int,
    make: Callable[[int, Cell, int], xr.Dataset],
    on_cell: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Concatenate ``make(n, cell, cell_seed)`` over the cells of ``grid``, calling ``on_cell(n)`` after each."""
    if n_per_cell < 1:
        raise ValueError(f"n_per_cell must be >= 1, got {n_per_cell}")
    blocks = []
    for i, cell in enumerate(grid.cells()):
        blocks.append(make(n_per_cell, cell, cell_seed(seed, i)))
        if on_cell is not None:
            on_cell(n_per_cell)
    ds = concat_blocks(blocks)
    ds.attrs.update({"seed": seed, "grid": str(grid.to_dict()), "n_per_cell": n_per_cell})
    return ds


def simulate_grid(
    grid: ConditionsGrid,
    n_per_cell: int,
    geometry: str | Geometry,
    particle: str = "e-",
    seed: int = 0,
    on_cell: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """MC showers at the grid's conditions."""
    return per_cell(
        grid,
        n_per_cell,
        seed,
        lambda n, cell, s: simulate(n, cell.energy_range_gev, cell.theta_range_deg, particle, geometry, s),
        on_cell,
    )


def generate_grid(
    generator,
    grid: ConditionsGrid,
    n_per_cell: int,
    particle: str = "e-",
    seed: int = 0,
    on_cell: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Generator showers at the grid's conditions (``generator`` is a :class:`CaloGenerator`)."""
    from ..model.generation import generate

    return per_cell(
        grid,
        n_per_cell,
        seed,
        lambda n, cell, s: generate(generator, n, cell.energy_range_gev, cell.theta_range_deg, particle, seed=s),
        on_cell,
    )
