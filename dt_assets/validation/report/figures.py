"""The report's figures as PNG bytes: the coverage heat map, the mean profiles and the key distributions.

Plain matplotlib ``Figure`` objects with the Agg backend: no pyplot state, nothing left open between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ...plots import _png
from ..observables import OBSERVABLES

if TYPE_CHECKING:  # annotations only: the result renders itself with this package (ValidationResult.to_html)
    from ..result import CellResult, ValidationResult

#: Resolution of every figure (dots per inch): small files, a 15-cell report stays well under 2 MB.
DPI = 80

_BIN_LABELS = {
    "longitudinal_profile": "layer",
    "transverse_profile_x": "x [mm]",
    "transverse_profile_y": "y [mm]",
    "cell_energy_spectrum": "log10(cell energy / MeV)",
}
_COLOURS = {"reference": "black", "candidate": "tab:red", "baseline": "tab:blue"}
_LABELS = {"reference": "MC reference", "candidate": "candidate", "baseline": "MC baseline"}
_PASS, _FAIL, _NONE = "#4caf50", "#e53935", "#bdbdbd"


def coverage_map_png(result: ValidationResult) -> bytes:
    """Heat map of the grid (energy up, angle across): each cell green if it passes, red if not.

    Each cell is annotated with its failed checks / checks and its number of events; grid
    positions without a cell stay grey.
    """
    energies = sorted({c.energy_gev for c in result.cells})
    angles = sorted({c.theta_deg for c in result.cells})
    status = np.full((max(len(energies), 1), max(len(angles), 1)), np.nan)
    fig = Figure(figsize=(max(3.6, 1.2 * len(angles) + 1.8), max(2.6, 0.65 * len(energies) + 1.4)), dpi=DPI)
    ax = fig.subplots()
    for c in result.cells:
        row, col = energies.index(c.energy_gev), angles.index(c.theta_deg)
        status[row, col] = 1.0 if c.passed else 0.0
        ax.text(
            col,
            row,
            f"{c.n_failed}/{c.n_checks} failed\nn={c.n_events}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if not c.passed else "black",
        )
    cmap = ListedColormap([_FAIL, _PASS]).with_extremes(bad=_NONE)
    ax.imshow(np.ma.masked_invalid(status), cmap=cmap, vmin=0, vmax=1, origin="lower", aspect="auto")
    ax.set_xticks(range(len(angles)), [f"{a:g}" for a in angles], fontsize=8)
    ax.set_yticks(range(len(energies)), [f"{e:g}" for e in energies], fontsize=8)
    ax.set_xlabel("incidence angle [deg]", fontsize=8)
    ax.set_ylabel("primary energy [GeV]", fontsize=8)
    passed = sum(c.passed for c in result.cells)
    ax.set_title(f"coverage {result.coverage:.0%}: {passed}/{len(result.cells)} cells pass", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def profiles_png(
    result: ValidationResult, observable: str = "longitudinal_profile", cells: Sequence[str] | None = None
) -> bytes:
    """Small multiples of a binned observable's mean shape, one per cell (laid out energy x angle).

    Each panel shows the reference, the candidate and the MC baseline, with the ratios to the
    reference below. ``cells`` (ids) picks cells; by default all. Raises KeyError when no cell of
    ``result`` holds ``observable``.
    """
    _require(result, observable)
    chosen = _cells(result, cells)
    energies = sorted({c.energy_gev for c in chosen})
    angles = sorted({c.theta_deg for c in chosen})
    # highest energy on top, as in the coverage map
    layout = {(len(energies) - 1 - energies.index(c.energy_gev), angles.index(c.theta_deg)): c for c in chosen}
    return _small_multiples(result, observable, layout, len(energies), len(angles))


def distributions_png(result: ValidationResult, observable: str, cells: Sequence[str] | None = None) -> bytes:
    """One observable's distribution in a row of cells (by default the grid's corners and centre).

    A scalar observable is drawn as its normalised histograms, a binned one as its mean shape;
    reference, candidate and MC baseline, with the ratios to the reference below. Raises KeyError
    when no cell of ``result`` holds ``observable``.
    """
    _require(result, observable)
    chosen = _cells(result, cells) if cells is not None else key_cells(result)
    layout = {(0, i): c for i, c in enumerate(chosen)}
    return _small_multiples(result, observable, layout, 1, max(len(chosen), 1))


def key_cells(result: ValidationResult) -> list[CellResult]:
    """The cells at the grid's corners and centre that hold distributions, in grid order."""
    with_data = [c for c in result.cells if c.id in result.distributions]
    if not with_data:
        return []
    energies = sorted({c.energy_gev for c in with_data})
    angles = sorted({c.theta_deg for c in with_data})
    wanted = {(e, a) for e in (energies[0], energies[-1]) for a in (angles[0], angles[-1])}
    wanted.add((energies[len(energies) // 2], angles[len(angles) // 2]))
    picked = [c for c in with_data if (c.energy_gev, c.theta_deg) in wanted]
    return sorted(picked, key=lambda c: (c.energy_gev, c.theta_deg))


def _small_multiples(
    result: ValidationResult, observable: str, layout: dict[tuple[int, int], CellResult], nrows: int, ncols: int
) -> bytes:
    """Panels (a main plot over a ratio plot) at ``layout``'s (row, column) positions."""
    if not layout:
        raise ValueError("no cells to plot")
    info = OBSERVABLES.get(observable)
    unit = info.unit if info else ""
    width, height = 0.7 + 2.3 * ncols, 0.8 + 2.2 * nrows
    fig = Figure(figsize=(width, height), dpi=DPI)
    # fixed margins in inches: a layout engine would double the drawing time of these many small axes
    outer = fig.add_gridspec(
        nrows,
        ncols,
        left=0.6 / width,
        right=1 - 0.1 / width,
        bottom=0.45 / height,
        top=1 - 0.5 / height,
        wspace=0.3,
        hspace=0.35,
    )
    legend_done = False
    for (row, col), cell in sorted(layout.items()):
        inner = outer[row, col].subgridspec(2, 1, height_ratios=(3, 1), hspace=0.06)
        main = fig.add_subplot(inner[0])
        ratio = fig.add_subplot(inner[1], sharex=main)
        title = cell.label + ("" if cell.passed else f" ({cell.n_failed} failed)")
        main.set_title(title, fontsize=7, pad=2, color="black" if cell.passed else _FAIL)
        main.tick_params(labelsize=6, labelbottom=False)
        ratio.tick_params(labelsize=6)
        shapes = result.distributions.get(cell.id, {}).get(observable)
        if shapes is None:
            main.text(0.5, 0.5, "not compared", ha="center", va="center", fontsize=7, transform=main.transAxes)
            continue
        if "bins" in shapes:
            x = np.asarray(shapes["bins"], dtype=float)
            for role in ("reference", "baseline", "candidate"):
                main.plot(x, shapes[role], drawstyle="steps-mid", label=_LABELS[role], **_style(role))
            ratio_x = x
            ylabel = f"mean per event [{unit}]" if unit else "mean per event"
            xlabel = _BIN_LABELS.get(observable, "bin")
        else:
            edges = np.asarray(shapes["edges"], dtype=float)
            for role in ("reference", "baseline", "candidate"):
                main.stairs(shapes[role], edges, label=_LABELS[role], **_style(role))
            ratio_x = 0.5 * (edges[1:] + edges[:-1])
            ylabel = "fraction of events"
            xlabel = f"{observable} [{unit}]" if unit else observable
        reference = np.asarray(shapes["reference"], dtype=float)
        for role in ("baseline", "candidate"):
            ratio.plot(ratio_x, _ratio(shapes[role], reference), drawstyle="steps-mid", **_style(role))
        ratio.axhline(1.0, color="grey", lw=0.5)
        ratio.set_ylim(0.5, 1.5)
        ratio.set_yticks((0.75, 1.0, 1.25))
        if col == 0:
            main.set_ylabel(ylabel, fontsize=6)
            ratio.set_ylabel("/ reference", fontsize=6)
        if row == nrows - 1:
            ratio.set_xlabel(xlabel, fontsize=6)
        if not legend_done:
            main.legend(fontsize=5, frameon=False)
            legend_done = True
    description = f": {info.description}" if info else ""
    fig.suptitle(f"{observable}{description}", fontsize=8)
    return _png(fig)


def _style(role: str) -> dict[str, Any]:
    return {"color": _COLOURS[role], "lw": 1.0, "ls": "--" if role == "baseline" else "-"}


def present_observables(result: ValidationResult) -> set[str]:
    """The observables whose distributions the result holds, in any cell."""
    return {name for shapes in result.distributions.values() for name in shapes}


def _require(result: ValidationResult, observable: str) -> None:
    present = present_observables(result)
    if observable not in present:
        raise KeyError(f"no distributions of {observable!r} in the result; present: {', '.join(sorted(present))}")


def _cells(result: ValidationResult, ids: Sequence[str] | None) -> list[CellResult]:
    if ids is None:
        return list(result.cells)
    by_id = {c.id: c for c in result.cells}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise KeyError(f"unknown cell(s) {unknown}; cells: {', '.join(by_id)}")
    return [by_id[i] for i in ids]


def _ratio(values: Sequence[float], reference: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    out = np.full(array.shape, np.nan)
    np.divide(array, reference, out=out, where=reference > 0)
    return out
