"""The search space of the hyper-parameter optimisation (:mod:`dt_assets.model.hpo`), without Optuna.

The tunable parameters are named as the fields of ``gan_model``'s config, so a study's best
parameters feed a training as they are (:func:`apply_parameters`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .step import TrainConfig

__all__ = ["PARAMETERS", "SearchSpace", "apply_parameters"]

#: the tunable hyper-parameters, named as the fields of ``gan_model``'s config
PARAMETERS = (
    "lr_generator",
    "lr_discriminator",
    "weight_real_fake",
    "weight_energy",
    "weight_angle",
    "weight_total",
    "batch_size",
    "latent_size",
    "label_flip",
)
WEIGHTS = ("weight_real_fake", "weight_energy", "weight_angle", "weight_total")
FLOAT_RANGES = ("lr_generator", "lr_discriminator", *WEIGHTS, "label_flip")
CHOICES = ("batch_size", "latent_size")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges ``(low, high)`` of the float parameters (learning rates and loss weights on a log scale,
    the label-flip rate linear) and the choices of the integer ones. An empty range or choice list
    leaves that parameter out of the study: trials keep the base training config's value."""

    lr_generator: tuple[float, ...] = (1e-5, 3e-3)
    lr_discriminator: tuple[float, ...] = (1e-5, 3e-3)
    weight_real_fake: tuple[float, ...] = (0.5, 10.0)
    weight_energy: tuple[float, ...] = (0.01, 1.0)
    weight_angle: tuple[float, ...] = (1.0, 100.0)
    weight_total: tuple[float, ...] = (0.01, 1.0)
    batch_size: tuple[int, ...] = (16, 32, 64)
    latent_size: tuple[int, ...] = (64, 128, 256)
    label_flip: tuple[float, ...] = (0.0, 0.1)

    def __post_init__(self) -> None:
        for name in FLOAT_RANGES:
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)
            if not value:
                continue
            if len(value) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) for v in value):
                raise ValueError(
                    f"search_space.{name}: expected [low, high] (or [] to leave it out), got {list(value)}"
                )
            low, high = value
            if not low < high:
                raise ValueError(f"search_space.{name}: low {low} must be below high {high}")
            if name != "label_flip" and low <= 0:
                raise ValueError(f"search_space.{name}: a log-scale range must be positive, got low {low}")
            if name == "label_flip" and not (low >= 0 and high < 0.5):
                raise ValueError(f"search_space.label_flip: must lie in [0, 0.5), got [{low}, {high}]")
        smallest = {"batch_size": 2, "latent_size": 3}
        for name in CHOICES:
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)
            if any(isinstance(v, bool) or not isinstance(v, int) or v < smallest[name] for v in value):
                raise ValueError(
                    f"search_space.{name}: choices must be integers >= {smallest[name]}, got {list(value)}"
                )
            if len(set(value)) != len(value):
                raise ValueError(f"search_space.{name}: repeated choices in {list(value)}")

    def tuned(self) -> tuple[str, ...]:
        """The parameters this space tunes (non-empty range or choices)."""
        return tuple(name for name in PARAMETERS if getattr(self, name))

    def suggest(self, trial: Any) -> dict[str, Any]:
        """This trial's values of the tuned parameters (``trial``: an ``optuna.Trial``)."""
        params: dict[str, Any] = {}
        for name in self.tuned():
            value = getattr(self, name)
            if name in CHOICES:
                params[name] = trial.suggest_categorical(name, list(value))
            else:
                params[name] = trial.suggest_float(name, value[0], value[1], log=name != "label_flip")
        return params

    def to_dict(self) -> dict[str, list]:
        return {name: list(getattr(self, name)) for name in PARAMETERS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        unknown = sorted(set(data) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"search_space: unknown parameter(s) {unknown}; known: {list(PARAMETERS)}")
        return cls(**{k: tuple(v) for k, v in data.items()})


def apply_parameters(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """``base`` with the tuned ``params`` (names of :data:`PARAMETERS`) put in; unknown names are errors."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown}; known: {list(PARAMETERS)}")
    weights = dict(zip(WEIGHTS, base.loss_weights, strict=True))
    weights.update({k: float(v) for k, v in params.items() if k in WEIGHTS})
    changes: dict[str, Any] = {k: v for k, v in params.items() if k not in WEIGHTS}
    for name in ("lr_generator", "lr_discriminator", "label_flip"):
        if name in changes:
            changes[name] = float(changes[name])
    for name in CHOICES:
        if name in changes:
            changes[name] = int(changes[name])
    return replace(base, loss_weights=tuple(weights[k] for k in WEIGHTS), **changes)
