"""Training of the flow-matching generator: its settings and its recipe for the training loop.

Per step: a batch of preprocessed showers is turned back into MeV deposits and summarised as both
stages see them (dequantised afresh every step); the shape flow (stage 2) takes one AdamW step on its
flow-matching loss, then the much cheaper energy flow (stage 1) takes ``stage1_updates`` steps on the
same showers, each with fresh noise, times and dequantisation (it needs many more steps than stage 2
and costs a few percent of a stage-2 step). Gradients are clipped. The learning rate
warms up linearly, then follows a cosine to zero over the whole training (``epochs`` x steps per
epoch), and an exponential moving average (EMA) of the weights is kept: the EMA is the generator
that is saved, validated and registered.

Before the first step of a fresh training the standardisation of both stages is fitted on up to
``standardisation_events`` training showers; a warm start keeps the standardisation it starts from.

This module needs only torch (and the data stream), so it runs on a bare GPU machine too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..physics.geometry import Geometry
from .flow import FlowGenerator, ShowerSummary, flow_architecture_for, flow_matching_loss
from .step import Batch, TrainingCollapsedError

if TYPE_CHECKING:  # the zarr streaming: not needed to build a config (bench/gpu.py runs without zarr)
    from .stream import TrainingData

STAGES = ("stage1", "stage2")
#: architecture fields a training config may set (the rest keep flow_architecture_for's defaults)
ARCHITECTURE_FIELDS = (
    "stage1_hidden",
    "stage1_blocks",
    "stage2_hidden",
    "stage2_blocks",
    "stage1_steps",
    "stage2_steps",
)


@dataclass(frozen=True)
class FlowTrainConfig:
    """Settings of a flow-matching training (defaults: what ``bench/fidelity.py`` found best on 2 CPU cores)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    max_steps_per_epoch: int | None = None
    validation_batches: int = 4
    standardisation_events: int = 20_000
    stage1_updates: int = 4
    stage1_hidden: int = 256
    stage1_blocks: int = 3
    stage2_hidden: int = 512
    stage2_blocks: int = 3
    stage1_steps: int = 32
    #: 8 midpoint steps: on the 45-minute bench model (bench/README), 16 gave AUC 0.781, FPD 0.0032 and 8 gave
    #: 0.783, 0.0034 (the same within the bootstrap), 4 gave 0.799, 0.012; 8 generates 1.6x faster than 16
    stage2_steps: int = 8
    #: stage 1 also learns each layer's transverse third moment and the moment tilt gives it (FlowArchitecture)
    layer_skewness: bool = False

    family = "flow"

    def __post_init__(self) -> None:
        names = ("epochs", "batch_size", "validation_batches", "standardisation_events", "stage1_updates")
        for name in (*names, *ARCHITECTURE_FIELDS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or not self.grad_clip > 0:
            raise ValueError("weight_decay and warmup_steps must be >= 0 and grad_clip positive")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {self.max_steps_per_epoch!r}")
        if not isinstance(self.layer_skewness, bool):
            raise ValueError(f"layer_skewness must be true or false, got {self.layer_skewness!r}")

    def architecture(self) -> dict[str, int | bool]:
        return {**{name: getattr(self, name) for name in ARCHITECTURE_FIELDS}, "layer_skewness": self.layer_skewness}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def learning_rate(config: FlowTrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine from ``lr`` to 0 at ``total_steps``."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    progress = min(1.0, step / max(total_steps, 1))
    return config.lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_deposits(batch: Batch, data: TrainingData) -> torch.Tensor:
    """A preprocessed batch's cells back in MeV (B, x, y, z), the threshold applied as in the data."""
    transform = data.transform
    deposits = transform.inverse(batch.cells.float()).squeeze(1)
    return torch.where(deposits >= transform.threshold * transform.mev_per_unit, deposits, 0.0)


class FlowRecipe:
    """What :func:`dt_assets.model.train.train` needs to train the flow family: the model, its EMA, the
    optimiser, one step, validation and the checkpoint state."""

    family = "flow"

    def __init__(
        self,
        config: FlowTrainConfig,
        geometry: Geometry,
        data: TrainingData,
        device: torch.device,
        steps_per_epoch: int,
        seed: int,
    ):
        self.config, self.data, self.device = config, data, device
        transform = data.transform
        arch = flow_architecture_for(
            geometry, threshold_mev=float(transform.threshold * transform.mev_per_unit), **config.architecture()
        )
        self.model = FlowGenerator(geometry, arch).to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizers = {
            stage: torch.optim.AdamW(
                getattr(self.model, stage).parameters(), lr=config.lr, weight_decay=config.weight_decay
            )
            for stage in STAGES
        }
        self.total_steps = config.epochs * steps_per_epoch
        self.step_count = 0
        self.noise = torch.Generator(device=device).manual_seed(seed)
        # the velocity fields as the steps call them (DistributedDataParallel wrappers under DDP)
        self.fields: dict[str, nn.Module] = {stage: getattr(self.model, stage) for stage in STAGES}

    @property
    def generator(self) -> FlowGenerator:
        """The generator a checkpoint holds and a training returns: the EMA of the weights."""
        return self.ema

    def start_fresh(self) -> None:
        """Fit the standardisation on training showers (a fresh training, not a resumed or warm one)."""
        n = min(self.config.standardisation_events, self.data.n_events())
        batch_size = min(n, 1024)
        noise = torch.Generator(device=self.device).manual_seed(self.config.seed)  # the same on every rank
        parts = [
            self.model.summarise(batch_deposits(b.to(self.device), self.data), b.primary_energy, b.theta, noise)
            for b in self.data.batches(batch_size, seed=self.config.seed, max_batches=max(1, n // batch_size))
        ]
        summary = ShowerSummary(*(torch.cat([getattr(p, f) for p in parts]) for f in ("conditions", "stage1", "cells")))
        self.model.fit_standardisation(summary)
        self.ema.load_state_dict(self.model.state_dict())

    def wrap(self, ddp: Callable[[nn.Module], nn.Module]) -> None:
        self.fields = {stage: ddp(field) for stage, field in self.fields.items()}

    def train_mode(self) -> None:
        self.model.train()

    def step(self, batch: Batch, epoch: int, index: int) -> dict[str, float]:
        lr = learning_rate(self.config, self.step_count, self.total_steps)
        observed = self.model.observe(batch_deposits(batch, self.data), batch.primary_energy, batch.theta)
        _, cells, condition = self.model.targets(self.model.dequantise(observed, self.noise))
        loss2 = self._update("stage2", cells, condition, lr)
        loss1 = 0.0
        for _ in range(self.config.stage1_updates):
            stage1 = self.model.standardised_stage1(self.model.stage1_data(observed, self.noise), observed.conditions)
            loss1 += self._update("stage1", stage1, observed.conditions, lr) / self.config.stage1_updates
        self.step_count += 1
        decay = min(self.config.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for average, current in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                average.lerp_(current, 1.0 - decay)
        values = {"loss": loss1 + loss2, "loss_stage1": loss1, "loss_stage2": loss2, "lr": lr}
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingCollapsedError(f"training diverged at epoch {epoch}, step {index}: non-finite loss {values}")
        return values

    def _update(self, stage: str, x1: torch.Tensor, condition: torch.Tensor, lr: float) -> float:
        """One AdamW step of a stage's velocity field on its flow-matching loss; the loss."""
        optimizer = self.optimizers[stage]
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = flow_matching_loss(self.fields[stage], x1, condition, self.noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(getattr(self.model, stage).parameters(), self.config.grad_clip)
        optimizer.step()
        return loss.item()

    @torch.no_grad()
    def validation_losses(self) -> dict[str, float]:
        """The EMA's flow-matching losses on the validation split, and E_sum/E_p of generated showers against
        MC at the conditions of the first validation batch."""
        sums: dict[str, float] = {}
        n = 0
        noise = torch.Generator(device=self.device).manual_seed(12345)
        first = None
        for batch in self.data.batches(
            self.config.batch_size, split="validation", shuffle=False, max_batches=self.config.validation_batches
        ):
            batch = batch.to(self.device)
            deposits = batch_deposits(batch, self.data)
            first = first or (deposits, batch)
            _, terms = self.ema.loss(self.ema.summarise(deposits, batch.primary_energy, batch.theta, noise), noise)
            for k, v in terms.items():
                sums[f"val_loss_{k}"] = sums.get(f"val_loss_{k}", 0.0) + v.item()
            n += 1
        if first is None:
            return {}
        out = {k: v / n for k, v in sums.items()}
        deposits, batch = first
        draw = torch.randn((len(batch), self.ema.noise_size), generator=noise, device=self.device)
        generated = self.ema.sample(draw, batch.primary_energy, batch.theta)
        out["val_esum_over_ep_mc"] = (deposits.sum(dim=(1, 2, 3)) / 1000 / batch.primary_energy).mean().item()
        out["val_esum_over_ep_gan"] = (generated.sum(dim=(1, 2, 3)) / 1000 / batch.primary_energy).mean().item()
        return out

    def state(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            **{f"optimizer_{stage}": optimizer.state_dict() for stage, optimizer in self.optimizers.items()},
            "step_count": self.step_count,
            "noise_rng": self.noise.get_state(),
        }

    def load_state(self, payload: Mapping[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["generator"])
        for stage, optimizer in self.optimizers.items():
            optimizer.load_state_dict(payload[f"optimizer_{stage}"])
        self.step_count = int(payload["step_count"])
        self.noise.set_state(payload["noise_rng"])

    def warm_start(self, start: nn.Module, source: str, payload: Mapping[str, Any] | None) -> None:
        """Start from another flow generator's weights and standardisation (its EMA)."""
        if not isinstance(start, FlowGenerator) or start.spec() != self.model.spec():
            raise ValueError(f"warm start {source}: not a flow generator of this geometry and architecture")
        self.model.load_state_dict(start.state_dict())
        self.ema.load_state_dict(start.state_dict())

    def results(self) -> tuple[FlowGenerator, None]:
        return self.ema.eval(), None
