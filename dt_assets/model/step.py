"""One training step of the 3DGAN, and what it needs: the batch type, the settings, the collapse error.

This module needs only torch and :mod:`dt_assets.model.gan3d`, so it runs on a bare GPU machine
(``bench/gpu.py``) as well as inside :func:`dt_assets.model.train.train`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .gan3d import Discriminator, DiscriminatorOutput, cell_counts, gan_losses, make_latent

if TYPE_CHECKING:  # generation imports this module's neighbours; only the type is needed here
    from .generation import CaloGenerator


@dataclass
class Batch:
    """A batch of preprocessed events as tensors: cells (B, 1, x, y, z) and per-event vectors (B,)."""

    cells: torch.Tensor
    energy: torch.Tensor
    theta: torch.Tensor
    total: torch.Tensor
    measured_theta: torch.Tensor
    primary_energy: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{k: v.to(device, non_blocking=True) for k, v in self.__dict__.items()})

    def channels_last(self) -> Batch:
        """The cells in channels-last 3D memory format (what the training loop uses)."""
        self.cells = self.cells.contiguous(memory_format=torch.channels_last_3d)
        return self

    def __len__(self) -> int:
        return self.energy.shape[0]


class TrainingCollapsedError(RuntimeError):
    """Training diverged (NaN/inf losses) or the generator only makes empty showers."""


#: the optimisers a 3DGAN training can use: Keras' RMSprop (the reference's: rho 0.9, epsilon 1e-7) or Adam
OPTIMIZERS = ("rmsprop", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a 3DGAN training (defaults: the reference's, with a CPU-sized batch)."""

    epochs: int = 10
    batch_size: int = 64
    lr_generator: float = 1e-3
    lr_discriminator: float = 1e-3
    loss_weights: tuple[float, float, float, float] = (3.0, 0.1, 25.0, 0.1)
    #: weight of the reference's fifth loss, the cell-energy histogram (:func:`~dt_assets.model.gan3d.count_error`;
    #: the reference: 0.1). Off by default: on the small preset at 0.1 it drove E_sum/E_p from 0.0025 to 0.0007
    #: in 80 steps (MC 0.0103), off it stayed at 0.008-0.0095
    weight_count: float = 0.0
    optimizer: str = "rmsprop"
    #: decay of the exponential moving average of the generator's weights (the EMA is the saved generator)
    ema_decay: float = 0.999
    label_flip: float = 0.05
    generator_steps: int = 2
    seed: int = 0
    max_steps_per_epoch: int | None = None
    validation_batches: int = 8
    collapse_patience: int = 20
    #: generator input size (2 conditions + noise); None: the architecture's (256 = 2 + 254, the reference's)
    latent_size: int | None = None

    family = "3dgan"  # a class attribute, not a setting

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "generator_steps", "validation_batches", "collapse_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr_generator", "lr_discriminator"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if len(self.loss_weights) != 4 or any(w < 0 for w in self.loss_weights):
            raise ValueError(f"loss_weights must be four non-negative numbers, got {self.loss_weights!r}")
        if not self.weight_count >= 0:
            raise ValueError(f"weight_count must be >= 0, got {self.weight_count!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not 0 <= self.label_flip < 0.5:
            raise ValueError(f"label_flip must lie in [0, 0.5), got {self.label_flip!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {self.max_steps_per_epoch!r}")
        if self.latent_size is not None and (
            isinstance(self.latent_size, bool) or not isinstance(self.latent_size, int) or self.latent_size < 3
        ):
            raise ValueError(
                f"latent_size must be an integer >= 3 (2 conditions + noise) or None, got {self.latent_size!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data; ``latent_size`` only when set."""
        d = asdict(self)
        if d["latent_size"] is None:
            del d["latent_size"]
        return d

    @property
    def weights(self) -> tuple[float, ...]:
        """The five loss weights: the four of ``loss_weights`` and ``weight_count``."""
        return (*self.loss_weights, self.weight_count)


def make_optimizer(parameters, lr: float, kind: str) -> torch.optim.Optimizer:
    """Keras' RMSprop (rho 0.9, epsilon 1e-7; torch's defaults are alpha 0.99, 1e-8) or Adam (betas 0.5, 0.9)."""
    if kind == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(0.5, 0.9))
    return torch.optim.RMSprop(parameters, lr=lr, alpha=0.9, eps=1e-7)


class GANStep:
    """One training step of the reference: D on real, D on fake, then G ``generator_steps`` times."""

    def __init__(
        self,
        generator: CaloGenerator,
        g_model: nn.Module,
        discriminator: Discriminator,
        d_model: nn.Module,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device,
        autocast=None,
        energy_scale_gev: float = 100.0,
    ):
        """``generator`` has an ``arch``; ``g_model``/``d_model`` are the modules called (DDP wrappers or the same)."""
        self.generator, self.g_model = generator, g_model
        self.discriminator, self.d_model = discriminator, d_model
        self.opt_g, self.opt_d = opt_g, opt_d
        self.config, self.device = config, device
        self.autocast = autocast or nullcontext()
        self.energy_scale_gev = energy_scale_gev
        self.empty_steps = 0

    @classmethod
    def single_process(
        cls,
        generator: CaloGenerator,
        discriminator: Discriminator,
        config: TrainConfig,
        device: torch.device,
        autocast=None,
    ) -> GANStep:
        """A step over one process's generator and discriminator, with fresh optimisers."""
        return cls(
            generator,
            generator,
            discriminator,
            discriminator,
            make_optimizer(generator.parameters(), config.lr_generator, config.optimizer),
            make_optimizer(discriminator.parameters(), config.lr_discriminator, config.optimizer),
            config,
            device,
            autocast,
        )

    def latent(self, batch: Batch) -> torch.Tensor:
        return make_latent(self.generator.arch, batch.primary_energy, batch.theta, self.energy_scale_gev)

    def labels(self, n: int, real: bool) -> torch.Tensor:
        flip = torch.rand(n, device=self.device) < self.config.label_flip
        value = torch.ones(n, device=self.device) if real else torch.zeros(n, device=self.device)
        return torch.where(flip, 1.0 - value, value)

    def loss(
        self, out: DiscriminatorOutput, is_real: torch.Tensor, batch: Batch, counts: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        return gan_losses(
            out, is_real, batch.energy, batch.measured_theta, batch.total, weights=self.config.weights, counts=counts
        )

    def __call__(self, batch: Batch, epoch: int, index: int) -> dict[str, float]:
        n = len(batch)
        conditions = torch.stack([batch.energy, batch.theta], dim=1)
        with torch.no_grad():  # the fifth loss's targets: the real showers' cell-energy histograms
            unscaled = batch.cells.float().clamp_min(0).pow(1.0 / self.discriminator.power)
            counts = cell_counts(unscaled * self.discriminator.mev_per_unit)
        with torch.no_grad(), self.autocast:
            fake = self.g_model(self.latent(batch))
        out: dict[str, float] = {}
        for name, cells, real in (("d_real", batch.cells, True), ("d_fake", fake.float(), False)):
            self.opt_d.zero_grad(set_to_none=True)
            with self.autocast:
                loss, terms = self.loss(self.d_model(cells, conditions), self.labels(n, real), batch, counts)
            loss.backward()
            self.opt_d.step()
            out[name] = loss.item()
            out.update({f"{name}_{k}": v.item() for k, v in terms.items()})
        self.discriminator.requires_grad_(False)  # the generator steps do not train D
        try:
            for i in range(self.config.generator_steps):
                self.opt_g.zero_grad(set_to_none=True)
                with self.autocast:
                    fake = self.g_model(self.latent(batch))
                    judged = self.discriminator(fake.float(), conditions)
                    loss, terms = self.loss(judged, torch.ones(n, device=self.device), batch, counts)
                loss.backward()
                self.opt_g.step()
                out[f"g_{i}"] = loss.item()
                for k, v in terms.items():
                    out[f"g_{k}"] = out.get(f"g_{k}", 0.0) + v.item() / self.config.generator_steps
        finally:
            self.discriminator.requires_grad_(True)
        out["g"] = sum(out.pop(f"g_{i}") for i in range(self.config.generator_steps)) / self.config.generator_steps
        self._check(out, judged.total, epoch, index)
        return out

    def _check(self, losses: dict[str, float], generated_total: torch.Tensor, epoch: int, index: int) -> None:
        bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
        if bad:
            raise TrainingCollapsedError(f"training diverged at epoch {epoch}, step {index}: non-finite {bad}")
        self.empty_steps = self.empty_steps + 1 if float(generated_total.detach().max()) <= 0 else 0
        if self.empty_steps >= self.config.collapse_patience:
            raise TrainingCollapsedError(
                f"generator collapsed at epoch {epoch}, step {index}: only empty showers for "
                f"{self.empty_steps} steps in a row (try a lower learning rate or another seed)"
            )
