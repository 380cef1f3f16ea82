"""Training of the 3DGAN: its recipe for the training loop and its per-epoch validation.

Per step, as in the reference (:class:`~dt_assets.model.step.GANStep`): the discriminator trains on a real
batch then on a generated one (labels flipped with probability ``label_flip``), then the generator trains
``generator_steps`` times against the discriminator with "real" labels, on the reference's five losses.
Beside the reference:

- the generator's output is calibrated to the data before the first step (``output_scale``, so an
  untrained generator already makes the data's mean scaled cell energy);
- the real/fake head of the scaled-down variants sees the conditions;
- the fifth loss (the cell-energy histogram) has gradients (soft bin edges);
- the optimiser is Keras' RMSprop (rho 0.9) or Adam (``optimizer``);
- an exponential moving average (EMA) of the generator's weights is kept and is the generator that is
  saved, validated and registered; its BatchNorm statistics are recomputed for the averaged weights at
  the end of every epoch (the reference instead forces batch statistics at generation).

This module needs only torch and the data stream, so it runs on a bare GPU machine too.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..physics.geometry import Geometry
from .gan3d import Discriminator, architecture_for, calibrate_output, cell_counts, gan_losses, refresh_batchnorm
from .generation import CaloGenerator
from .step import Batch, GANStep, TrainConfig, make_optimizer
from .stream import TrainingData

#: batches of training conditions the EMA generator's BatchNorm statistics are recomputed on
BATCHNORM_BATCHES = 8


class GanRecipe:
    """What :func:`dt_assets.model.train.train` needs to train the 3DGAN: both networks, the optimisers, the
    reference's step, the EMA, validation and the checkpoint state."""

    family = "3dgan"

    def __init__(self, config: TrainConfig, geometry: Geometry, data: TrainingData, device: torch.device):
        self.config, self.data, self.device = config, data, device
        # channels-last 3D is about 25% faster for these few-channel convolutions (oneDNN and cuDNN)
        arch = architecture_for(geometry)
        if config.latent_size is not None:  # the generator's input size; the spec in checkpoints records it
            arch = dataclasses.replace(arch, latent_size=config.latent_size)
        transform = data.transform
        # Module.to takes memory_format; torch's type stubs do not say so (the ignores below)
        model = CaloGenerator(geometry, arch, transform=transform)
        self.model: CaloGenerator = model.to(device, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        discriminator = Discriminator(self.model.arch, geometry, transform.power, transform.mev_per_unit)
        self.discriminator: Discriminator = discriminator.to(device, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.opt_g = make_optimizer(self.model.parameters(), config.lr_generator, config.optimizer)
        self.opt_d = make_optimizer(self.discriminator.parameters(), config.lr_discriminator, config.optimizer)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        self.gan_step = self._gan_step(self.model, self.discriminator)
        self.step_count = 0

    @property
    def generator(self) -> CaloGenerator:
        """The generator a checkpoint holds and a training returns: the EMA of the weights."""
        return self.ema

    def _gan_step(self, g_model: nn.Module, d_model: nn.Module) -> GANStep:
        return GANStep(
            self.model,
            g_model,
            self.discriminator,
            d_model,
            self.opt_g,
            self.opt_d,
            self.config,
            self.device,
            self.autocast,
            self.model.transform.energy_scale_gev,
        )

    def _latents(self, batches: int) -> list[torch.Tensor]:
        """Generator inputs at the conditions of the first training batches (fixed noise)."""
        noise = torch.Generator(device=self.device).manual_seed(self.config.seed)
        return [
            self.model.latent(b.primary_energy.to(self.device), b.theta.to(self.device), noise)
            for b in self.data.batches(self.config.batch_size, seed=self.config.seed, max_batches=batches)
        ]

    def start_fresh(self) -> None:
        """Calibrate the generator's output scale to the mean visible energy of a training batch."""
        batch = next(iter(self.data.batches(self.config.batch_size, seed=self.config.seed, max_batches=1)))
        self.model.train()
        power = self.model.transform.power
        calibrate_output(self.model.net, self._latents(1)[0], float(batch.total.mean()), power)
        self.ema.load_state_dict(self.model.state_dict())

    def wrap(self, ddp: Callable[[nn.Module], nn.Module]) -> None:
        self.gan_step = self._gan_step(ddp(self.model), ddp(self.discriminator))

    def train_mode(self) -> None:
        self.model.train()
        self.discriminator.train()

    def step(self, batch: Batch, epoch: int, index: int) -> dict[str, float]:
        losses = self.gan_step(batch, epoch, index)
        self.step_count += 1
        decay = min(self.config.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for average, current in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                average.lerp_(current, 1.0 - decay)
        return losses

    def validation_losses(self) -> dict[str, float]:
        refresh_batchnorm(self.ema.net, self._latents(BATCHNORM_BATCHES))
        return validation_losses(self.ema, self.discriminator, self.data, self.config, self.device, self.autocast)

    def state(self) -> dict[str, Any]:
        return {
            "generator_training": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "discriminator": {k: v.detach().cpu() for k, v in self.discriminator.state_dict().items()},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step_count": self.step_count,
        }

    def load_state(self, payload: Mapping[str, Any]) -> None:
        self.model.load_state_dict(payload.get("generator_training", payload["generator"]))
        self.ema.load_state_dict(payload["generator"])
        self.discriminator.load_state_dict(payload["discriminator"])
        self.opt_g.load_state_dict(payload["opt_g"])
        self.opt_d.load_state_dict(payload["opt_d"])
        self.step_count = int(payload.get("step_count", 0))

    def warm_start(self, start: nn.Module, source: str, payload: Mapping[str, Any] | None) -> None:
        """Start from another 3DGAN's generator (and, from a checkpoint, its discriminator)."""
        if not isinstance(start, CaloGenerator) or start.spec()["architecture"] != self.model.spec()["architecture"]:
            raise ValueError(f"warm start {source}: its architecture does not match this geometry's")
        self.model.load_state_dict(start.state_dict())
        self.ema.load_state_dict(start.state_dict())
        if payload is not None and "discriminator" in payload:  # a checkpoint: the discriminator too
            self.discriminator.load_state_dict(payload["discriminator"])

    def results(self) -> tuple[CaloGenerator, Discriminator]:
        return self.ema.eval(), self.discriminator.eval()


@torch.no_grad()
def validation_losses(
    generator: CaloGenerator,
    discriminator: Discriminator,
    data: TrainingData,
    config: TrainConfig,
    device: torch.device,
    autocast=None,
) -> dict[str, float]:
    """Losses on the validation split and E_sum/E_p of MC against generated showers (same conditions)."""
    autocast = autocast or nullcontext()
    generator.eval()
    discriminator.eval()
    sums: dict[str, float] = {}
    n = 0
    noise = torch.Generator(device=device).manual_seed(12345)
    threshold = generator.transform.threshold
    for batch in data.batches(
        config.batch_size, split="validation", shuffle=False, max_batches=config.validation_batches
    ):
        batch = batch.to(device)
        conditions = torch.stack([batch.energy, batch.theta], dim=1)
        unscaled_real = batch.cells.float().clamp_min(0).pow(1.0 / discriminator.power)
        counts = cell_counts(unscaled_real * discriminator.mev_per_unit)
        ones = torch.ones(len(batch), device=device)
        targets = (batch.energy, batch.measured_theta, batch.total, config.weights)
        with autocast:
            fake = generator(generator.latent(batch.primary_energy, batch.theta, noise)).float()
            real_loss, _ = gan_losses(discriminator(batch.cells, conditions), ones, *targets, counts=counts)
            fake_loss, terms = gan_losses(discriminator(fake, conditions), ones, *targets, counts=counts)
        unscaled = generator.transform.inverse(fake) / generator.transform.mev_per_unit
        generated_total = torch.where(unscaled >= threshold, unscaled, 0).sum(dim=(1, 2, 3, 4))
        values = {
            "val_d_real": real_loss.item(),
            "val_g": fake_loss.item(),
            **{f"val_g_{k}": v.item() for k, v in terms.items()},
            "val_esum_over_ep_mc": (batch.total / batch.primary_energy).mean().item(),
            "val_esum_over_ep_gan": (generated_total / batch.primary_energy).mean().item(),
        }
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    generator.train()
    discriminator.train()
    return {k: v / n for k, v in sums.items()} if n else {}
