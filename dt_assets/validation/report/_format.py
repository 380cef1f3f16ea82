"""Number and text formatting shared by the report's HTML page and its summaries."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the result renders itself with this package (ValidationResult.to_html)
    from ..result import MetricValue, ValidationResult


def magnitude(x: float | None) -> float:
    """|x| for ranking the worst value; NaN ranks worst (a metric that could not be computed fails)."""
    if x is None:
        return -math.inf
    return abs(x) if math.isfinite(x) else math.inf


def fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else str(x)
    return f"{x:.4g}"


def interval(ci: tuple[float, float]) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def verdict(result: ValidationResult) -> str:
    return "PASSED" if result.passed else "FAILED"


def confidence(result: ValidationResult) -> str:
    level = result.config.get("confidence")
    return f"{level:.0%}" if isinstance(level, (int, float)) else ""


def check(passed: bool | None) -> str:
    return "—" if passed is None else ("pass" if passed else "FAIL")


def global_check(result: ValidationResult, name: str, m: MetricValue) -> tuple[str, bool | None]:
    """The threshold as text and the check of a global metric; coverage is checked against min_coverage."""
    minimum = result.config.get("min_coverage")
    if name == "coverage" and m.threshold is None and isinstance(minimum, (int, float)):
        return f">= {minimum:g}", not any(f.check == "coverage" for f in result.failures)
    return fmt(m.threshold), m.passed
