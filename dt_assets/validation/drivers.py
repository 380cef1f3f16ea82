"""Which high-level features the classifier test separates candidate from reference on.

The classifier AUC (:mod:`dt_assets.validation.classifier`) says *that* a network tells a generator's showers
from MC, not on what. Two numbers per feature answer that:

- ``auc_without``: the AUC of the same classifier trained without the feature (leave one out). Where it falls
  towards 0.5, the classifier needed that feature: the candidate gets it, or its relation to the others, wrong.
- ``univariate``: the AUC of the feature alone as a score, folded to >= 0.5 (``max(a, 1 - a)``). A feature
  whose leave-one-out AUC falls while its univariate AUC stays near 0.5 is wrong only jointly (its correlation
  with another feature), which the per-cell histograms of the report cannot show.

``bench/drivers.py`` runs this on a trained generator against MC on the default validation grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .classifier import ClassifierSettings, classifier_scores, roc_auc


@dataclass(frozen=True)
class FeatureDriver:
    """One feature's part in the classifier's separation."""

    name: str
    auc_without: float
    univariate: float


@dataclass(frozen=True)
class ClassifierDrivers:
    """The classifier AUC on all features and each feature's :class:`FeatureDriver`, the features the
    classifier needs most (lowest AUC without them) first."""

    auc: float
    features: tuple[FeatureDriver, ...]

    def without(self, name: str) -> float:
        """The AUC without feature ``name``."""
        for feature in self.features:
            if feature.name == name:
                return feature.auc_without
        raise KeyError(f"no feature {name!r}; features: {', '.join(f.name for f in self.features)}")


def classifier_drivers(
    reference: np.ndarray,
    candidate: np.ndarray,
    names: Sequence[str],
    settings: ClassifierSettings | None = None,
    keep: Sequence[str] = (),
) -> ClassifierDrivers:
    """Each feature's leave-one-out and univariate AUC (see the module) for events ``reference`` and
    ``candidate`` (n, len(names)). Features named in ``keep`` (the conditions, say) stay in every training
    and get no row of their own. Trains ``1 + len(names) - len(keep)`` classifiers with ``settings`` (default: the
    validation's, :class:`ClassifierSettings`)."""
    settings = settings or ClassifierSettings()
    reference, candidate = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    names = list(names)
    if reference.ndim != 2 or candidate.ndim != 2 or not reference.shape[1] == candidate.shape[1] == len(names):
        raise ValueError(
            f"features: reference {reference.shape} and candidate {candidate.shape} need {len(names)} columns "
            f"({', '.join(names)})"
        )
    unknown = sorted(set(keep) - set(names))
    if unknown:
        raise ValueError(f"keep: unknown feature(s) {unknown}; features: {', '.join(names)}")

    def auc(columns: list[int]) -> float:
        return roc_auc(*classifier_scores(reference[:, columns], candidate[:, columns], settings))

    labels = np.concatenate([np.zeros(len(reference)), np.ones(len(candidate))])
    everything = list(range(len(names)))
    rows = []
    for k, name in enumerate(names):
        if name in keep:
            continue
        alone = roc_auc(labels, np.concatenate([reference[:, k], candidate[:, k]]))
        rows.append(FeatureDriver(name, auc([i for i in everything if i != k]), max(alone, 1.0 - alone)))
    return ClassifierDrivers(auc(everything), tuple(sorted(rows, key=lambda row: row.auc_without)))
