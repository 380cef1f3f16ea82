"""The training loop of both generator families: streaming data, checkpoints and resume, warm start, DDP,
collapse detection.

One loop (:func:`train`) runs a *recipe*, chosen by the type of the config: :class:`GanRecipe` for a
:class:`TrainConfig` (the 3DGAN) and :class:`~dt_assets.model.flow_training.FlowRecipe` for a
:class:`~dt_assets.model.flow_training.FlowTrainConfig` (flow matching). A recipe builds its networks
and optimisers, takes one step on a batch, computes its validation losses, and says what its checkpoint holds.

3DGAN, per step as in the reference: the discriminator trains on a real batch then on a generated
one (labels flipped with probability ``label_flip``), then the generator trains ``generator_steps``
times against the discriminator with "real" labels. Losses are the 4-term loss of
:func:`dt_assets.model.gan3d.gan_losses`; optimisers are RMSprop.

Runs unchanged under ``torchrun``: with ``WORLD_SIZE`` > 1 it joins the process group (gloo on CPU,
NCCL on CUDA), wraps the trained networks in DistributedDataParallel and reads a disjoint share of
the chunks; rank 0 writes the checkpoints. On CUDA the 3DGAN uses bf16 autocast.

A checkpoint (generator spec and weights, the recipe's other networks and optimisers, history, RNG
state) is written atomically after every epoch; a training started again with the same checkpoint
location resumes after the last finished epoch. NaN losses or a 3DGAN stuck at empty showers raise
:class:`TrainingCollapsedError` (the reference called ``sys.exit()``).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..fsio import atomic_file, url_to_fs
from ..physics.geometry import Geometry
from .flow_training import FlowRecipe, FlowTrainConfig
from .gan3d import Discriminator
from .gan_training import GanRecipe
from .generation import ShowerGenerator, generator_from_payload, generator_payload, load_generator, read_payload
from .step import TrainConfig, TrainingCollapsedError
from .stream import TrainingData

__all__ = [
    "EpochReport",
    "FlowTrainConfig",
    "StepReport",
    "TrainConfig",
    "TrainResult",
    "TrainingCollapsedError",
    "read_checkpoint",
    "train",
]

CHECKPOINT_FILE = "last.pt"


@dataclass
class EpochReport:
    """What one epoch measured (rank 0's view; samples/s counts all ranks)."""

    epoch: int
    epochs: int
    seconds: float
    samples_per_second: float
    eta_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepReport:
    """One finished training step (rank 0's view; samples count all ranks)."""

    epoch: int
    epochs: int
    step: int  # steps done in this epoch, this one included
    steps: int  # steps per epoch
    samples: int  # samples trained on in this epoch so far, all ranks
    seconds: float  # since this epoch started
    start_epoch: int  # the epoch this training started (or resumed) at


@dataclass
class TrainResult:
    generator: ShowerGenerator
    discriminator: Discriminator | None  # the 3DGAN's; None for the flow family
    history: list[dict[str, float]]
    checkpoint_url: str
    resumed_from_epoch: int
    device: str


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(dist_ctx: Distributed, device: str | None = None) -> torch.device:
    """CUDA (this rank's GPU) when present, else CPU; ``device`` overrides."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", dist_ctx.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def train(
    data: TrainingData,
    config: TrainConfig | FlowTrainConfig,
    checkpoint_dir: str,
    geometry: Geometry,
    storage_options: Mapping[str, Any] | None = None,
    warm_start: str | None = None,
    on_epoch: Sequence[Callable[[EpochReport], None]] = (),
    device: str | None = None,
    on_step: Sequence[Callable[[StepReport], None]] = (),
) -> TrainResult:
    """Train (or resume training) a generator on ``data``; see the module docstring.

    The family follows the config: a :class:`TrainConfig` trains a 3DGAN, a
    :class:`~dt_assets.model.flow_training.FlowTrainConfig` the flow-matching generator. On rank 0,
    each of ``on_epoch`` gets every finished epoch's :class:`EpochReport` (after its checkpoint is
    written) and each of ``on_step`` every finished step's :class:`StepReport`.
    """
    ctx = Distributed.from_env()
    dev = pick_device(ctx, device)
    if ctx.world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    torch.manual_seed(config.seed * 1000)  # every rank builds the same initial weights
    steps_per_epoch = data.steps_per_epoch(config.batch_size, ctx.world_size)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{data.n_events()} training events are fewer than one batch of {config.batch_size} per rank "
            f"x {ctx.world_size} rank(s)"
        )
    recipe = _recipe(config, geometry, data, dev, steps_per_epoch, ctx)
    checkpoint_url = checkpoint_dir.rstrip("/") + "/" + CHECKPOINT_FILE
    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint = read_checkpoint(checkpoint_url, storage_options)
    if checkpoint is not None:
        if json.loads(checkpoint["spec"]) != json.loads(json.dumps(recipe.generator.spec())):
            raise ValueError(f"{checkpoint_url}: checkpoint is for another family, geometry, architecture or transform")
        recipe.load_state(checkpoint)
        history = json.loads(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"]) + 1
        torch.set_rng_state(checkpoint["rng"])  # rank 0's stream; other ranks branch off it by rank
        torch.manual_seed(int(torch.randint(0, 2**31, (1,))) + ctx.rank)
    elif warm_start:
        _warm_start(recipe, warm_start, storage_options)
    else:
        recipe.start_fresh()
    if ctx.rank and checkpoint is None:
        torch.manual_seed(config.seed * 1000 + ctx.rank)  # each rank its own noise from here on

    if ctx.world_size > 1:
        ids = [dev.index] if dev.type == "cuda" else None
        recipe.wrap(lambda module: nn.parallel.DistributedDataParallel(module, device_ids=ids))

    run_started = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        started = time.monotonic()
        recipe.train_mode()
        sums: dict[str, float] = {}
        n_steps = samples = 0
        for batch in data.batches(
            config.batch_size,
            epoch=epoch,
            seed=config.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            max_batches=config.max_steps_per_epoch,
        ):
            for key, value in recipe.step(batch.to(dev).channels_last(), epoch, n_steps).items():
                sums[key] = sums.get(key, 0.0) + value
            n_steps += 1
            samples += len(batch)
            if ctx.is_main and on_step:
                progress = StepReport(
                    epoch=epoch,
                    epochs=config.epochs,
                    step=n_steps,
                    steps=steps_per_epoch,
                    samples=samples * ctx.world_size,
                    seconds=time.monotonic() - started,
                    start_epoch=start_epoch,
                )
                for hook in on_step:
                    hook(progress)
        seconds = time.monotonic() - started
        metrics = {k: v / max(n_steps, 1) for k, v in sums.items()}
        if ctx.is_main:
            metrics.update(recipe.validation_losses())
        metrics["epoch"] = epoch
        history.append(metrics)
        done = epoch + 1 - start_epoch
        elapsed = time.monotonic() - run_started
        report = EpochReport(
            epoch=epoch,
            epochs=config.epochs,
            seconds=seconds,
            samples_per_second=samples * ctx.world_size / max(seconds, 1e-9),
            eta_seconds=elapsed / done * (config.epochs - epoch - 1),
            metrics=metrics,
        )
        if ctx.is_main:
            _write_checkpoint(checkpoint_url, storage_options, recipe, epoch, history)
            for callback in on_epoch:
                callback(report)
        if ctx.world_size > 1:
            dist.barrier()
    generator, discriminator = recipe.results()
    return TrainResult(
        generator=generator,
        discriminator=discriminator,
        history=history,
        checkpoint_url=checkpoint_url,
        resumed_from_epoch=start_epoch,
        device=str(dev),
    )


def _recipe(
    config: TrainConfig | FlowTrainConfig,
    geometry: Geometry,
    data: TrainingData,
    device: torch.device,
    steps_per_epoch: int,
    ctx: Distributed,
) -> GanRecipe | FlowRecipe:
    if isinstance(config, FlowTrainConfig):
        return FlowRecipe(config, geometry, data, device, steps_per_epoch, seed=config.seed * 1000 + ctx.rank)
    return GanRecipe(config, geometry, data, device)


def read_checkpoint(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    fs, path = url_to_fs(url, storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        return read_payload(handle.read(), url)


def _write_checkpoint(url, storage_options, recipe: GanRecipe | FlowRecipe, epoch: int, history: list) -> None:
    payload = {
        **generator_payload(recipe.generator),
        **recipe.state(),
        "epoch": epoch,
        "history": json.dumps(history),
        "rng": torch.get_rng_state(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_file(url, storage_options) as handle:
        handle.write(buffer.getvalue())


def _warm_start(recipe: GanRecipe | FlowRecipe, source: str, storage_options: Mapping[str, Any] | None) -> None:
    """Start from another model's weights (a registry URI, a generator file or a checkpoint)."""
    payload = None if source.startswith("models:/") else read_checkpoint(source, storage_options)
    if payload is None and not source.startswith("models:/"):
        raise FileNotFoundError(f"{source}: no such generator or checkpoint")
    start = load_generator(source) if payload is None else generator_from_payload(payload, source)
    if start.family != recipe.family:
        raise ValueError(f"warm start {source}: a {start.family} generator cannot start a {recipe.family} training")
    recipe.warm_start(start, source, payload)
