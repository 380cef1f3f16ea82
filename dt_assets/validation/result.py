"""The outcome of a validation: every number with its confidence interval and MC-vs-MC baseline.

``ValidationResult`` is plain data: it round-trips through JSON (``to_json`` / ``from_json``) and
renders as a self-contained HTML report (``to_html``, see :mod:`dt_assets.validation.report`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import SCORES
from .metrics import finite_or_none


@dataclass(frozen=True)
class MetricValue:
    """A metric: its value and confidence interval, the MC-vs-MC baseline, and its check (if any)."""

    value: float
    ci: tuple[float, float]
    baseline: float
    baseline_ci: tuple[float, float]
    threshold: float | None = None
    cell: str | None = None
    observable: str | None = None
    metric: str | None = None

    @property
    def passed(self) -> bool | None:
        """``abs(value) <= threshold``; None when the metric has no threshold."""
        if self.threshold is None:
            return None
        return bool(math.isfinite(self.value) and abs(self.value) <= self.threshold)

    @property
    def above_floor(self) -> bool:
        """False when the baseline itself reaches the threshold: the check cannot resolve at this statistics."""
        return self.threshold is None or abs(self.baseline) < self.threshold


@dataclass(frozen=True)
class Failure:
    """A failed check: what, where, and why."""

    check: str
    reason: str
    cell: str | None = None
    observable: str | None = None
    metric: str | None = None


@dataclass(frozen=True)
class CellResult:
    id: str
    label: str
    energy_gev: float
    theta_deg: float
    n_events: int
    passed: bool
    n_checks: int
    n_failed: int


@dataclass
class ValidationResult:
    """What ``dt_assets.validate`` returns."""

    passed: bool
    coverage: float
    metrics: dict[str, MetricValue]
    failures: list[Failure]
    cells: list[CellResult]
    config: dict[str, Any]
    score_name: str
    score: float
    provenance: dict[str, Any] = field(default_factory=dict)
    #: per cell id and observable: the binned shapes or normalised histograms the report plots
    distributions: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)

    @property
    def lower_score_is_better(self) -> bool:
        return SCORES[self.score_name]

    def beats(self, other_score: float) -> bool:
        """True when this result's score is strictly better than ``other_score`` (same score name)."""
        if not math.isfinite(self.score):
            return False
        if not math.isfinite(other_score):
            return True
        return self.score < other_score if self.lower_score_is_better else self.score > other_score

    def global_metrics(self) -> dict[str, MetricValue]:
        return {k: v for k, v in self.metrics.items() if v.cell is None}

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        passed_cells = sum(c.passed for c in self.cells)
        globals_ = ", ".join(
            f"{k} {v.value:.4g} (MC {v.baseline:.4g})" for k, v in self.global_metrics().items() if k != "coverage"
        )
        return (
            f"{verdict}: coverage {self.coverage:.0%} ({passed_cells}/{len(self.cells)} cells), {globals_}; "
            f"{len(self.failures)} failed check(s)"
        )

    def _failures_by_check(self) -> dict[str, list[Failure]]:
        """The failures grouped by ``observable.metric`` (a global check by its name), in the validation's order."""
        grouped: dict[str, list[Failure]] = {}
        for f in self.failures:
            grouped.setdefault(f"{f.observable}.{f.metric}" if f.observable else f.check, []).append(f)
        return grouped

    def failing_checks(self) -> dict[str, int]:
        """How many cells fail each ``observable.metric`` check; global checks (coverage, fpd, ...) count once."""
        counts = {key: len(failures) for key, failures in self._failures_by_check().items()}
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def failing_cells(self) -> dict[str, list[str]]:
        """The cells that fail each ``observable.metric`` check, in the validation's order; a global check (coverage,
        fpd, ...) has none."""
        return {key: [f.cell for f in fs if f.cell] for key, fs in self._failures_by_check().items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "coverage": self.coverage,
            "score_name": self.score_name,
            "score": finite_or_none(self.score),
            "summary": self.summary(),
            "metrics": {k: {**_json_safe(asdict(v)), "passed": v.passed} for k, v in self.metrics.items()},
            "failures": [asdict(f) for f in self.failures],
            "cells": [asdict(c) for c in self.cells],
            "config": _json_safe(self.config),
            "provenance": _json_safe(self.provenance),
            "distributions": _json_safe(self.distributions),
        }

    def to_json(self, path: str | Path) -> Path:
        """Write every number as JSON (non-finite values as null); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidationResult:
        metrics = {}
        for key, m in d["metrics"].items():
            m = {k: v for k, v in m.items() if k != "passed"}
            m["value"] = _nan(m["value"])
            m["baseline"] = _nan(m["baseline"])
            m["ci"] = tuple(_nan(x) for x in m["ci"])
            m["baseline_ci"] = tuple(_nan(x) for x in m["baseline_ci"])
            metrics[key] = MetricValue(**m)
        return cls(
            passed=d["passed"],
            coverage=d["coverage"],
            metrics=metrics,
            failures=[Failure(**f) for f in d["failures"]],
            cells=[CellResult(**c) for c in d["cells"]],
            config=d["config"],
            score_name=d["score_name"],
            score=_nan(d["score"]),
            provenance=d.get("provenance", {}),
            distributions=d.get("distributions", {}),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> ValidationResult:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a CaloTwin validation result ({type(exc).__name__}: {exc})") from None

    def to_html(self, path: str | Path) -> Path:
        """Write the self-contained HTML report (plots inline); returns the path."""
        from .report import write_html

        return write_html(self, Path(path))


def _json_safe(value: Any) -> Any:
    """Non-finite floats become None, everywhere in a nested structure (JSON has no NaN)."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)
