"""The gate and the promotion rule: which checks a model must pass, and when it replaces the champion.

``gates(result)`` turns a validation result into named pass/fail checks (the Dagster asset checks
are these). ``decide_promotion(candidate, champion)`` promotes only a candidate that passes every
gate and scores strictly better than the champion on the configured score, judged against the
same reference with the same settings; ties keep the champion.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import GLOBAL_METRICS
from .result import ValidationResult


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    reason: str


def gates(result: ValidationResult) -> list[Gate]:
    """The blocking checks: coverage of the grid, and each global metric with a threshold."""
    min_coverage = float(result.config.get("min_coverage", 1.0))
    failing = result.failing_checks()
    worst = ", ".join(f"{k} ({n} cells)" for k, n in list(failing.items())[:5] if k not in GLOBAL_METRICS)
    out = [
        Gate(
            "coverage",
            result.coverage >= min_coverage,
            f"coverage {result.coverage:.1%} (required {min_coverage:.1%})"
            + (f"; failing most: {worst}" if worst else ""),
        )
    ]
    for name in GLOBAL_METRICS:
        value = result.metrics.get(name)
        if value is None or value.threshold is None:
            continue
        out.append(
            Gate(
                name,
                bool(value.passed),
                f"{name} {value.value:.4g} [{value.ci[0]:.4g}, {value.ci[1]:.4g}] vs threshold {value.threshold:g} "
                f"(MC-vs-MC {value.baseline:.4g})",
            )
        )
    return out


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(candidate: ValidationResult, champion: ValidationResult | None) -> PromotionDecision:
    """Promote ``candidate`` only if it passes every gate and beats ``champion`` (None: no champion yet)."""
    failed = [g for g in gates(candidate) if not g.passed]
    if failed:
        return PromotionDecision(False, "failed checks: " + "; ".join(f"{g.name}: {g.reason}" for g in failed))
    if champion is None:
        return PromotionDecision(True, f"passes every check and there is no champion yet ({_score(candidate)})")
    if champion.score_name != candidate.score_name or champion.config != candidate.config:
        raise ValueError(
            "the champion and the candidate were validated with different settings; compare like with like"
        )
    if candidate.beats(champion.score):
        return PromotionDecision(True, f"passes every check and beats the champion: {_versus(candidate, champion)}")
    return PromotionDecision(
        False, f"passes every check but does not beat the champion: {_versus(candidate, champion)}"
    )


def _score(result: ValidationResult) -> str:
    return f"{result.score_name} {result.score:.4g}"


def _versus(candidate: ValidationResult, champion: ValidationResult) -> str:
    better = "lower" if candidate.lower_score_is_better else "higher"
    return f"{_score(candidate)} vs champion {champion.score:.4g} ({better} is better)"
