"""Benchmark diagnostic: three shape numbers of a trained generator beside MC's, per cell of the default grid.

Generates the default validation grid (the seeds ``bench/fidelity.py`` judges with) from ``--generator FILE`` and
simulates as many MC events, then prints per cell, MC beside the generator:

- ``low cells``: hit cells a shower in the cell spectrum's lowest bin (the threshold to 10^-0.875 MeV, 0.100-0.133
  MeV). The assembly presses cells to the threshold that MC spreads above it;
- ``corr(cy, sy)``: the correlation of the shower's y centre with its y skewness over the cell's showers. In MC a
  shower off-centre in y is so because of a tail on that side;
- ``layer m3 x``: the layers' own third central moment in x (cells^3), weighted by their share of the shower: the
  part of the shower's x skewness that the layers' shapes carry (the rest comes from where the layers lie).

Then one JSON line. About 2 minutes on 2 cores with the default 500 events a cell.

    .venv/bin/python bench/shapes.py --generator /tmp/fidelity-flow-15/generator.pt

``--sampling KEY=VALUE`` (a flow, any number of times) changes how the file samples first, as in
``bench/fidelity.py``; ``--events-per-cell N`` changes the sample.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import xarray as xr
from fidelity import add_generator_options, grid_samples, with_sampling

from dt_assets.model.generation import load_generator
from dt_assets.validation.config import ValidationConfig
from dt_assets.validation.observables import SPECTRUM_EDGES, compute_observables

#: the top of the cell spectrum's lowest bin (MeV)
LOW_BIN_TOP_MEV = float(10 ** SPECTRUM_EDGES[1])


def shape_numbers(showers: xr.Dataset, threshold_mev: float) -> dict[str, float]:
    """The three numbers of one cell's showers (see the module docstring)."""
    cells = showers.energy_deposit.values.astype(np.float64)  # (n, x, y, z) MeV
    cells = np.where(cells >= threshold_mev, cells, 0.0)
    low = ((cells > 0) & (cells < LOW_BIN_TOP_MEV)).sum(axis=(1, 2, 3)).mean()
    observed = compute_observables(showers, ("center_y", "skewness_y"), threshold_mev)
    corr = float(np.corrcoef(observed["center_y"], observed["skewness_y"])[0, 1])
    x = np.arange(cells.shape[1]) - (cells.shape[1] - 1) / 2
    profile = cells.sum(axis=2)  # (n, x, z)
    layer = profile.sum(axis=1)  # (n, z)
    weight = profile / np.maximum(layer[:, None, :], 1e-12)
    mean = (weight * x[None, :, None]).sum(axis=1)
    third = (weight * (x[None, :, None] - mean[:, None, :]) ** 3).sum(axis=1)  # (n, z)
    share = layer / np.maximum(layer.sum(axis=1, keepdims=True), 1e-12)
    return {"low_cells": float(low), "corr_center_skewness_y": corr, "layer_m3_x": float((share * third).sum(1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_generator_options(parser)
    args = parser.parse_args()
    cfg = ValidationConfig()
    try:
        generator = load_generator(args.generator)
        sampling = with_sampling(generator, args.sampling)
        n = cfg.events_per_cell if args.events_per_cell is None else args.events_per_cell
        if n < 2:
            raise ValueError(f"--events-per-cell must be at least 2, got {n}")
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    grid = cfg.conditions_grid()
    drawn = grid_samples(generator, grid, n)
    samples = {"mc": drawn["reference"], "generated": drawn["candidate"]}
    cells = {}
    print(f"{'cell':<10} {'low cells (MC, gen)':>20} {'corr(cy, sy) (MC, gen)':>24} {'layer m3 x (MC, gen)':>22}")
    for i, cell in enumerate(grid.cells()):
        part = slice(i * n, (i + 1) * n)
        numbers = {role: shape_numbers(s.isel(event=part), cfg.threshold_mev) for role, s in samples.items()}
        cells[cell.id] = numbers
        mc, gen = numbers["mc"], numbers["generated"]
        print(
            f"{cell.id:<10} {mc['low_cells']:>9.1f} {gen['low_cells']:>9.1f}"
            f" {mc['corr_center_skewness_y']:>+11.2f} {gen['corr_center_skewness_y']:>+11.2f}"
            f" {mc['layer_m3_x']:>+10.3f} {gen['layer_m3_x']:>+10.3f}"
        )
    print(json.dumps({"generator": args.generator, "sampling": sampling, "events_per_cell": n, "cells": cells}))


if __name__ == "__main__":
    main()
