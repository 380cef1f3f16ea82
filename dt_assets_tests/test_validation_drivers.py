"""The classifier's drivers: leaving out the features a candidate gets wrong takes the classifier back to chance,
also where each of them alone looks right."""

from __future__ import annotations

import numpy as np
import pytest

from dt_assets.validation.classifier import ClassifierSettings
from dt_assets.validation.drivers import classifier_drivers

FAST = ClassifierSettings(hidden=32, epochs=15, lr=2e-3, batch_size=256)
NAMES = ["a", "b", "c", "d", "E_p"]


def events(n: int, correlation: float, seed: int) -> np.ndarray:
    """Standard normal features; b and c correlated by ``correlation``, each standard normal alone."""
    x = np.random.default_rng(seed).normal(size=(n, len(NAMES)))
    x[:, 2] = correlation * x[:, 1] + np.sqrt(1 - correlation**2) * x[:, 2]
    return x


def test_dropping_a_feature_the_candidate_gets_wrong_only_jointly_takes_the_classifier_to_chance():
    # the candidate flips the correlation of b and c (as a generator that gets a shower's centre right and its
    # skewness right, but not how they go together): the classifier separates it, without b or without c it cannot,
    # and neither b nor c alone separates anything
    drivers = classifier_drivers(events(4000, 0.9, 1), events(4000, -0.9, 2), NAMES, FAST, keep=["E_p"])
    assert drivers.auc > 0.85, drivers
    assert {f.name for f in drivers.features[:2]} == {"b", "c"}, drivers
    assert drivers.without("b") < 0.6 and drivers.without("c") < 0.6, drivers
    assert drivers.without("a") > 0.85 and drivers.without("d") > 0.85, drivers
    assert all(f.univariate < 0.56 for f in drivers.features), drivers
    assert "E_p" not in {f.name for f in drivers.features}  # kept in every training


def test_a_feature_shifted_alone_shows_in_its_univariate_auc():
    reference, candidate = events(4000, 0.0, 3), events(4000, 0.0, 4)
    candidate[:, 3] += 1.0
    drivers = classifier_drivers(reference, candidate, NAMES, FAST)
    assert drivers.features[0].name == "d" and drivers.without("d") < 0.6, drivers
    assert {f.name: f.univariate for f in drivers.features}["d"] > 0.7, drivers


def test_bad_features_are_refused_by_name():
    with pytest.raises(ValueError, match="need 5 columns"):
        classifier_drivers(np.zeros((10, 4)), np.zeros((10, 4)), NAMES, FAST)
    with pytest.raises(ValueError, match=r"keep: unknown feature\(s\) \['theta'\]"):
        classifier_drivers(np.zeros((10, 5)), np.zeros((10, 5)), NAMES, FAST, keep=["theta"])
    with pytest.raises(KeyError, match="no feature 'z'"):
        classifier_drivers(events(400, 0.0, 5), events(400, 0.0, 6), NAMES, FAST).without("z")
