"""The search space of the hyper-parameter optimisation (:mod:`dt_assets.tuning.hpo`), without Optuna.

The tunable parameters are named as the fields of the training asset's config (``gan_model`` for the
3DGAN, ``flow_model`` for the flow family), so a study's best parameters feed a training as they are
(:func:`apply_parameters`). A study tunes one family: the parameters of the other are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..model.flow_training import FlowTrainConfig
from ..model.step import TrainConfig

__all__ = ["FLOW_PARAMETERS", "GAN_PARAMETERS", "PARAMETERS", "SearchSpace", "apply_parameters", "family_parameters"]

#: the tunable hyper-parameters of the 3DGAN, named as the fields of ``gan_model``'s config
GAN_PARAMETERS = (
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
#: the tunable hyper-parameters of the flow family, named as the fields of ``flow_model``'s config
FLOW_PARAMETERS = ("lr", "ema_decay", "batch_size", "stage2_hidden")
#: every parameter a search space knows
PARAMETERS = tuple(dict.fromkeys([*GAN_PARAMETERS, *FLOW_PARAMETERS]))
WEIGHTS = ("weight_real_fake", "weight_energy", "weight_angle", "weight_total")
LINEAR = ("label_flip", "ema_decay")
FLOAT_RANGES = ("lr_generator", "lr_discriminator", *WEIGHTS, "label_flip", "lr", "ema_decay")
CHOICES = ("batch_size", "latent_size", "stage2_hidden")


def family_parameters(family: str) -> tuple[str, ...]:
    """The tunable parameters of a generator family (``3dgan`` or ``flow``)."""
    try:
        return {"3dgan": GAN_PARAMETERS, "flow": FLOW_PARAMETERS}[family]
    except KeyError:
        raise ValueError(f"unknown generator family {family!r}; one of ['3dgan', 'flow']") from None


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
    lr: tuple[float, ...] = (1e-4, 3e-3)
    ema_decay: tuple[float, ...] = (0.99, 0.9995)
    stage2_hidden: tuple[int, ...] = (512, 1024)
    family: str = "3dgan"

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
            if name not in LINEAR and low <= 0:
                raise ValueError(f"search_space.{name}: a log-scale range must be positive, got low {low}")
            if name == "label_flip" and not (low >= 0 and high < 0.5):
                raise ValueError(f"search_space.label_flip: must lie in [0, 0.5), got [{low}, {high}]")
            if name == "ema_decay" and not (low >= 0 and high < 1):
                raise ValueError(f"search_space.ema_decay: must lie in [0, 1), got [{low}, {high}]")
        family_parameters(self.family)
        smallest = {"batch_size": 2, "latent_size": 3, "stage2_hidden": 1}
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
        """The parameters this space tunes: its family's with a non-empty range or choices."""
        return tuple(name for name in family_parameters(self.family) if getattr(self, name))

    def suggest(self, trial: Any) -> dict[str, Any]:
        """This trial's values of the tuned parameters (``trial``: an ``optuna.Trial``)."""
        params: dict[str, Any] = {}
        for name in self.tuned():
            value = getattr(self, name)
            if name in CHOICES:
                params[name] = trial.suggest_categorical(name, list(value))
            else:
                params[name] = trial.suggest_float(name, value[0], value[1], log=name not in LINEAR)
        return params

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **{name: list(getattr(self, name)) for name in PARAMETERS}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        unknown = sorted(set(data) - {*PARAMETERS, "family"})
        if unknown:
            raise ValueError(f"search_space: unknown parameter(s) {unknown}; known: {list(PARAMETERS)}")
        fields: dict[str, Any] = {k: v if k == "family" else tuple(v) for k, v in data.items()}
        return cls(**fields)


def apply_parameters(base: TrainConfig | FlowTrainConfig, params: Mapping[str, Any]) -> TrainConfig | FlowTrainConfig:
    """``base`` with the tuned ``params`` (names of its family's parameters) put in; unknown names are errors."""
    known = family_parameters(base.family)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown {base.family} hyper-parameter(s) {unknown}; known: {list(known)}")
    if isinstance(base, FlowTrainConfig):
        flow_changes: dict[str, Any] = {k: int(v) if k in CHOICES else float(v) for k, v in params.items()}
        return replace(base, **flow_changes)
    weights = dict(zip(WEIGHTS, base.loss_weights, strict=True))
    weights.update({k: float(v) for k, v in params.items() if k in WEIGHTS})
    changes: dict[str, Any] = {k: v for k, v in params.items() if k not in WEIGHTS}
    for name in ("lr_generator", "lr_discriminator", "label_flip"):
        if name in changes:
            changes[name] = float(changes[name])
    for name in CHOICES:
        if name in changes:
            changes[name] = int(changes[name])
    real_fake, energy, angle, total = (weights[k] for k in WEIGHTS)
    return replace(base, loss_weights=(real_fake, energy, angle, total), **changes)
