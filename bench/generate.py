"""Benchmark: 3DGAN generation at the reference 51x51x25 geometry on this machine's CPU.

Showers/s of the reference generator (``dt_assets.generate``'s network, no preprocessing
inversion) for batch sizes 1, 16 and 128, in PyTorch and, beside it, exported to ONNX and run by
ONNX Runtime on the CPU (``dt_assets.model.export``: the graph an MC framework runs, which also
inverts the preprocessing and applies the threshold, a negligible elementwise cost); the FLOPs of one shower counted by
``torch.utils.flop_counter``; the achieved GFLOP/s against a large fp32 matmul measured in the same
run; and beside them the Monte Carlo's showers/s at 100 GeV on the same geometry. Prints a table,
then one JSON line.

    .venv/bin/python bench/generate.py [--seconds 5] [--batches 1 16 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dt_assets import build_generator, get_geometry
from dt_assets.model.export import INPUTS, example_inputs, export_onnx, onnx_session
from dt_assets.model.gan3d import Discriminator
from dt_assets.model.step import Batch, GANStep, TrainConfig
from dt_assets.simulation import GFlashSimulator, sample_conditions


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - start) / 1e9


@torch.no_grad()
def showers_per_second(generator, batch: int, seconds: float) -> float:
    latent = torch.randn(batch, 256)
    generator(latent)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        generator(latent)
        done += batch
    return done / (time.perf_counter() - start)


def onnx_showers_per_second(session, generator, batch: int, seconds: float) -> float:
    """The exported generator under ONNX Runtime (as many threads as PyTorch uses)."""
    feed = {name: t.numpy() for name, t in zip(INPUTS, example_inputs(generator, batch), strict=True)}
    session.run(None, feed)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        session.run(None, feed)
        done += batch
    return done / (time.perf_counter() - start)


def reference_training_seconds_per_sample(batch: int = 8) -> float:
    """One reference training step (D real, D fake, G twice) on the CPU, per sample."""
    geometry = get_geometry("clic_ecal_51x51x25")
    generator = build_generator().net.to(memory_format=torch.channels_last_3d)
    discriminator = Discriminator(generator.arch, geometry).to(memory_format=torch.channels_last_3d)
    step = GANStep.single_process(generator, discriminator, TrainConfig(batch_size=batch), torch.device("cpu"))
    showers = Batch(
        cells=torch.rand(batch, 1, *geometry.shape) * 0.01,
        energy=torch.rand(batch),
        theta=torch.full((batch,), np.pi / 2),
        total=torch.rand(batch) + 0.1,
        measured_theta=torch.full((batch,), np.pi / 2),
        primary_energy=torch.rand(batch) * 100 + 10,
    ).channels_last()
    step(showers, 0, 0)
    start = time.perf_counter()
    step(showers, 0, 1)
    return (time.perf_counter() - start) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum time per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128], help="batch sizes to time")
    args = parser.parse_args()
    generator = build_generator().eval()  # the reference architecture
    tmp = tempfile.TemporaryDirectory()
    session = onnx_session(export_onnx(generator, Path(tmp.name) / "generator.onnx"), torch.get_num_threads())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generator(torch.randn(1, 256))
    flops = counter.get_total_flops()
    peak = matmul_gflops()
    rows = []
    for batch in args.batches:
        rate = showers_per_second(generator, batch, args.seconds)
        onnx_rate = onnx_showers_per_second(session, generator, batch, args.seconds)
        row = {"batch": batch, "showers_per_s": rate, "gflops": rate * flops / 1e9}
        rows.append(row | {"onnxruntime_showers_per_s": onnx_rate})
    tmp.cleanup()
    peak = max(peak, matmul_gflops())
    for row in rows:
        row["fraction_of_matmul"] = row["gflops"] / peak
    geometry = get_geometry("clic_ecal_51x51x25")
    conditions = sample_conditions(128, 100.0, (60.0, 120.0), "e-", np.random.default_rng(0))
    simulator = GFlashSimulator()
    simulator.simulate_block(conditions, geometry, np.random.default_rng(1))
    start = time.perf_counter()
    simulator.simulate_block(conditions, geometry, np.random.default_rng(1))
    mc_rate = 128 / (time.perf_counter() - start)
    print(
        f"reference 3DGAN generator, {torch.get_num_threads()} CPU threads: {flops / 1e9:.2f} GFLOP per shower; "
        f"fp32 matmul {peak:.0f} GFLOP/s"
    )
    print(f"{'batch':>6} {'showers/s':>10} {'GFLOP/s':>8} {'of matmul':>10} {'ORT showers/s':>14}")
    for r in rows:
        print(
            f"{r['batch']:>6} {r['showers_per_s']:>10.1f} {r['gflops']:>8.1f} {r['fraction_of_matmul']:>10.0%} "
            f"{r['onnxruntime_showers_per_s']:>14.1f}"
        )
    print(f"Monte Carlo at 100 GeV on the same grid: {mc_rate:.0f} showers/s")
    train_s = reference_training_seconds_per_sample()
    print(f"one reference training step (batch 8): {train_s:.2f} s per sample")
    print(
        json.dumps(
            {
                "bench": "generate",
                "device": "cpu",
                "gflop_per_shower": flops / 1e9,
                "matmul_gflops": peak,
                "mc_showers_per_s_100gev": mc_rate,
                "reference_training_s_per_sample": train_s,
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
