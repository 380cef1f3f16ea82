"""Benchmark: training throughput from zarr against a bare loop in memory, and peak memory vs data size.

1. Samples/s of ``dt_assets.model.train.train`` (what the ``gan_model`` asset runs), streaming
   preprocessed zarr stores, against a bare loop that runs the same training step on the same
   events held in memory as tensors. The goal (docs/design.md, "Performance goals"): streaming >= 0.9 x bare.
2. Peak resident memory of a training process on a data set of 1x and 4x the size (same number of
   steps): the goal (docs/design.md, "Performance goals") is flat.

Small preset (small_ecal_15x15x12), batch 32, CPU unless a GPU is present. Prints a table, then
one JSON line; progress bars on stderr follow the simulation and the trainings.

    .venv/bin/python bench/train.py [--events 2000] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dt_assets import get_geometry, simulate_blocks
from dt_assets.model.gan3d import Discriminator
from dt_assets.model.generation import CaloGenerator
from dt_assets.model.job import StepProgress
from dt_assets.model.preprocess import preprocess_blocks
from dt_assets.model.step import Batch, GANStep
from dt_assets.model.stream import FIELDS, TrainingData
from dt_assets.model.train import TrainConfig, train
from dt_assets.progress import Progress, enable_bars
from dt_assets.showers.store import open_store, write_blocks

GEOMETRY = "small_ecal_15x15x12"


def make_store(path: Path, events: int, seed: int) -> str:
    blocks = simulate_blocks(events, (10.0, 100.0), (60.0, 120.0), geometry=GEOMETRY, seed=seed)
    blocks = Progress(events, f"simulating {path.name}").wrap(blocks, lambda block: block.sizes["event"])
    write_blocks(preprocess_blocks(blocks, f"mc-bench-{seed}"), str(path))
    return str(path)


def streaming_rate(url: str, config: TrainConfig, work: Path) -> float:
    reports = []
    with StepProgress(None) as steps:  # bars only
        train(
            TrainingData([url]),
            config,
            str(work / f"ckpt-{time.monotonic_ns()}"),
            get_geometry(GEOMETRY),
            on_epoch=[reports.append],
            on_step=[steps],
        )
    return reports[-1].samples_per_second


def bare_rate(url: str, config: TrainConfig) -> float:
    """The same step on the same training events, from tensors already in memory."""
    ds = open_store(url)
    train_idx = np.flatnonzero(ds["split"].values == 0)
    cells = torch.from_numpy(np.asarray(ds["cells"].values)[train_idx]).unsqueeze(1)
    fields = {name: torch.from_numpy(np.asarray(ds[name].values, dtype=np.float32)[train_idx]) for name in FIELDS}
    geometry = get_geometry(GEOMETRY)
    torch.manual_seed(config.seed)
    generator = CaloGenerator(geometry).to(memory_format=torch.channels_last_3d)
    discriminator = Discriminator(generator.arch, geometry).to(memory_format=torch.channels_last_3d)
    step = GANStep.single_process(generator, discriminator, config, torch.device("cpu"))
    order = torch.randperm(len(cells))
    b = config.batch_size
    steps = Progress(config.max_steps_per_epoch, "bare loop", "steps").wrap(range(config.max_steps_per_epoch))
    started = time.monotonic()
    for i in steps:
        idx = order[i * b : (i + 1) * b]
        step(Batch(cells=cells[idx], **{k: v[idx] for k, v in fields.items()}).channels_last(), 0, i)
    return config.max_steps_per_epoch * b / (time.monotonic() - started)


def child(url: str, steps: int, work: Path, mode: str) -> None:
    """Train ``steps`` steps on ``url`` (streaming, or the bare loop over everything in memory: the
    control that shows the measurement sees data size) and print this process's peak RSS (MB)."""
    config = TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=steps, validation_batches=2)
    if mode == "streaming":
        train(TrainingData([url]), config, str(work / f"ckpt-rss-{time.monotonic_ns()}"), get_geometry(GEOMETRY))
    else:
        bare_rate(url, config)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "URL", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.child:
        child(args.child[1], args.steps, Path(args.child[2]), args.child[0])
        return
    enable_bars()  # not in the children: their output is read by the parent
    work = Path(tempfile.mkdtemp(prefix="calotwin-bench-train-"))
    try:
        report(args, work)
    finally:
        shutil.rmtree(work)


def report(args: argparse.Namespace, work: Path) -> None:
    small = make_store(work / "x1.zarr", args.events, seed=1)
    large = make_store(work / "x4.zarr", 4 * args.events, seed=2)
    config = TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=args.steps, validation_batches=1)
    # interleaved, best of two, on a noisy machine
    streamed = max(streaming_rate(small, config, work) for _ in range(2))
    bare = max(bare_rate(small, config) for _ in range(2))
    rss = {}
    for mode in ("streaming", "in-memory"):
        for name, url in (("1x", small), ("4x", large)):
            command = [sys.executable, __file__, "--steps", str(args.steps), "--child", mode, url, str(work)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rss[f"{mode} {name}"] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
    row = {
        "events_1x": args.events,
        "events_4x": 4 * args.events,
        "steps": args.steps,
        "batch_size": 32,
        "streaming_samples_per_s": streamed,
        "bare_samples_per_s": bare,
        "ratio_streaming_to_bare": streamed / bare,
        "peak_rss_mb": rss,
    }
    print(f"3DGAN training on {GEOMETRY}, batch 32, {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"{'path':<26} {'samples/s':>10}")
    print(f"{'train() streaming zarr':<26} {streamed:>10.1f}")
    print(f"{'bare loop, in memory':<26} {bare:>10.1f}")
    print(f"ratio streaming / bare: {row['ratio_streaming_to_bare']:.2f} (goal >= 0.9)")
    for mode in ("streaming", "in-memory"):
        sizes = (
            f"{rss[mode + ' 1x']:.0f} MB with {args.events} events, {rss[mode + ' 4x']:.0f} MB with {4 * args.events}"
        )
        print(f"peak RSS, {mode}: {sizes}" + (" (goal: flat)" if mode == "streaming" else " (control)"))
    print(json.dumps({"bench": "train", "results": [row]}))


if __name__ == "__main__":
    main()
