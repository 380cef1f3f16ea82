"""Blocking asset checks on raw_showers: after each write, the stored run is read back and judged."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from ..showers.quality import RAW_SHOWER_CHECKS, scan_store

raw_showers_check_specs = [
    dg.AssetCheckSpec(name, asset="raw_showers", description=(check.__doc__ or "").splitlines()[0], blocking=True)
    for name, check in RAW_SHOWER_CHECKS.items()
]


def raw_showers_check_results(url: str, storage_options: Mapping[str, Any]) -> list[dg.AssetCheckResult]:
    """Read the store at ``url`` back once and evaluate every raw_showers check on it."""
    scan = scan_store(url, storage_options)
    results = []
    for name, check in RAW_SHOWER_CHECKS.items():
        outcome = check(scan)
        results.append(
            dg.AssetCheckResult(
                check_name=name,
                passed=outcome.passed,
                description=outcome.description,
                metadata=outcome.metadata,
                severity=dg.AssetCheckSeverity.ERROR,
            )
        )
    return results
