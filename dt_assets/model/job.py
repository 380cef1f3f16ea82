"""A training job as plain data: what any process (in-process, torchrun rank, Slurm task, pod) needs to train.

:class:`TrainingJob` travels as JSON (``to_json``/``from_json``). :func:`run_job` trains it with
:func:`dt_assets.model.train.train`; :func:`read_result` rebuilds the :class:`TrainResult` from the
final checkpoint, which is how the orchestrator gets the model of a training that ran elsewhere.
:func:`epoch_line` is the one-line progress message every compute prints per epoch,
:class:`StepProgress` logs the steps within an epoch at a steady cadence (and draws bars when they
are on), and :func:`report_from_dict` rebuilds an :class:`EpochReport` sent as JSON.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..physics.geometry import get_geometry
from ..progress import STEPS_EVERY_S, Progress, Snapshot, duration, rate_text
from .flow_training import FlowTrainConfig
from .gan3d import Discriminator
from .generation import FAMILIES, FLOW, GAN, CaloGenerator, generator_from_payload
from .step import TrainConfig
from .stream import TrainingData
from .train import CHECKPOINT_FILE, EpochReport, StepReport, TrainResult, read_checkpoint, train

__all__ = [
    "EPOCH_MESSAGE",
    "JOB_ENV",
    "RESULT_MESSAGE",
    "StepProgress",
    "TrainingJob",
    "epoch_line",
    "read_result",
    "report_from_dict",
    "run_job",
]

#: environment variable that carries a job to an external process: the JSON itself or a path to it
JOB_ENV = "CALOTWIN_TRAINING_JOB"
#: ``kind`` of the messages an external training sends back (Dagster Pipes custom messages)
EPOCH_MESSAGE = "epoch"
RESULT_MESSAGE = "result"


@dataclass(frozen=True)
class TrainingJob:
    """One training: the preprocessed stores, the checkpoint folder, the geometry, the generator family
    and its settings, the particle it trains on (None: every event), and how often (seconds) rank 0 logs
    the steps within an epoch."""

    data: list[str]
    checkpoint_dir: str
    geometry: str
    config: dict[str, Any]
    storage_options: dict[str, Any] = field(default_factory=dict)
    warm_start: str | None = None
    device: str | None = None
    progress_every_s: float = STEPS_EVERY_S
    family: str = GAN
    particle: str | None = None

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("a training job needs at least one preprocessed store")
        if self.family not in FAMILIES:
            raise ValueError(f"training job: unknown family {self.family!r}; one of {list(FAMILIES)}")
        if not (isinstance(self.progress_every_s, int | float) and math.isfinite(self.progress_every_s)):
            raise ValueError(f"training job: progress_every_s must be a number, got {self.progress_every_s!r}")
        if self.progress_every_s < 0:
            raise ValueError(f"training job: progress_every_s must be >= 0, got {self.progress_every_s}")
        get_geometry(self.geometry)  # raises on an unknown preset
        self.train_config()  # raises on a bad setting, naming it

    def train_config(self) -> TrainConfig | FlowTrainConfig:
        """The family's settings (:class:`TrainConfig` for the 3DGAN, :class:`FlowTrainConfig` for the flow)."""
        config = dict(self.config)
        if self.family == FLOW:
            return FlowTrainConfig(**config)
        if "loss_weights" in config:
            config["loss_weights"] = tuple(config["loss_weights"])
        return TrainConfig(**config)

    def training_data(self) -> TrainingData:
        return TrainingData(self.data, self.storage_options, particle=self.particle)

    @property
    def checkpoint_url(self) -> str:
        return self.checkpoint_dir.rstrip("/") + "/" + CHECKPOINT_FILE

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingJob:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"training job: not JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise ValueError(f"training job: expected a JSON object, got {type(payload).__name__}")
        missing = sorted({"data", "checkpoint_dir", "geometry", "config"} - payload.keys())
        if missing:
            raise ValueError(f"training job: missing key(s) {missing}")
        unknown = sorted(payload.keys() - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ValueError(f"training job: unknown key(s) {unknown}")
        return cls(**payload)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainingJob:
        """The job in ``$CALOTWIN_TRAINING_JOB``: inline JSON, or the path of a JSON file."""
        value = (environ if environ is not None else os.environ).get(JOB_ENV, "").strip()
        if not value:
            raise ValueError(f"${JOB_ENV} is not set: it must hold a training job (JSON, or a path to one)")
        if value.startswith("{"):
            return cls.from_json(value)
        with open(value, encoding="utf-8") as handle:
            return cls.from_json(handle.read())


def run_job(
    job: TrainingJob,
    on_epoch: Sequence[Callable[[EpochReport], None]] = (),
    on_step: Sequence[Callable[[StepReport], None]] = (),
) -> TrainResult:
    """Train (or resume) the job in this process; under torchrun every rank calls this (rank 0 alone
    calls ``on_epoch`` per epoch and ``on_step`` per step)."""
    return train(
        job.training_data(),
        job.train_config(),
        job.checkpoint_dir,
        get_geometry(job.geometry),
        storage_options=job.storage_options,
        warm_start=job.warm_start,
        on_epoch=on_epoch,
        device=job.device,
        on_step=on_step,
    )


def read_result(job: TrainingJob, device: str, resumed_from_epoch: int) -> TrainResult:
    """The result of a finished job, from its final checkpoint (generator, discriminator, history)."""
    payload = read_checkpoint(job.checkpoint_url, job.storage_options)
    if payload is None:
        raise FileNotFoundError(f"{job.checkpoint_url}: the training finished but left no checkpoint")
    generator = generator_from_payload(payload, job.checkpoint_url)
    discriminator = None
    if job.family == GAN:
        assert isinstance(generator, CaloGenerator), f"{job.checkpoint_url}: not a 3DGAN checkpoint"
        discriminator = Discriminator(generator.arch, get_geometry(job.geometry), generator.transform.power)
        discriminator.load_state_dict(payload["discriminator"])
        discriminator.eval()
    history = json.loads(payload["history"])
    if len(history) != job.train_config().epochs:
        raise ValueError(
            f"{job.checkpoint_url}: holds {len(history)} epoch(s), the job asked for {job.train_config().epochs}"
        )
    return TrainResult(
        generator=generator.eval(),
        discriminator=discriminator,
        history=history,
        checkpoint_url=job.checkpoint_url,
        resumed_from_epoch=resumed_from_epoch,
        device=device,
    )


def epoch_line(report: EpochReport) -> str:
    """The progress line of one epoch (the same whichever compute ran it)."""
    m = report.metrics
    names = ("d_real", "d_fake", "g", "val_g", "loss", "val_loss_stage1", "val_loss_stage2")
    losses = ", ".join(f"{k} {m[k]:.3g}" for k in names if k in m)
    esum = ""
    if "val_esum_over_ep_gan" in m:
        esum = f", E_sum/E_p generated {m['val_esum_over_ep_gan']:.4f} vs MC {m['val_esum_over_ep_mc']:.4f}"
    return (
        f"epoch {report.epoch + 1}/{report.epochs}: {losses}{esum}; {report.samples_per_second:.1f} samples/s, "
        f"{report.seconds:.0f} s, ETA {report.eta_seconds:.0f} s"
    )


def report_from_dict(payload: Mapping[str, Any]) -> EpochReport:
    """An :class:`EpochReport` sent as JSON (``dataclasses.asdict``) by an external process."""
    return EpochReport(
        epoch=int(payload["epoch"]),
        epochs=int(payload["epochs"]),
        seconds=float(payload["seconds"]),
        samples_per_second=float(payload["samples_per_second"]),
        eta_seconds=float(payload["eta_seconds"]),
        metrics={k: float(v) for k, v in payload.get("metrics", {}).items()},
    )


def step_line(epoch: int, epochs: int, snap: Snapshot, samples: int) -> str:
    """The progress line within an epoch: "epoch 2/4: step 120/500, 48 samples/s, epoch ETA 80 s"."""
    rate = samples / snap.elapsed_s if snap.elapsed_s > 0 else 0.0
    eta = f", epoch ETA {duration(snap.eta_s)}" if snap.eta_s is not None else ""
    return f"epoch {epoch + 1}/{epochs}: step {snap.done}/{snap.total}, {rate_text(rate)} samples/s{eta}"


class StepProgress:
    """The steps of a training, fed :class:`StepReport` by :func:`train`'s ``on_step``.

    Within each epoch it sends :func:`step_line` to ``log`` at most every ``every_s`` seconds (no
    line at an epoch's end: the epoch line follows); when bars are on (``bars``, default
    :func:`dt_assets.progress.bars_enabled`) it draws a bar over the training's steps and one per
    epoch. Use it as a context manager, so bars close even when the training fails.
    """

    def __init__(
        self,
        log: Callable[[str], None] | None,
        every_s: float = STEPS_EVERY_S,
        *,
        bars: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        self.log = log
        self.every_s = every_s
        self.bars = bars
        self.clock = clock
        self.epoch: Progress | None = None
        self.run: Progress | None = None
        self.epoch_index = -1
        self.samples = 0

    def __call__(self, report: StepReport) -> None:
        if self.run is None:
            total = (report.epochs - report.start_epoch) * report.steps
            self.run = Progress(total, "training", "steps", bars=self.bars, clock=self.clock)
        if self.epoch is None or report.epoch != self.epoch_index:
            if self.epoch is not None:
                self.epoch.close()
            self.epoch_index = report.epoch
            epoch, epochs = report.epoch, report.epochs

            def line(snap: Snapshot) -> str:
                return step_line(epoch, epochs, snap, self.samples)

            self.epoch = Progress(
                report.steps,
                f"epoch {report.epoch + 1}/{report.epochs}",
                "steps",
                self.log,
                self.every_s,
                bars=self.bars,
                line=line,
                final_line=False,
                clock=self.clock,
                started=self.clock() - report.seconds,
            )
        self.samples = report.samples
        new = report.step - self.epoch.done
        self.run.update(new)
        self.epoch.update(new)
        if report.step >= report.steps:
            self.epoch.close()
            if report.epoch + 1 >= report.epochs:
                self.run.close()

    def close(self) -> None:
        """Close the bars (a training that ended early or failed)."""
        for progress in (self.epoch, self.run):
            if progress is not None:
                progress.close(final=False)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
