"""Fréchet and Kernel Physics Distances on high-level features (Kansal et al., PRD 107, 076017, 2023).

Both follow JetNet's definitions (as the CaloChallenge uses them): features are divided by the
reference's largest absolute value per feature; FPD is the Fréchet distance between Gaussians
fitted to the two samples, measured at ``n_points`` sample sizes between ``min_samples`` and
``max_samples`` (each the mean of ``n_batches`` draws with replacement) and extrapolated linearly in
1/N to infinite N (non-negative intercept and slope); KPD is the unbiased squared maximum mean
discrepancy with the polynomial kernel ``k(x, y) = (x.y / d + 1)^4``, the median over ``n_batches``
batches. Both return ``(value, error)``: the fit's standard error for FPD, half the 16-84%
interquantile range for KPD. Pure NumPy.
"""

from __future__ import annotations

import numpy as np


def normalise_features(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both divided by the reference's largest absolute value per feature (1 where that is 0)."""
    scale = np.abs(reference).max(axis=0)
    scale[scale == 0] = 1.0
    return reference / scale, candidate / scale


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` between two Gaussians.

    ``tr (C1 C2)^(1/2)`` is computed as the sum of square roots of the eigenvalues of the symmetric
    ``C1^(1/2) C2 C1^(1/2)`` (same spectrum), which is stable for singular covariances.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    root = _sqrt_psd(cov1)
    middle = root @ cov2 @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def _fit_nonnegative_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x`` with ``a, b >= 0``; returns ``(a, b, standard error of a)``."""
    design = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    if b < 0:
        a, b = max(float(y.mean()), 0.0), 0.0
    elif a < 0:
        a, b = 0.0, max(float((x @ y) / (x @ x)), 0.0)
    dof = max(len(x) - 2, 1)
    residual = y - (a + b * x)
    sigma2 = float(residual @ residual) / dof
    covariance = sigma2 * np.linalg.pinv(design.T @ design)
    return float(a), float(b), float(np.sqrt(max(covariance[0, 0], 0.0)))


def fpd(
    reference: np.ndarray,
    candidate: np.ndarray,
    min_samples: int | None = None,
    max_samples: int | None = None,
    n_batches: int = 10,
    n_points: int = 8,
    normalise: bool = True,
    seed: int = 42,
) -> tuple[float, float]:
    """Fréchet Physics Distance, extrapolated to infinite sample size; returns ``(value, error)``.

    JetNet uses 20k-50k samples; by default here ``max_samples`` is the smaller sample's size and
    ``min_samples`` a fifth of it.
    """
    x, y = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if normalise:
        x, y = normalise_features(x, y)
    max_samples = max_samples or min(len(x), len(y))
    min_samples = min_samples or max(max_samples // 5, 2 * x.shape[1])
    sizes = (1.0 / np.linspace(1.0 / min_samples, 1.0 / max_samples, n_points)).astype(int)
    rng = np.random.default_rng(seed)
    values = []
    for size in sizes:
        batch = []
        for _ in range(n_batches):
            a = x[rng.integers(0, len(x), size)]
            b = y[rng.integers(0, len(y), size)]
            batch.append(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
        values.append(np.mean(batch))
    intercept, _, error = _fit_nonnegative_line(1.0 / sizes, np.asarray(values))
    return intercept, error


def _poly_kernel(x: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
    k = x @ y.T
    k *= gamma
    k += 1.0
    k *= k  # (x.y gamma + 1)^2
    k *= k  # ... ^4, without the cost of a float power
    return k


def _mmd_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the quartic polynomial kernel ``(x.y / d + 1)^4``."""
    gamma = 1.0 / x.shape[1]
    kxx, kyy, kxy = _poly_kernel(x, x, gamma), _poly_kernel(y, y, gamma), _poly_kernel(x, y, gamma)
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )


def kpd(
    reference: np.ndarray,
    candidate: np.ndarray,
    n_batches: int = 10,
    batch_size: int = 1000,
    normalise: bool = True,
    seed: int = 42,
) -> tuple[float, float]:
    """Kernel Physics Distance (median unbiased MMD^2, quartic polynomial kernel); ``(value, error)``.

    JetNet's batch size is 5000; here it is capped by the smaller sample.
    """
    x, y = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if normalise:
        x, y = normalise_features(x, y)
    size = min(batch_size, len(x), len(y))
    values = []
    for index in range(n_batches):
        rng = np.random.default_rng(seed + 1000 * index)
        values.append(_mmd_unbiased(x[rng.integers(0, len(x), size)], y[rng.integers(0, len(y), size)]))
    low, high = np.percentile(values, [16.275, 83.725])
    return float(np.median(values)), float((high - low) / 2)
