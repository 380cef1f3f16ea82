"""Command line for training, the entry point for torchrun, Slurm and pods.

    python -m dt_assets.model.cli train --data STORE.zarr [STORE.zarr ...] --checkpoint DIR \\
        --geometry small_ecal_15x15x12 --epochs 2 --batch-size 32 [--family flow] [--particle e-]

    torchrun --nproc_per_node 2 -m dt_assets.model.cli train ...   # DDP, gloo on CPU, NCCL on GPUs

Rank 0 prints a line per epoch. Within each epoch it draws progress bars (steps, rate, ETA) on
stderr when stderr is a terminal, else (torchrun into a log file, Slurm, a pod) it prints a step line
every ``--progress-every-s`` seconds (default 30, or ``$CALOTWIN_PROGRESS_EVERY_S``); ``--no-bars``
asks for the lines on a terminal too.

``reproduce`` trains a registered version again from its reproducibility record (on the CPU, into an
empty checkpoint folder) and says whether the weights equal the registered generator's::

    python -m dt_assets.model.cli reproduce --model-uri models:/calotwin-generator/1 --checkpoint DIR

It exits 0 when they are bit-identical, 1 when they differ (the line gives the largest difference) and
2 when the record's data changed or went missing.

``rename-model`` carries a tracking store from before the flow family over: the 3DGAN versions registered
as ``calotwin-3dgan`` become versions of ``calotwin-generator`` (same numbers, aliases and tags)::

    python -m dt_assets.model.cli rename-model            # --from calotwin-3dgan --to calotwin-generator

``--report FILE`` writes, per rank (``FILE`` with ``{rank}`` filled in), a JSON line with the rank, the
world size, the device, a checksum of the generator's weights and the loss history.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch
import torch.distributed as dist

from ..physics.geometry import get_geometry
from ..progress import STEPS_EVERY_S, cadence, echo, enable_bars
from .flow_training import FlowTrainConfig
from .generation import FAMILIES, GAN
from .job import StepProgress
from .stream import TrainingData
from .train import Distributed, EpochReport, TrainConfig, train


def weights_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of the trainable parameters (DDP keeps these identical on every rank)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dt_assets.model.cli", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train a generator (3DGAN or flow) on preprocessed stores")
    p.add_argument("--data", nargs="+", required=True, help="preprocessed zarr stores")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (resumes if it holds one)")
    p.add_argument("--geometry", required=True)
    p.add_argument("--family", choices=FAMILIES, default=GAN, help=f"generator family (default {GAN})")
    p.add_argument("--particle", default=None, help="train on this particle's events only (default: all)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=None, help="default: the family's (3dgan 64, flow 256)")
    p.add_argument("--lr", type=float, default=FlowTrainConfig.lr, help="flow: peak learning rate")
    p.add_argument("--lr-generator", type=float, default=TrainConfig.lr_generator)
    p.add_argument("--lr-discriminator", type=float, default=TrainConfig.lr_discriminator)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--warm-start", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--report", default=None, help="JSON report per rank; '{rank}' is replaced")
    p.add_argument(
        "--progress-every-s",
        type=float,
        default=None,
        help=f"seconds between step lines when no bars are drawn (default {STEPS_EVERY_S:.0f})",
    )
    p.add_argument("--no-bars", action="store_true", help="step lines instead of progress bars on a terminal")
    r = commands.add_parser("reproduce", help="train a registered version again from its reproducibility record")
    r.add_argument("--model-uri", required=True, help="models:/name/N or models:/name@alias")
    r.add_argument("--checkpoint", required=True, help="an empty checkpoint folder for the new training")
    r.add_argument("--device", default="cpu")
    r.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: CaloTwin's, see the configuration reference)",
    )
    m = commands.add_parser("rename-model", help="rename a registered model (its versions and aliases go along)")
    m.add_argument("--from", dest="old", default=None, help="default calotwin-3dgan (the name before the flow family)")
    m.add_argument("--to", dest="new", default=None, help="default calotwin-generator")
    m.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: CaloTwin's, see the configuration reference)",
    )
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        return reproduce_command(args.model_uri, args.checkpoint, args.device, args.tracking_uri)
    if args.command == "rename-model":
        return rename_command(args.old, args.new, args.tracking_uri)

    config: TrainConfig | FlowTrainConfig
    if args.family == GAN:
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size or TrainConfig.batch_size,
            lr_generator=args.lr_generator,
            lr_discriminator=args.lr_discriminator,
            max_steps_per_epoch=args.max_steps_per_epoch,
            seed=args.seed,
        )
    else:
        config = FlowTrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size or FlowTrainConfig.batch_size,
            lr=args.lr,
            max_steps_per_epoch=args.max_steps_per_epoch,
            seed=args.seed,
        )
    ctx = Distributed.from_env()
    every_s = cadence(STEPS_EVERY_S) if args.progress_every_s is None else args.progress_every_s
    if every_s < 0:
        parser.error(f"--progress-every-s must be >= 0, got {every_s}")
    bars = ctx.is_main and not args.no_bars and sys.stderr.isatty()
    if bars:
        enable_bars()

    def progress(report: EpochReport) -> None:
        names = ("d_real", "d_fake", "g", "loss")
        losses = ", ".join(f"{k} {report.metrics[k]:.3g}" for k in names if k in report.metrics)
        echo(
            f"epoch {report.epoch + 1}/{report.epochs}: {losses}; {report.samples_per_second:.0f} samples/s, "
            f"ETA {report.eta_seconds:.0f} s"
        )

    with StepProgress(None if bars else echo, every_s, bars=bars) as steps:
        result = train(
            TrainingData(args.data, particle=args.particle),
            config,
            args.checkpoint,
            get_geometry(args.geometry),
            warm_start=args.warm_start,
            on_epoch=[progress],
            device=args.device,
            on_step=[steps],
        )
    if args.report:
        record = {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "device": result.device,
            "generator_checksum": weights_checksum(result.generator),
            "resumed_from_epoch": result.resumed_from_epoch,
            "history": result.history,
        }
        with open(args.report.format(rank=ctx.rank), "w") as handle:
            handle.write(json.dumps(record) + "\n")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def reproduce_command(model_uri: str, checkpoint: str, device: str = "cpu", tracking_uri: str | None = None) -> int:
    """The ``reproduce`` subcommand: rebuild, compare with the registered weights, print the verdict."""
    import mlflow

    from .generation import download_generator
    from .record import DataChangedError, compare_weights, read_record, reproduce
    from .registry import default_tracking_uri

    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    record = read_record(model_uri)
    env = record.environment
    echo(
        f"{model_uri}: {len(record.data)} store(s), seed {record.config['seed']}, stages {record.stages}, "
        f"trained on {env['device']} x{env['world_size']} with {env['torch_threads']} thread(s), "
        f"code {record.code_version} ({record.git_commit or 'no git commit'})"
    )
    try:
        result = reproduce(record, checkpoint, device=device)
    except DataChangedError as exc:
        echo(f"cannot reproduce: {exc}")
        return 2
    equal, worst = compare_weights(result.generator, download_generator(model_uri))
    verdict = "bit-identical to" if equal else "DIFFERENT from"
    echo(f"rebuilt weights are {verdict} the registered generator's (max abs difference {worst:.3g})")
    return 0 if equal else 1


def rename_command(old: str | None, new: str | None, tracking_uri: str | None = None) -> int:
    """The ``rename-model`` subcommand: 0 when renamed, 1 when there is nothing to rename or the name is taken."""
    import mlflow

    from .registry import DEFAULT_MODEL_NAME, LEGACY_MODEL_NAME, default_tracking_uri, rename_registered_model

    old, new = old or LEGACY_MODEL_NAME, new or DEFAULT_MODEL_NAME
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        versions = rename_registered_model(old, new)
    except (LookupError, ValueError) as exc:
        echo(f"cannot rename in {uri}: {exc}")
        return 1
    echo(f"renamed {old} to {new} in {uri}: {versions} version(s) with their aliases and tags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
