"""The report's global numbers in the forms the Dagster layer shows: table rows and Markdown."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..metrics import finite_or_none
from ._format import check, confidence, fmt, global_check, interval, verdict

if TYPE_CHECKING:  # annotations only: the result renders itself with this package (ValidationResult.to_html)
    from ..result import ValidationResult


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
            passed: dict[str, float | bool | None] = {"threshold": minimum, "passed": bool(m.value >= minimum)}
        else:
            passed = {"threshold": m.threshold, "passed": m.passed}
        rows.append(
            {
                "name": name,
                "value": finite_or_none(m.value),
                "ci_low": finite_or_none(m.ci[0]),
                "ci_high": finite_or_none(m.ci[1]),
                "baseline": finite_or_none(m.baseline),
                **passed,
            }
        )
    return rows


def markdown_summary(result: ValidationResult) -> str:
    """The verdict line and a Markdown table of the global metrics (for the Dagster UI)."""
    level = confidence(result)
    lines = [
        f"**{verdict(result)}**: {_md(result.summary().partition(': ')[2])}",
        "",
        f"| metric | value | {level} CI | MC-vs-MC baseline | threshold | check |",
        "|---|---:|---|---:|---:|---|",
    ]
    for name, m in result.global_metrics().items():
        threshold, passed = global_check(result, name, m)
        lines.append(
            f"| {_md(name)} | {fmt(m.value)} | {interval(m.ci)} | {fmt(m.baseline)} {interval(m.baseline_ci)} "
            f"| {threshold} | {check(passed)} |"
        )
    lines += ["", f"Score ({_md(result.score_name)}): {fmt(result.score)}"]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")
