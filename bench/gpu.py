"""GPU benchmark of the reference 3DGAN and of the flow-matching generator (torch + numpy only: runs on a bare
GPU machine).

Needs only torch, numpy (and xarray for the optional training on MC); no Dagster, zarr or MLflow.
Run it from the repository root on any machine with a GPU:

    python3 bench/gpu.py                      # generation, training steps, a 3-minute training
    python3 bench/gpu.py --train-minutes 0    # throughput only
    python3 bench/gpu.py --device cpu --quick # a smoke run on the small preset (what the tests run)

1. Generation: showers/s of the 51x51x25 reference generator in fp32 and bf16 autocast for
   batch sizes 1, 16, 128 and 1024, and the achieved TFLOP/s against a large matmul (fp32, bf16).
2. Training: samples/s of the reference training step (D on real, D on fake, G twice) in fp32 and
   bf16, batch 64, on showers from the Monte Carlo.
3. Fidelity: a short full-size training (bf16) on Monte Carlo showers simulated here, then
   E_sum/E_p of generated and MC showers on held-out conditions, and the mean energy at 20 and
   90 GeV.
4. The same fidelity numbers for the flow-matching generator at 51x51x25 (fp32, the same minutes, the
   family's default architecture and learning rate, AdamW, an EMA of the weights), with its training
   samples/s and generation showers/s.
Prints a table, then one JSON line. Record the card and the numbers in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, not an installed package

from dt_assets.model.gan3d import Discriminator, Generator, architecture_for, make_latent
from dt_assets.model.step import Batch, GANStep, TrainConfig
from dt_assets.physics.geometry import get_geometry


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, seconds: float, minimum: int = 3) -> float:
    """Seconds per call, over at least ``seconds`` (after one warm-up call)."""
    fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < minimum or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync(device)
    return (time.perf_counter() - start) / calls


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, seconds) / 1e12


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def generation(geometry, device, batches, seconds) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    net = Generator(architecture_for(geometry)).to(device).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 256, device=device))
    flops = counter.get_total_flops()
    rows = []
    for precision in ("fp32", "bf16"):
        for batch in batches:
            latent = torch.randn(batch, 256, device=device)

            def run(latent=latent, precision=precision):
                with torch.no_grad(), autocast_for(device, precision):
                    net(latent)

            rate = batch / timed(run, device, seconds)
            rows.append({"precision": precision, "batch": batch, "showers_per_s": rate, "tflops": rate * flops / 1e12})
    return rows


def mc_tensors(geometry, n: int, energy, seed: int) -> tuple[Batch, float]:
    """Preprocessed Monte Carlo showers as one Batch (CPU), and the sampling fraction."""
    import xarray as xr

    from dt_assets.model.preprocess import preprocess_blocks
    from dt_assets.simulation import simulate_blocks

    ds = xr.concat(
        list(
            preprocess_blocks(
                simulate_blocks(n, energy, (60.0, 120.0), geometry=geometry, seed=seed), f"gpu-bench-{seed}"
            )
        ),
        dim="event",
    )
    fields = {
        k: torch.from_numpy(np.asarray(ds[k].values, dtype=np.float32))
        for k in ("energy", "theta", "total", "measured_theta", "primary_energy")
    }
    return Batch(cells=torch.from_numpy(ds.cells.values).unsqueeze(1), **fields), geometry.sampling_fraction


def subset(batch: Batch, idx: torch.Tensor, device) -> Batch:
    return Batch(**{k: v[idx].to(device) for k, v in batch.__dict__.items()})


def make_step(geometry, device, precision, config):
    arch = architecture_for(geometry)
    generator = Generator(arch).to(device, memory_format=torch.channels_last_3d)
    discriminator = Discriminator(arch, geometry).to(device, memory_format=torch.channels_last_3d)
    step = GANStep.single_process(generator, discriminator, config, device, autocast_for(device, precision))
    return generator, step


def training_rates(geometry, device, data: Batch, batch_size, seconds, minimum: int = 3) -> list[dict]:
    """Samples/s of one training step per precision (``minimum`` timed calls at least, after a warm-up)."""
    rows = []
    for precision in ("fp32", "bf16"):
        _, step = make_step(geometry, device, precision, TrainConfig(batch_size=batch_size))
        idx = torch.arange(batch_size)
        b = subset(data, idx, device).channels_last()
        rate = batch_size / timed(lambda b=b, step=step: step(b, 0, 0), device, seconds, minimum)
        rows.append({"precision": precision, "batch": batch_size, "samples_per_s": rate})
    return rows


def unscaled_total(cells: torch.Tensor) -> torch.Tensor:
    """Visible energy (GeV) of power-scaled showers (the reference power 0.85)."""
    return cells.float().clamp_min(0).pow(1 / 0.85).sum(dim=(1, 2, 3, 4))


@torch.no_grad()
def mean_total(generator, arch, energy_gev: float, device, n: int = 256) -> float:
    e = torch.full((n,), energy_gev, device=device)
    theta = torch.full((n,), np.pi / 2, device=device)
    return float(unscaled_total(generator(make_latent(arch, e, theta))).mean())


def fidelity(geometry, device, train_data: Batch, test_data: Batch, minutes: float, batch_size: int) -> dict:
    config = TrainConfig(batch_size=batch_size, lr_generator=3e-4, lr_discriminator=3e-4)
    generator, step = make_step(geometry, device, "bf16" if device.type == "cuda" else "fp32", config)
    arch = generator.arch
    n, steps, start = len(train_data.energy), 0, time.perf_counter()
    while time.perf_counter() - start < minutes * 60:
        idx = torch.randint(0, n, (batch_size,))
        step(subset(train_data, idx, device).channels_last(), 0, steps)
        steps += 1
    generator.eval()
    with torch.no_grad():
        idx = torch.arange(min(1024, len(test_data.energy)))
        t = subset(test_data, idx, device)
        gen_total = unscaled_total(generator(make_latent(arch, t.primary_energy, t.theta)))
    ratio = {"gan": float((gen_total / t.primary_energy).mean()), "mc": float((t.total / t.primary_energy).mean())}
    return {
        "train_minutes": minutes,
        "steps": steps,
        "samples": steps * batch_size,
        "esum_over_ep_gan": ratio["gan"],
        "esum_over_ep_mc": ratio["mc"],
        "mean_gev_gan_20": mean_total(generator, arch, 20.0, device),
        "mean_gev_gan_90": mean_total(generator, arch, 90.0, device),
        "mean_gev_mc_20": 20.0 * ratio["mc"],
        "mean_gev_mc_90": 90.0 * ratio["mc"],
    }


def flow_fidelity(geometry, device, minutes: float, n_train: int, n_test: int, batch_size: int) -> dict:
    """Train the flow-matching generator for ``minutes`` on fresh MC (in memory), then E_sum/E_p and the mean
    energy at 20 and 90 GeV of its showers against MC's, its training samples/s and generation showers/s."""
    import copy

    from dt_assets.model.flow import FlowGenerator, ShowerSummary, flow_matching_loss
    from dt_assets.model.flow_training import FlowTrainConfig
    from dt_assets.simulation import simulate

    def tensors(n: int, seed: int) -> tuple[torch.Tensor, ...]:
        ds = simulate(n, (10.0, 200.0), (60.0, 120.0), geometry=geometry, seed=seed)
        deposits = torch.from_numpy(np.asarray(ds.energy_deposit.values, dtype=np.float32))
        return deposits, *(
            torch.from_numpy(np.asarray(ds[k].values, dtype=np.float32)) for k in ("primary_energy", "theta")
        )

    config = FlowTrainConfig(batch_size=batch_size)
    deposits, energy, theta = tensors(n_train, 3)
    model = FlowGenerator(geometry).to(device)
    noise = torch.Generator(device=device).manual_seed(0)
    parts = [
        model.summarise(
            deposits[i : i + 1024].to(device), energy[i : i + 1024].to(device), theta[i : i + 1024].to(device), noise
        )
        for i in range(0, min(n_train, config.standardisation_events), 1024)
    ]
    model.fit_standardisation(
        ShowerSummary(*(torch.cat([getattr(p, f) for p in parts]) for f in ("conditions", "stage1", "cells")))
    )
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizers = {
        s: torch.optim.AdamW(getattr(model, s).parameters(), lr=config.lr, weight_decay=0.0)
        for s in ("stage1", "stage2")
    }

    def update(stage: str, x1: torch.Tensor, condition: torch.Tensor, lr: float) -> None:
        for group in optimizers[stage].param_groups:
            group["lr"] = lr
        loss = flow_matching_loss(getattr(model, stage), x1, condition, noise)
        optimizers[stage].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(getattr(model, stage).parameters(), config.grad_clip)
        optimizers[stage].step()

    steps, start = 0, time.perf_counter()
    budget = minutes * 60
    while time.perf_counter() - start < budget:
        idx = torch.randint(0, n_train, (batch_size,))
        observed = model.observe(deposits[idx].to(device), energy[idx].to(device), theta[idx].to(device))
        _, cells, condition = model.targets(model.dequantise(observed, noise))
        # the family's schedule (linear warm-up, cosine to 0) over the time budget: the steps are not known ahead
        progress = min(1.0, (time.perf_counter() - start) / budget)
        lr = config.lr * min(1.0, (steps + 1) / config.warmup_steps) * 0.5 * (1 + np.cos(np.pi * progress))
        update("stage2", cells, condition, lr)
        for _ in range(config.stage1_updates):
            stage1 = model.standardised_stage1(model.stage1_data(observed, noise), observed.conditions)
            update("stage1", stage1, observed.conditions, lr)
        steps += 1
        decay = min(config.ema_decay, (1 + steps) / (10 + steps))
        with torch.no_grad():
            for average, current in zip(ema.parameters(), model.parameters(), strict=True):
                average.lerp_(current, 1.0 - decay)
        sync(device)
    train_seconds = time.perf_counter() - start
    ema.eval()
    test_deposits, test_energy, test_theta = tensors(n_test, 4)
    with torch.no_grad():
        draw = torch.randn((n_test, ema.noise_size), generator=noise, device=device)
        sync(device)
        started = time.perf_counter()
        made = ema.sample(draw, test_energy.to(device), test_theta.to(device)).cpu()
        sync(device)
        generation_seconds = time.perf_counter() - started

        def mean_at(e: float) -> float:
            n = 256
            z = torch.randn((n, ema.noise_size), generator=noise, device=device)
            full = torch.full((n,), e, device=device)
            return float(
                ema.sample(z, full, torch.full((n,), np.pi / 2, device=device)).sum(dim=(1, 2, 3)).mean() / 1000
            )

        ratio = {
            "flow": float((made.sum(dim=(1, 2, 3)) / 1000 / test_energy).mean()),
            "mc": float((test_deposits.sum(dim=(1, 2, 3)) / 1000 / test_energy).mean()),
        }
        return {
            "train_minutes": minutes,
            "steps": steps,
            "train_samples_per_s": steps * batch_size / train_seconds,
            "generation_showers_per_s": n_test / generation_seconds,
            "esum_over_ep_flow": ratio["flow"],
            "esum_over_ep_mc": ratio["mc"],
            "mean_gev_flow_20": mean_at(20.0),
            "mean_gev_flow_90": mean_at(90.0),
            "mean_gev_mc_20": 20.0 * ratio["mc"],
            "mean_gev_mc_90": 90.0 * ratio["mc"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per throughput measurement")
    parser.add_argument("--quick", action="store_true", help="small preset, tiny sizes (a smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    quick = args.quick
    geometry = get_geometry("small_ecal_15x15x12" if quick else "clic_ecal_51x51x25")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result: dict = {"bench": "gpu", "device": card, "geometry": geometry.name, "torch": torch.__version__}
    n_matmul = 512 if quick else 8192
    result["matmul_tflops"] = {
        p: matmul_tflops(device, d, n_matmul, args.seconds)
        for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    result["generation"] = generation(geometry, device, (1, 16) if quick else (1, 16, 128, 1024), args.seconds)
    n_train = 256 if quick else 16384
    data, _ = mc_tensors(geometry, n_train, (10.0, 200.0), seed=1)
    batch_size = 16 if quick else 64
    # a smoke run times one step per precision: a bf16 step on a CPU takes seconds
    result["training_step"] = training_rates(geometry, device, data, batch_size, args.seconds, 1 if quick else 3)
    if args.train_minutes > 0:
        test, _ = mc_tensors(geometry, 128 if quick else 2048, (10.0, 200.0), seed=2)
        result["fidelity"] = fidelity(geometry, device, data, test, args.train_minutes, batch_size)
        result["flow_fidelity"] = flow_fidelity(
            geometry, device, args.train_minutes, 512 if quick else 40_000, 64 if quick else 2048, 32 if quick else 256
        )

    print(f"3DGAN on {card}, {geometry.name}, torch {torch.__version__}")
    print("matmul TFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in result["matmul_tflops"].items()))
    print(f"{'generation':<12} {'batch':>6} {'showers/s':>11} {'TFLOP/s':>8}")
    for r in result["generation"]:
        print(f"{r['precision']:<12} {r['batch']:>6} {r['showers_per_s']:>11.1f} {r['tflops']:>8.2f}")
    print(f"{'training':<12} {'batch':>6} {'samples/s':>11}")
    for r in result["training_step"]:
        print(f"{r['precision']:<12} {r['batch']:>6} {r['samples_per_s']:>11.1f}")
    if "fidelity" in result:
        f = result["fidelity"]
        print(
            f"after {f['steps']} steps ({f['train_minutes']} min): E_sum/E_p GAN {f['esum_over_ep_gan']:.4f} vs MC "
            f"{f['esum_over_ep_mc']:.4f}; mean E at 20 / 90 GeV: GAN {f['mean_gev_gan_20']:.3f} / "
            f"{f['mean_gev_gan_90']:.3f} GeV, MC {f['mean_gev_mc_20']:.3f} / {f['mean_gev_mc_90']:.3f} GeV"
        )
    if "flow_fidelity" in result:
        f = result["flow_fidelity"]
        print(
            f"flow after {f['steps']} steps ({f['train_minutes']} min, {f['train_samples_per_s']:.0f} samples/s): "
            f"E_sum/E_p {f['esum_over_ep_flow']:.4f} vs MC {f['esum_over_ep_mc']:.4f}; mean E at 20 / 90 GeV: "
            f"flow {f['mean_gev_flow_20']:.3f} / {f['mean_gev_flow_90']:.3f} GeV, MC {f['mean_gev_mc_20']:.3f} / "
            f"{f['mean_gev_mc_90']:.3f} GeV; generation {f['generation_showers_per_s']:.0f} showers/s"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
