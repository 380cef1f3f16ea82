"""The validation report: one self-contained HTML file, its figures as PNG bytes, and summary tables.

``write_html(result, path)`` (what :meth:`ValidationResult.to_html` calls) writes a single HTML file
with no external resources: styles are inline and every plot is a base64 PNG (``data:`` URI), so
the file can be mailed, attached to an MLflow run or opened offline. It holds, in order: the
verdict, summary, provenance and score; the global metrics with their confidence intervals and
MC-vs-MC baselines; the coverage heat map (energy x angle) and the per-cell table; the failed
checks; the worst value of every observable and metric over the cells; the mean profiles and key
distributions of every cell against the reference and the baseline, with ratio panels; the
configuration used; and a note on how to read it all. Observables the configuration left out are
skipped.

The figure functions return PNG bytes (plain matplotlib ``Figure`` objects with the Agg backend:
no pyplot state, nothing left open between calls); ``summary_rows`` and ``markdown_summary`` give the global
numbers in the forms the Dagster layer shows (a table and Markdown).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ..plots import _png
from .metrics import finite_or_none
from .observables import OBSERVABLES

if TYPE_CHECKING:  # annotations only: the result renders itself with this module (ValidationResult.to_html)
    from .result import CellResult, MetricValue, ValidationResult

#: Resolution of every figure (dots per inch): small files, a 15-cell report stays well under 2 MB.
DPI = 80
#: Scalar observables the report shows as histograms (those present in the result).
KEY_OBSERVABLES = ("e_ratio", "center_z", "width_x", "occupancy", "measured_theta")
#: Binned observables the report shows as profiles for every cell (those present in the result).
PROFILE_OBSERVABLES = ("longitudinal_profile", "transverse_profile_x")

_BIN_LABELS = {
    "longitudinal_profile": "layer",
    "transverse_profile_x": "x [mm]",
    "transverse_profile_y": "y [mm]",
    "cell_energy_spectrum": "log10(cell energy / MeV)",
}
_COLOURS = {"reference": "black", "candidate": "tab:red", "baseline": "tab:blue"}
_LABELS = {"reference": "MC reference", "candidate": "candidate", "baseline": "MC baseline"}
_PASS, _FAIL, _NONE = "#4caf50", "#e53935", "#bdbdbd"


# ----------------------------------------------------------------------------------------- tables


def summary_rows(result: ValidationResult) -> list[dict[str, float | str | bool | None]]:
    """One row per global metric (coverage, fpd, kpd, classifier_auc): its numbers and check.

    Keys: ``name``, ``value``, ``ci_low``, ``ci_high``, ``baseline``, ``threshold``, ``passed``.
    Non-finite numbers become None; ``threshold`` and ``passed`` are None for a metric without a check.
    Coverage's threshold is the configured minimum (coverage must reach it, not stay below it).
    """
    rows: list[dict[str, float | str | bool | None]] = []
    for name, m in result.global_metrics().items():
        if name == "coverage":
            minimum = float(result.config.get("min_coverage", 1.0))
            m = dataclasses.replace(m, threshold=None)
            check: dict[str, float | bool | None] = {"threshold": minimum, "passed": bool(m.value >= minimum)}
        else:
            check = {"threshold": m.threshold, "passed": m.passed}
        rows.append(
            {
                "name": name,
                "value": finite_or_none(m.value),
                "ci_low": finite_or_none(m.ci[0]),
                "ci_high": finite_or_none(m.ci[1]),
                "baseline": finite_or_none(m.baseline),
                **check,
            }
        )
    return rows


def markdown_summary(result: ValidationResult) -> str:
    """The verdict line and a Markdown table of the global metrics (for the Dagster UI)."""
    level = _confidence(result)
    lines = [
        f"**{_verdict(result)}**: {_md(result.summary().partition(': ')[2])}",
        "",
        f"| metric | value | {level} CI | MC-vs-MC baseline | threshold | check |",
        "|---|---:|---|---:|---:|---|",
    ]
    for name, m in result.global_metrics().items():
        threshold, passed = _global_check(result, name, m)
        lines.append(
            f"| {_md(name)} | {_fmt(m.value)} | {_interval(m.ci)} | {_fmt(m.baseline)} {_interval(m.baseline_ci)} "
            f"| {threshold} | {_check(passed)} |"
        )
    lines += ["", f"Score ({_md(result.score_name)}): {_fmt(result.score)}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- figures


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


# ------------------------------------------------------------------------------------------- HTML


def write_html(result: ValidationResult, path: Path) -> Path:
    """Write the self-contained HTML report to ``path`` (atomically: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(render_html(result), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def render_html(result: ValidationResult) -> str:
    """The report as one HTML string (what :func:`write_html` writes)."""
    verdict = _verdict(result)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>CaloTwin validation report: {_e(verdict)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>CaloTwin validation report</h1>",
        f'<p class="verdict {verdict.lower()}">{_e(verdict)}</p>',
        f"<p>{_e(result.summary())}</p>",
        _score_html(result),
        "<h2>Provenance</h2>",
        _provenance_html(result.provenance),
        "<h2>Global metrics</h2>",
        _global_table(result),
        "<h2>Coverage</h2>",
        _img(coverage_map_png(result), "coverage heat map"),
        _cells_table(result),
        "<h2>Failed checks</h2>",
        _failures_html(result),
        "<h2>Observables over the grid</h2>",
        _observables_table(result),
        "<h2>Plots</h2>",
        _plots_html(result),
        "<h2>Configuration</h2>",
        f"<pre>{_e(json.dumps(result.config, indent=2, sort_keys=False, default=str))}</pre>",
        "<h2>How to read this report</h2>",
        _reading_note(result),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


_CSS = """
body { font-family: sans-serif; font-size: 14px; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-size: 1.6em; font-weight: bold; margin: 0.2em 0; }
.passed, .pass { color: #2e7d32; } .failed, .fail { color: #c62828; } .floor { color: #ef6c00; }
tr.fail td { background: #fdecea; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.small { color: #666; font-size: 12px; }
"""


def _score_html(result: ValidationResult) -> str:
    try:
        direction = "lower is better" if result.lower_score_is_better else "higher is better"
    except KeyError:
        direction = "direction unknown"
    return f"<p>Score <b>{_e(result.score_name)}</b> ({direction}): <b>{_e(_fmt(result.score))}</b></p>"


def _provenance_html(provenance: dict[str, Any]) -> str:
    if not provenance:
        return '<p class="small">none recorded</p>'
    rows = []
    for key, value in provenance.items():
        text = ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _global_table(result: ValidationResult) -> str:
    level = _confidence(result)
    head = (
        f"<tr><th>metric</th><th>value</th><th>{_e(level)} CI</th><th>MC-vs-MC baseline</th>"
        f"<th>baseline {_e(level)} CI</th><th>threshold</th><th>check</th></tr>"
    )
    rows = []
    for name, m in result.global_metrics().items():
        threshold, passed = _global_check(result, name, m)
        floor = "" if m.above_floor else ' <span class="floor">(baseline reaches the threshold)</span>'
        rows.append(
            f"<tr{_row_class(passed)}><td>{_e(name)}</td>{_num(m.value)}<td>{_e(_interval(m.ci))}</td>"
            f'{_num(m.baseline)}<td>{_e(_interval(m.baseline_ci))}</td><td class="num">{_e(threshold)}</td>'
            f"<td>{_check_span(passed)}{floor}</td></tr>"
        )
    if not rows:
        return '<p class="small">no global metrics</p>'
    return "<table>" + head + "".join(rows) + "</table>"


def _cells_table(result: ValidationResult) -> str:
    head = "<tr><th>cell</th><th>id</th><th>events</th><th>failed checks</th><th>verdict</th></tr>"
    rows = [
        f"<tr{_row_class(c.passed)}><td>{_e(c.label)}</td><td>{_e(c.id)}</td>{_num(c.n_events)}"
        f'<td class="num">{c.n_failed} / {c.n_checks}</td><td>{_check_span(c.passed)}</td></tr>'
        for c in result.cells
    ]
    return "<table>" + head + "".join(rows) + "</table>"


def _failures_html(result: ValidationResult) -> str:
    if not result.failures:
        return '<p class="pass">No check failed.</p>'
    labels = {c.id: c.label for c in result.cells}
    head = "<tr><th>check</th><th>cell</th><th>reason</th></tr>"
    rows = [
        f"<tr><td>{_e(f.check)}</td><td>{_e(labels.get(f.cell, f.cell) if f.cell else 'global')}</td>"
        f"<td>{_e(f.reason)}</td></tr>"
        for f in result.failures
    ]
    table = "<table>" + head + "".join(rows) + "</table>"
    opened = " open" if len(rows) <= 50 else ""
    counts = "".join(
        f'<tr><td>{_e(check)}</td><td class="num">{n}</td></tr>' for check, n in result.failing_checks().items()
    )
    return (
        f"<details{opened}><summary>{len(rows)} failed check(s)</summary>{table}</details>"
        "<h3>Checks failing in most cells</h3>"
        f"<table><tr><th>check</th><th>failing cells</th></tr>{counts}</table>"
    )


def _observables_table(result: ValidationResult) -> str:
    groups: dict[tuple[str, str], list[MetricValue]] = {}
    for m in result.metrics.values():
        if m.cell is not None and m.observable is not None:
            groups.setdefault((m.observable, m.metric or "?"), []).append(m)
    if not groups:
        return '<p class="small">no per-cell metrics</p>'
    labels = {c.id: c.label for c in result.cells}
    head = (
        "<tr><th>observable</th><th>metric</th><th>worst |value|</th><th>in cell</th>"
        "<th>worst |baseline|</th><th>threshold</th><th>failing cells</th><th>note</th></tr>"
    )
    rows = []
    for (observable, metric), values in groups.items():
        worst = max(values, key=lambda m: _magnitude(m.value))
        worst_baseline = max(values, key=lambda m: _magnitude(m.baseline))
        threshold = next((m.threshold for m in values if m.threshold is not None), None)
        failing = sum(m.passed is False for m in values)
        at_floor = threshold is not None and not _magnitude(worst_baseline.baseline) < threshold
        note = '<span class="floor">baseline reaches the threshold</span>' if at_floor else ""
        info = OBSERVABLES.get(observable)
        title = f' title="{_e(f"{info.description} [{info.unit}]")}"' if info else ""
        passed = None if threshold is None else failing == 0
        rows.append(
            f"<tr{_row_class(passed)}><td{title}>{_e(observable)}</td><td>{_e(metric)}</td>"
            f"{_num(abs(worst.value))}<td>{_e(labels.get(worst.cell or '', worst.cell or ''))}</td>"
            f"{_num(abs(worst_baseline.baseline))}{_num(threshold)}"
            f'<td class="num">{failing if threshold is not None else "—"} / {len(values)}</td><td>{note}</td></tr>'
        )
    return "<table>" + head + "".join(rows) + "</table>"


def _plots_html(result: ValidationResult) -> str:
    present = _present_observables(result)
    parts = []
    for name in PROFILE_OBSERVABLES:
        if name in present:
            parts.append(f"<h3>Mean {_e(name.replace('_', ' '))}, every cell</h3>")
            parts.append(_img(profiles_png(result, name), f"{name} per cell"))
    chosen = key_cells(result)
    scalars = [n for n in KEY_OBSERVABLES if n in present]
    if scalars and chosen:
        where = "; ".join(c.label for c in chosen)
        parts.append(f"<h3>Key distributions</h3><p class='small'>cells: {_e(where)}</p>")
        for name in scalars:
            parts.append(_img(distributions_png(result, name), f"{name} distributions"))
    if not parts:
        return '<p class="small">no distributions to plot (no cell was compared, or no plotted observable chosen)</p>'
    return "\n".join(parts)


def _reading_note(result: ValidationResult) -> str:
    level = _confidence(result)
    bootstrap = result.config.get("bootstrap", "?")
    items = [
        "<b>MC-vs-MC baseline</b>: the same metric between the reference and an independent MC sample of the "
        "same size in each cell. It is the statistical floor: a perfect generator scores like the baseline, not 0. "
        "A value well above its baseline (beyond both intervals) is a real difference.",
        "<b>Thresholds apply to |value|</b>: the signed metrics (mean_error, width_error) fail in both directions. "
        "A check passes when |value| &le; threshold; a metric without a threshold is reported, not checked.",
        f"<b>Confidence intervals</b> are {_e(level)} percentile bootstraps over events "
        f"({_e(str(bootstrap))} replicas). For distances (separation power, Wasserstein, KS, FPD, KPD) "
        "and the classifier AUC the interval sits above the point value: every replica adds resampling noise, and a "
        "distance only grows with noise. Compare the candidate's interval with the baseline's interval.",
        "<b>Baseline reaches the threshold</b>: the check cannot resolve differences at this number of events "
        "per cell; raise events_per_cell or loosen the threshold.",
        "<b>Coverage</b>: the fraction of grid cells that pass every check; its baseline is the fraction of "
        "cells where the MC-vs-MC baseline passes every check. The verdict requires coverage of at least "
        f"min_coverage ({_e(str(result.config.get('min_coverage', '?')))}) and every global check to pass.",
        "<b>Plots</b>: black is the reference, red the candidate, blue dashed the MC baseline; the lower panels "
        "show each divided by the reference. Histograms use bins over the MC's 0.5-99.5% range; values beyond "
        "it fall into the outer bins.",
    ]
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


# ---------------------------------------------------------------------------------------- helpers


def _present_observables(result: ValidationResult) -> set[str]:
    return {name for shapes in result.distributions.values() for name in shapes}


def _require(result: ValidationResult, observable: str) -> None:
    present = _present_observables(result)
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


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _e(text: object) -> str:
    return html.escape(str(text))


def _magnitude(x: float | None) -> float:
    """|x| for ranking the worst value; NaN ranks worst (a metric that could not be computed fails)."""
    if x is None:
        return -math.inf
    return abs(x) if math.isfinite(x) else math.inf


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else str(x)
    return f"{x:.4g}"


def _interval(ci: tuple[float, float]) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _num(x: float | None) -> str:
    return f'<td class="num">{_e(_fmt(x))}</td>'


def _verdict(result: ValidationResult) -> str:
    return "PASSED" if result.passed else "FAILED"


def _confidence(result: ValidationResult) -> str:
    confidence = result.config.get("confidence")
    return f"{confidence:.0%}" if isinstance(confidence, (int, float)) else ""


def _check(passed: bool | None) -> str:
    return "—" if passed is None else ("pass" if passed else "FAIL")


def _check_span(passed: bool | None) -> str:
    if passed is None:
        return "—"
    return '<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>'


def _global_check(result: ValidationResult, name: str, m: MetricValue) -> tuple[str, bool | None]:
    """The threshold as text and the check of a global metric; coverage is checked against min_coverage."""
    minimum = result.config.get("min_coverage")
    if name == "coverage" and m.threshold is None and isinstance(minimum, (int, float)):
        return f">= {minimum:g}", not any(f.check == "coverage" for f in result.failures)
    return _fmt(m.threshold), m.passed


def _row_class(passed: bool | None) -> str:
    return ' class="fail"' if passed is False else ""


def _md(text: str) -> str:
    return text.replace("|", "\\|")
