"""The report as one self-contained HTML page, rendered from the Jinja2 template ``templates/report.html.j2``.

This module gathers the numbers and the figures (base64 PNG ``data:`` URIs) into the template's
context; the template lays them out and escapes every text it prints (autoescape).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from ..observables import OBSERVABLES
from ._format import confidence, fmt, global_check, interval, magnitude, verdict
from .figures import coverage_map_png, distributions_png, key_cells, present_observables, profiles_png

if TYPE_CHECKING:  # annotations only: the result renders itself with this package (ValidationResult.to_html)
    from ..result import MetricValue, ValidationResult

#: Scalar observables the report shows as histograms (those present in the result).
KEY_OBSERVABLES = ("e_ratio", "center_z", "width_x", "occupancy", "measured_theta")
#: Binned observables the report shows as profiles for every cell (those present in the result).
PROFILE_OBSERVABLES = ("longitudinal_profile", "transverse_profile_x")

_ENVIRONMENT = Environment(
    loader=PackageLoader(__package__ or "dt_assets.validation.report", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


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
    return _ENVIRONMENT.get_template("report.html.j2").render(context(result))


def context(result: ValidationResult) -> dict[str, Any]:
    """The template's variables: plain strings, numbers and lists (the template escapes them)."""
    try:
        direction = "lower is better" if result.lower_score_is_better else "higher is better"
    except KeyError:
        direction = "direction unknown"
    provenance = [
        (key, ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value))
        for key, value in result.provenance.items()
    ]
    labels = {c.id: c.label for c in result.cells}
    return {
        "verdict": verdict(result),
        "summary": result.summary(),
        "score": {"name": result.score_name, "direction": direction, "value": fmt(result.score)},
        "provenance": provenance,
        "level": confidence(result),
        "global_metrics": _global_rows(result),
        "coverage_map": _data_uri(coverage_map_png(result)),
        "cells": [
            {
                "label": c.label,
                "id": c.id,
                "events": fmt(c.n_events),
                "failed": f"{c.n_failed} / {c.n_checks}",
                "passed": c.passed,
            }
            for c in result.cells
        ],
        "failures": [
            {"check": f.check, "cell": labels.get(f.cell, f.cell) if f.cell else "global", "reason": f.reason}
            for f in result.failures
        ],
        "failing_checks": list(result.failing_checks().items()),
        "observables": _observable_rows(result, labels),
        "plots": _plots(result),
        "config": json.dumps(result.config, indent=2, sort_keys=False, default=str),
        "bootstrap": str(result.config.get("bootstrap", "?")),
        "min_coverage": str(result.config.get("min_coverage", "?")),
    }


def _global_rows(result: ValidationResult) -> list[dict[str, Any]]:
    rows = []
    for name, m in result.global_metrics().items():
        threshold, passed = global_check(result, name, m)
        rows.append(
            {
                "name": name,
                "value": fmt(m.value),
                "ci": interval(m.ci),
                "baseline": fmt(m.baseline),
                "baseline_ci": interval(m.baseline_ci),
                "threshold": threshold,
                "passed": passed,
                "above_floor": m.above_floor,
            }
        )
    return rows


def _observable_rows(result: ValidationResult, labels: dict[str, str]) -> list[dict[str, Any]]:
    """The worst value of every (observable, metric) over the cells, with its baseline and check."""
    groups: dict[tuple[str, str], list[MetricValue]] = {}
    for m in result.metrics.values():
        if m.cell is not None and m.observable is not None:
            groups.setdefault((m.observable, m.metric or "?"), []).append(m)
    rows = []
    for (observable, metric), values in groups.items():
        worst = max(values, key=lambda m: magnitude(m.value))
        worst_baseline = max(values, key=lambda m: magnitude(m.baseline))
        threshold = next((m.threshold for m in values if m.threshold is not None), None)
        failing = sum(m.passed is False for m in values)
        info = OBSERVABLES.get(observable)
        rows.append(
            {
                "observable": observable,
                "title": f"{info.description} [{info.unit}]" if info else None,
                "metric": metric,
                "worst": fmt(abs(worst.value)),
                "cell": labels.get(worst.cell or "", worst.cell or ""),
                "worst_baseline": fmt(abs(worst_baseline.baseline)),
                "threshold": fmt(threshold),
                "failing": f"{failing if threshold is not None else '—'} / {len(values)}",
                "at_floor": threshold is not None and not magnitude(worst_baseline.baseline) < threshold,
                "passed": None if threshold is None else failing == 0,
            }
        )
    return rows


def _plots(result: ValidationResult) -> dict[str, Any]:
    """The profiles of every cell and the key distributions, as (heading or alt text, data URI) pairs."""
    present = present_observables(result)
    profiles = [
        {"name": name.replace("_", " "), "alt": f"{name} per cell", "src": _data_uri(profiles_png(result, name))}
        for name in PROFILE_OBSERVABLES
        if name in present
    ]
    chosen = key_cells(result)
    scalars = [n for n in KEY_OBSERVABLES if n in present]
    distributions = (
        [{"alt": f"{name} distributions", "src": _data_uri(distributions_png(result, name))} for name in scalars]
        if chosen
        else []
    )
    return {"profiles": profiles, "where": "; ".join(c.label for c in chosen), "distributions": distributions}


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
