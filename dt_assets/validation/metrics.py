"""Metrics that compare two distributions of one observable, in a registry.

A metric takes two :class:`Sample` s (the reference's and the candidate's, with shared histogram
bin ``edges``) and returns one number per *replica*: samples carry a leading replica axis, so the
point estimate (one replica) and all bootstrap replicas are computed by the same vectorised code.
A scalar observable's sample is its per-event values (weight 1 each); a binned observable's sample
is its bin centres weighted by the summed contents (the mean shape, e.g. the longitudinal profile),
so one set of metrics serves both. Checks compare ``abs(value)`` with a threshold, so the signed
metrics (mean and width errors) fail both ways.

Definitions:

- ``mean_error``: ``(mean_c - mean_r) / |mean_r|`` for magnitudes; for positions (observables of
  kind ``"position"``) ``(mean_c - mean_r) / max(std_r, resolution)``, the shift in units of the
  reference spread (never below the observable's resolution, e.g. one cell); for the log10 of a
  magnitude (kind ``"log_magnitude"``, e.g. the cell-energy spectrum) ``10^(mean_c - mean_r) - 1``,
  the relative error of the geometric mean, which does not depend on the magnitude's unit.
- ``width_error``: ``(std_c - std_r) / max(std_r, resolution)``.
- ``separation_power``: ``S = 1/2 sum_i (h_r,i - h_c,i)^2 / (h_r,i + h_c,i)`` on histograms normalised to
  unit sum (CaloChallenge); 0 for identical, 1 for disjoint histograms.
- ``wasserstein``: the 1-Wasserstein distance ``int |F_r - F_c| dx`` divided by ``max(std_r, resolution)``
  (unit-free, so one threshold serves all observables).
- ``ks``: the Kolmogorov-Smirnov statistic ``max |F_r - F_c|``.

Add your own with the array methods of :class:`Sample` (each returns one value per replica)::

    from dt_assets.validation.metrics import metric

    @metric("median_error", "relative error of the median")
    def median_error(ref, cand):
        return (cand.quantile(0.5) - ref.quantile(0.5)) / abs(ref.quantile(0.5))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True, eq=False)
class Sample:
    """Weighted one-dimensional samples, one row per replica: ``values`` and ``weights`` are (replicas, m)."""

    values: np.ndarray
    weights: np.ndarray
    edges: np.ndarray
    kind: str = "magnitude"
    resolution: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray, edges: np.ndarray, kind: str = "magnitude", resolution: float = 0.0) -> Sample:
        """A single replica of unweighted values."""
        values = np.asarray(values, dtype=np.float64)[None, :]
        return cls(values, np.ones_like(values), np.asarray(edges, dtype=np.float64), kind, resolution)

    @cached_property
    def total(self) -> np.ndarray:
        return self.weights.sum(axis=1)

    @cached_property
    def mean(self) -> np.ndarray:
        return _divide((self.weights * self.values).sum(axis=1), self.total)

    @cached_property
    def std(self) -> np.ndarray:
        centred = self.values - self.mean[:, None]
        return np.sqrt(np.clip(_divide((self.weights * centred**2).sum(axis=1), self.total), 0, None))

    @cached_property
    def scale(self) -> np.ndarray:
        """The spread distances are measured in: the standard deviation, at least the resolution."""
        return np.maximum(self.std, self.resolution)

    @cached_property
    def histogram(self) -> np.ndarray:
        """Contents per bin of ``edges`` (values beyond go to the outer bins), normalised to unit sum per row."""
        n_bins = len(self.edges) - 1
        index = np.clip(np.searchsorted(self.edges, self.values, side="right") - 1, 0, n_bins - 1)
        rows = np.arange(len(self.values))[:, None] * n_bins
        counts = np.bincount((rows + index).ravel(), self.weights.ravel(), minlength=len(self.values) * n_bins)
        counts = counts.reshape(len(self.values), n_bins)
        return _divide(counts, counts.sum(axis=1, keepdims=True))

    def quantile(self, q: float) -> np.ndarray:
        order = np.argsort(self.values, axis=1, kind="stable")
        values = np.take_along_axis(self.values, order, axis=1)
        cumulative = np.cumsum(np.take_along_axis(self.weights, order, axis=1), axis=1)
        position = (cumulative < q * cumulative[:, -1:]).sum(axis=1)
        return values[np.arange(len(values)), np.minimum(position, values.shape[1] - 1)]


def cdf_difference(ref: Sample, cand: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``F_r - F_c`` on the merged sorted points of both samples, per replica.

    Returns ``(difference, gap to the next point, last-of-a-tie mask)``: the difference holds on
    ``[x_i, x_{i+1})``; between tied values it is not a CDF value, so the mask marks where it is.
    """
    values = np.concatenate([ref.values, cand.values], axis=1)
    steps = np.concatenate(
        [ref.weights / _safe(ref.total)[:, None], -cand.weights / _safe(cand.total)[:, None]], axis=1
    )
    order = np.argsort(values, axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    difference = np.cumsum(np.take_along_axis(steps, order, axis=1), axis=1)
    gap = np.diff(values, axis=1, append=values[:, -1:])
    last_of_tie = np.concatenate([values[:, 1:] != values[:, :-1], np.ones((len(values), 1), bool)], axis=1)
    return difference, gap, last_of_tie


def _safe(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 1.0)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where both are 0 and +-inf where only the denominator is."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, float), np.asarray(denominator, float))
    out = np.where(numerator == 0, 0.0, np.copysign(np.inf, numerator))
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


@dataclass(frozen=True)
class Metric:
    name: str
    func: Callable[[Sample, Sample], np.ndarray]
    description: str


METRICS: dict[str, Metric] = {}


def metric(name: str, description: str) -> Callable[[Callable[[Sample, Sample], np.ndarray]], Callable]:
    """Register ``func(reference, candidate) -> values per replica`` as a metric under ``name`` (a decorator)."""

    def register(func: Callable[[Sample, Sample], np.ndarray]) -> Callable[[Sample, Sample], np.ndarray]:
        if name in METRICS:
            raise ValueError(f"a metric named {name!r} is already registered")
        METRICS[name] = Metric(name, func, description)
        return func

    return register


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; registered: {', '.join(sorted(METRICS))}") from None


@metric(
    "mean_error",
    "relative error of the mean (shift in reference standard deviations for positions; of the geometric mean for "
    "log10 magnitudes)",
)
def mean_error(ref: Sample, cand: Sample) -> np.ndarray:
    if ref.kind == "log_magnitude":
        # the mean of log10(x) is log10 of x's geometric mean: its shift is a ratio. Divided by |mean_r| instead,
        # the error would hang on the unit's zero (cells near 1 MeV would make any shift huge)
        return np.power(10.0, cand.mean - ref.mean) - 1
    scale = ref.scale if ref.kind == "position" else np.abs(ref.mean)
    return _divide(cand.mean - ref.mean, scale)


@metric("width_error", "relative error of the standard deviation")
def width_error(ref: Sample, cand: Sample) -> np.ndarray:
    return _divide(cand.std - ref.std, ref.scale)


def separation_power_of(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """CaloChallenge separation power of histograms (normalised to unit sum here), along the last axis."""
    h1 = np.asarray(h1, dtype=np.float64)
    h2 = np.asarray(h2, dtype=np.float64)
    h1 = _divide(h1, h1.sum(axis=-1, keepdims=True))
    h2 = _divide(h2, h2.sum(axis=-1, keepdims=True))
    total = h1 + h2
    return 0.5 * _divide((h1 - h2) ** 2, total).sum(axis=-1)


@metric("separation_power", "CaloChallenge separation power of the normalised histograms (0 same, 1 disjoint)")
def separation_power(ref: Sample, cand: Sample) -> np.ndarray:
    return separation_power_of(ref.histogram, cand.histogram)


@metric("wasserstein", "1-Wasserstein distance in units of the reference standard deviation")
def wasserstein(ref: Sample, cand: Sample) -> np.ndarray:
    difference, gap, _ = cdf_difference(ref, cand)
    return _divide((np.abs(difference) * gap).sum(axis=1), ref.scale)


@metric("ks", "Kolmogorov-Smirnov statistic: largest difference of the CDFs")
def ks(ref: Sample, cand: Sample) -> np.ndarray:
    difference, _, last_of_tie = cdf_difference(ref, cand)
    return np.where(last_of_tie, np.abs(difference), 0.0).max(axis=1)


#: The metrics a default validation computes per observable and condition cell.
DEFAULT_METRICS = tuple(METRICS)


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, or None where it is None or not finite (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None
