"""Metrics, distances, classifier AUC and observables against closed forms and constructed showers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dt_assets.physics.geometry import get_geometry
from dt_assets.validation.classifier import ClassifierSettings, classifier_scores, roc_auc
from dt_assets.validation.distances import fpd, frechet_distance, kpd
from dt_assets.validation.metrics import Sample, get_metric, separation_power_of
from dt_assets.validation.observables import OBSERVABLES, ShowerBlock
from dt_assets_tests.conftest import SMALL


def test_separation_power_of_identical_histograms_is_zero_and_of_disjoint_ones_is_one():
    h = np.array([3.0, 1.0, 0.0, 5.0])
    assert separation_power_of(h, 2 * h) == pytest.approx(0.0)
    assert separation_power_of(np.array([1.0, 2.0, 0.0, 0.0]), np.array([0.0, 0.0, 4.0, 1.0])) == pytest.approx(1.0)
    # 1/2 [(1 - 1/2)^2 / (3/2) + (0 - 1/2)^2 / (1/2)] = 1/3
    assert separation_power_of(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(1 / 3)


def test_frechet_distance_between_gaussians_matches_the_closed_form():
    # diagonal covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    expected = 1.0 + 4.0 + (4.0 + 0.0 + 1.0)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected)
    # a rotated pair (same eigenbasis): the distance does not depend on the basis
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    c1, c2 = rotation @ np.diag(s1**2) @ rotation.T, rotation @ np.diag(s2**2) @ rotation.T
    assert frechet_distance(rotation @ mu1, c1, rotation @ mu2, c2) == pytest.approx(expected)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_fpd_extrapolates_to_the_gaussian_frechet_distance():
    rng = np.random.default_rng(1)
    a = rng.normal([0.0, 0.0], [1.0, 1.0], size=(20_000, 2))
    b = rng.normal([0.5, 0.0], [1.0, 2.0], size=(20_000, 2))
    value, error = fpd(a, b, normalise=False)
    assert value == pytest.approx(0.25 + 1.0, rel=0.05)
    assert error < 0.1
    same, _ = fpd(a, rng.normal(0.0, 1.0, size=(20_000, 2)), normalise=False)
    assert same < 0.01


def test_kpd_is_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4))
    same, _ = kpd(a, b)
    shifted, _ = kpd(a, b + 0.5)
    assert abs(same) < 0.01
    assert shifted > 10 * max(abs(same), 1e-4)


def test_wasserstein_and_ks_of_shifted_samples():
    values = np.random.default_rng(3).normal(size=2000)
    edges = np.linspace(-4, 5, 31)
    ref = Sample.of(values, edges)
    shifted = Sample.of(values + 0.5, edges)
    # a shift by c moves every quantile by c: W1 = c, in units of the reference std
    assert get_metric("wasserstein").func(ref, shifted)[0] == pytest.approx(0.5 / values.std())
    assert get_metric("ks").func(ref, ref)[0] == 0.0
    assert get_metric("ks").func(ref, Sample.of(values + 100, edges))[0] == pytest.approx(1.0)
    assert get_metric("mean_error").func(ref, Sample.of(values * 1.1 + 0.1 * values.mean(), edges))[0] == (
        pytest.approx(0.2, rel=1e-6)
    )
    assert get_metric("width_error").func(ref, Sample.of(values * 1.2, edges))[0] == pytest.approx(0.2)


def test_ks_counts_tied_values_once():
    edges = np.linspace(0, 3, 4)
    ref = Sample.of(np.array([1.0, 1.0, 2.0, 2.0]), edges)
    cand = Sample.of(np.array([1.0, 2.0, 2.0, 2.0]), edges)
    assert get_metric("ks").func(ref, cand)[0] == pytest.approx(0.25)


def test_roc_auc_of_perfect_reversed_and_tied_scores():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(4, 0.5)) == 0.5


def test_classifier_separates_different_samples_but_not_equal_ones():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(1500, 3))
    settings = ClassifierSettings(hidden=32, epochs=15, lr=3e-3, batch_size=256)
    different = roc_auc(*classifier_scores(a, rng.normal(size=(1500, 3)) + np.array([1.0, 0, 0]), settings))
    same = roc_auc(*classifier_scores(a, rng.normal(size=(1500, 3)), settings))
    assert different > 0.7
    assert abs(same - 0.5) < 0.06
    # reproducible from its own seed, whatever the global torch RNG state
    torch.manual_seed(123)
    again = roc_auc(*classifier_scores(a, rng.normal(size=(1500, 3)) + np.array([1.0, 0, 0]), settings))
    rng2 = np.random.default_rng(4)
    a2 = rng2.normal(size=(1500, 3))
    torch.manual_seed(456)
    first = roc_auc(*classifier_scores(a2, rng2.normal(size=(1500, 3)) + np.array([1.0, 0, 0]), settings))
    assert first == different and again != different  # same inputs: same AUC; other inputs: other AUC


def _block(cells: np.ndarray, energy: float = 100.0, theta_deg: float = 90.0) -> ShowerBlock:
    n = len(cells)
    return ShowerBlock(cells, np.full(n, energy), np.full(n, np.deg2rad(theta_deg)), get_geometry(SMALL))


def test_observables_of_a_constructed_shower():
    geometry = get_geometry(SMALL)
    cells = np.zeros((1, *geometry.shape))
    cells[0, 7, 7, 3] = 60.0  # 60 MeV in the central column at layer 3
    cells[0, 9, 7, 5] = 20.0  # 20 MeV two cells to +x, layer 5
    cells[0, 7, 7, 6] = 0.05  # below the 0.1 MeV threshold: counts in sums, not in the occupancy
    block = _block(cells, energy=40.0)
    value = {name: o(block)[0] for name, o in OBSERVABLES.items() if not o.binned}
    total = 80.05
    x = geometry.x_centres_mm()
    mean_x = (60.05 * x[7] + 20.0 * x[9]) / total
    assert value["e_sum"] == pytest.approx(total)
    assert value["e_ratio"] == pytest.approx(total / 40.0)
    assert value["center_x"] == pytest.approx(mean_x)
    assert value["center_y"] == pytest.approx(geometry.y_centres_mm()[7])
    assert value["center_z"] == pytest.approx((60 * 3 + 20 * 5 + 0.05 * 6) / total)
    width_x = np.sqrt((60.05 * (x[7] - mean_x) ** 2 + 20.0 * (x[9] - mean_x) ** 2) / total)
    assert value["width_x"] == pytest.approx(width_x)
    assert value["width_y"] == pytest.approx(0.0)
    assert value["occupancy"] == 2
    assert value["max_deposit"] == 60.0
    assert (value["max_x"], value["max_layer"]) == (pytest.approx(x[7]), 3)
    # two equal-weight points: skewness 0 only when symmetric; here the heavier point is at -x: skew > 0
    assert value["skewness_x"] > 0
    profile = OBSERVABLES["longitudinal_profile"](block)[0]
    assert profile[3] == 60.0 and profile[5] == 20.0 and profile.sum() == pytest.approx(total)
    spectrum = OBSERVABLES["cell_energy_spectrum"](block)[0]
    assert spectrum.sum() == 2  # the two cells above threshold


def test_the_cell_spectrums_mean_error_is_the_geometric_mean_cells_and_does_not_hang_on_the_unit():
    geometry = get_geometry(SMALL)
    rng = np.random.default_rng(3)
    cells = np.zeros((200, *geometry.shape))
    lit = rng.random(cells.shape) < 0.1
    cells[lit] = 10 ** rng.normal(-0.3, 0.8, lit.sum())  # MeV: log10 means near 0, as in the small preset
    spectrum = OBSERVABLES["cell_energy_spectrum"]
    centres = spectrum.bins(geometry)
    edges = np.concatenate([centres - 0.0625, centres[-1:] + 0.0625])

    def mean_error(
        ref_cells: np.ndarray, cand_cells: np.ndarray, shift: float = 0.0, kind: str = spectrum.kind
    ) -> float:
        # binned as validate bins it: the bin centres weighted by the summed contents (``shift``: another unit)
        ref, cand = (
            Sample(centres[None] + shift, spectrum(_block(c)).sum(axis=0)[None], edges + shift, kind)
            for c in (ref_cells, cand_cells)
        )
        return float(get_metric("mean_error").func(ref, cand)[0])

    # every visible cell 4% hotter (the empty ones stay empty: the same cells are lit)
    hotter = np.where(cells > 0.1, 1.04 * cells, cells)
    assert mean_error(cells, hotter) == pytest.approx(0.04, abs=0.004)
    # the same showers in keV (log10 + 3): the same error; a relative error of the log's mean would read 0.5%
    assert mean_error(cells, hotter, shift=3.0) == pytest.approx(mean_error(cells, hotter), abs=1e-9)
    assert abs(mean_error(cells, hotter, shift=3.0, kind="magnitude")) < 0.01
    assert mean_error(cells, cells) == 0.0


def test_measured_theta_of_a_tilted_track():
    geometry = get_geometry(SMALL)
    depth = geometry.layer_depths_mm()
    cells = np.zeros((1, *geometry.shape))
    slope_cells = 0.5  # half a cell in x per layer
    for layer in range(geometry.n_layers):
        x = 7 + slope_cells * (layer - 6)
        low = int(np.floor(x))
        cells[0, low, 7, layer] += 10 * (1 - (x - low))
        cells[0, min(low + 1, 14), 7, layer] += 10 * (x - low)
    theta = OBSERVABLES["measured_theta"](_block(cells))[0]
    dx_dz = slope_cells * geometry.cell_size_mm / (depth[1] - depth[0])
    assert theta == pytest.approx(np.pi / 2 - np.arctan(dx_dz), abs=1e-3)
