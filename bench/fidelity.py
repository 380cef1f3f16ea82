"""Benchmark: fidelity per CPU-minute. Train a generator family for N minutes on the small preset, then judge it
with the default validation.

1. Data: fresh Monte Carlo electrons (``--events``, 10-200 GeV, 60-120 degrees, four runs), preprocessed into
   zarr stores as the pipeline does (``preprocess_blocks``), cached under ``--data`` by what fixes them.
2. Training: ``dt_assets.model.train.train`` (what ``gan_model`` and ``flow_model`` run) with the family's
   defaults, for N minutes of this machine's cores: a short timing run measures the step rate, and the
   training gets as many steps as fit in N minutes (10 epochs). Training data time is not counted.
3. Validation: the default validation (``ValidationConfig()``: 15 cells of 500 events, bootstrap 100, the
   CaloChallenge classifier) against an independent MC reference, with the MC-vs-MC floor beside every number.

Writes to ``--out``: ``generator.pt`` (loads with ``dt_assets.load_generator``), ``report.html`` and
``result.json`` (the validation), ``checkpoint/``. Prints the global metrics beside the floor, the per-cell
E_sum/E_p and occupancy errors, the failed checks (by observable and metric, with their cells), training samples/s
and generation showers/s, then one JSON line.

    .venv/bin/python bench/fidelity.py --family flow --minutes 15 --out /tmp/fidelity-flow-15

``--steps N`` trains N steps (10 epochs of N / 10) instead of a timed budget: this VM's speed drifts within a day
(3.0-6.6 flow steps/s), so changes are compared at equal steps and the minutes are read off the step rate.
``--train KEY=VALUE`` (any number of times) trains with a setting of the family's training config changed, e.g.
``stage2_hidden=1024`` (``FlowTrainConfig``, ``TrainConfig``); the timing run uses it too.

``--generator FILE`` judges a trained file instead of training one; with it, ``--sampling KEY=VALUE`` (a flow, any
number of times) changes how the file samples before it is judged, e.g. ``kept_softness=0.6`` on a model saved
before that setting existed (it loads with 0, the assembly it was saved with).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from dt_assets import get_geometry, simulate_blocks
from dt_assets.fsio import sha256_json
from dt_assets.model.flow_training import FlowTrainConfig
from dt_assets.model.generation import load_generator, save_generator
from dt_assets.model.preprocess import preprocess_blocks
from dt_assets.model.step import TrainConfig
from dt_assets.model.stream import TrainingData
from dt_assets.model.train import train
from dt_assets.showers.store import write_blocks
from dt_assets.validation.config import ValidationConfig
from dt_assets.validation.grid import ConditionsGrid
from dt_assets.validation.report import write_html
from dt_assets.validation.samples import generate_grid, simulate_grid
from dt_assets.validation.validate import validate

GEOMETRY = "small_ecal_15x15x12"
RUNS = 4
#: the seeds of the pipeline's validation: MC reference and generated showers (ReferenceConfig, GeneratedShowersConfig)
REFERENCE_SEED, GENERATION_SEED = 1_000_000, 2_000_000
EPOCHS = 10
TIMING_STEPS = {"flow": 30, "3dgan": 20}


def true_or_false(value: str) -> bool:
    """``true`` or ``false`` (any case) as a bool."""
    if value.lower() not in ("true", "false"):
        raise ValueError(f"takes true or false, got {value!r}")
    return value.lower() == "true"


#: a flow's settings that change how it samples, not what it learned: ``--sampling`` sets them on a trained file
SAMPLING_SETTINGS = {
    "stage1_steps": int,
    "stage2_steps": int,
    "tilt_iterations": int,
    "kept_softness": float,
    "tilt_width_saturation": float,
    "barycentre_shift": true_or_false,
}


def training_data(events: int, folder: Path) -> list[str]:
    """Preprocessed stores of ``events`` fresh electrons in four runs (simulated once, then reused)."""
    urls = []
    for run in range(RUNS):
        n = events // RUNS
        spec = {"n": n, "energy": [10.0, 200.0], "theta": [60.0, 120.0], "geometry": GEOMETRY, "seed": 101 + run}
        key = f"mc-bench-{sha256_json(spec, 10)}"
        url = folder / f"{key}.zarr"
        if not url.exists():
            blocks = simulate_blocks(n, (10.0, 200.0), (60.0, 120.0), "e-", GEOMETRY, seed=101 + run)
            write_blocks(preprocess_blocks(blocks, key), str(url))
        urls.append(str(url))
    return urls


#: what the bench itself sets in a training config (``--train`` may not)
BENCH_SETTINGS = ("epochs", "max_steps_per_epoch", "seed")


def family_config(
    family: str, steps_per_epoch: int, seed: int, settings: dict[str, object] | None = None
) -> TrainConfig | FlowTrainConfig:
    """The family's default training of 10 epochs of ``steps_per_epoch``, with ``settings`` changed."""
    kind = FlowTrainConfig if family == "flow" else TrainConfig
    return kind(**{**(settings or {}), "epochs": EPOCHS, "max_steps_per_epoch": steps_per_epoch, "seed": seed})


def training_settings(family: str, items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` items as settings of the family's training config, each value of its field's type."""
    defaults = (FlowTrainConfig if family == "flow" else TrainConfig)().to_dict()
    settings: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults or key in BENCH_SETTINGS:
            known = ", ".join(k for k in defaults if k not in BENCH_SETTINGS)
            raise ValueError(f"--train {item!r}: give KEY=VALUE, KEY one of {known}")
        kind = type(defaults[key])
        # a tuple (the 3DGAN's loss_weights) as comma-separated numbers
        parse = {bool: true_or_false, tuple: lambda v: tuple(float(x) for x in v.split(","))}.get(kind, kind)
        try:
            settings[key] = parse(value)
        except ValueError:
            noun = {bool: "true or false", tuple: "comma-separated numbers"}.get(kind, f"a {kind.__name__}")
            raise ValueError(f"--train {item!r}: {key} takes {noun}") from None
    return settings


def step_rate(family: str, data: TrainingData, seed: int, settings: dict[str, object]) -> float:
    """Training steps per second, from a short training (its first step, which warms up, not counted)."""
    steps = TIMING_STEPS[family]
    config = family_config(family, steps, seed, settings)
    config = type(config)(**{**config.to_dict(), "epochs": 1, "validation_batches": 1})
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        train(data, config, tmp, get_geometry(GEOMETRY), on_step=[lambda r: times.append(r.seconds)])
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("3dgan", "flow"))
    parser.add_argument("--minutes", type=float, help="training time on this machine's cores")
    parser.add_argument(
        "--steps",
        type=int,
        help="train this many steps instead of --minutes (rounded down to whole epochs): runs compared at equal steps",
    )
    parser.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="train with this setting of the family's training config changed (any number of times)",
    )
    parser.add_argument(
        "--generator", default=None, help="judge this generator file instead of training one (no --family/--minutes)"
    )
    add_sampling_option(parser, "with --generator (a flow), ")
    parser.add_argument("--out", required=True, help="folder for the generator, the report and the checkpoint")
    parser.add_argument("--events", type=int, default=160_000, help="fresh MC training showers (default 160000)")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "calotwin-fidelity-data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.generator is None and (args.family is None or (args.minutes is None) == (args.steps is None)):
        parser.error("give --family and --minutes or --steps to train, or --generator FILE to judge a trained one")
    if args.steps is not None and args.steps < EPOCHS:
        parser.error(f"--steps must be at least {EPOCHS} (one per epoch), got {args.steps}")
    if args.sampling and args.generator is None:
        parser.error("--sampling changes a trained file's sampling: give it with --generator FILE")
    if args.train and args.generator is not None:
        parser.error("--train changes a training: give it with --family, not --generator")
    settings: dict[str, object] = {}
    if args.generator is None:
        try:
            settings = training_settings(args.family, args.train)
            family_config(args.family, 1, args.seed, settings)  # the config checks the values
        except ValueError as error:
            parser.error(str(error))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if args.generator is not None:
        generator = load_generator(args.generator)
        try:
            sampling = with_sampling(generator, args.sampling)
        except ValueError as error:
            parser.error(str(error))
        summary = judge(generator, out)
        print(json.dumps({"generator": args.generator, "family": generator.family, "sampling": sampling, **summary}))
        return

    started = time.perf_counter()
    urls = training_data(args.events, Path(args.data))
    data = TrainingData(urls)
    data_seconds = time.perf_counter() - started
    if args.steps is None:
        rate = step_rate(args.family, data, args.seed, settings)
        steps_per_epoch = max(1, math.floor(args.minutes * 60 * rate / EPOCHS))
        budget = f"{rate:.2f} steps/s measured: {EPOCHS} epochs of {steps_per_epoch} steps for {args.minutes:g} min"
    else:
        steps_per_epoch = args.steps // EPOCHS
        budget = f"{EPOCHS} epochs of {steps_per_epoch} steps"
    config = family_config(args.family, steps_per_epoch, args.seed, settings)
    print(
        f"{args.family}: {data.n_events()} training showers ({data_seconds:.0f} s to simulate and preprocess), "
        f"{budget} of {config.batch_size} on {threads} threads" + "".join(f", {k}={v}" for k, v in settings.items()),
        flush=True,
    )
    checkpoint = out / "checkpoint"
    shutil.rmtree(checkpoint, ignore_errors=True)
    started = time.perf_counter()
    result = train(
        data,
        config,
        str(checkpoint),
        get_geometry(GEOMETRY),
        on_epoch=[lambda r: print(f"  epoch {r.epoch + 1}/{r.epochs}: {r.seconds:.0f} s", flush=True)],
    )
    train_seconds = time.perf_counter() - started
    samples_per_s = EPOCHS * steps_per_epoch * config.batch_size / train_seconds
    generator = result.generator
    save_generator(generator, str(out / "generator.pt"))
    summary = judge(generator, out)
    print(
        f"training: {samples_per_s:.0f} samples/s ({train_seconds / 60:.1f} min, {EPOCHS * steps_per_epoch} steps of "
        f"{config.batch_size}); generation: {summary['generation_showers_per_s']:.0f} showers/s"
    )
    print(
        json.dumps(
            {
                "family": args.family,
                "minutes": args.minutes,
                "train": settings,
                "train_minutes": train_seconds / 60,
                "steps": EPOCHS * steps_per_epoch,
                "batch_size": config.batch_size,
                "training_events": data.n_events(),
                "threads": threads,
                "train_samples_per_s": samples_per_s,
                **summary,
            }
        )
    )


def add_sampling_option(parser: argparse.ArgumentParser, condition: str = "") -> None:
    """``--sampling KEY=VALUE`` (any number of times), for :func:`with_sampling`; ``condition`` opens its help."""
    parser.add_argument(
        "--sampling",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{condition}a sampling setting to judge it with: one of {', '.join(SAMPLING_SETTINGS)}",
    )


def add_generator_options(parser: argparse.ArgumentParser) -> None:
    """The options of a diagnostic that samples a trained file on the default grid: ``--generator FILE``,
    ``--sampling KEY=VALUE`` and ``--events-per-cell N``."""
    parser.add_argument("--generator", required=True, help="a generator file (dt_assets.load_generator)")
    add_sampling_option(parser, "(a flow) ")
    parser.add_argument("--events-per-cell", type=int, default=None, help="events a cell (default: the validation's)")


def grid_samples(generator, grid: ConditionsGrid, n_per_cell: int) -> dict[str, xr.Dataset]:
    """MC (``reference``) and ``generator``'s showers (``candidate``), ``n_per_cell`` a cell of ``grid``, with the
    seeds the judge uses."""
    return {
        "reference": simulate_grid(grid, n_per_cell, GEOMETRY, "e-", REFERENCE_SEED),
        "candidate": generate_grid(generator, grid, n_per_cell, "e-", GENERATION_SEED),
    }


def with_sampling(generator, settings: list[str]) -> dict:
    """Set ``KEY=VALUE`` sampling settings (``SAMPLING_SETTINGS``) on a flow generator; the settings it then has."""
    if not settings:
        return {}
    if generator.family != "flow":
        raise ValueError(f"--sampling applies to flow generators, not {generator.family!r}")
    changes = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or key not in SAMPLING_SETTINGS:
            raise ValueError(f"--sampling {item!r}: give KEY=VALUE, KEY one of {', '.join(SAMPLING_SETTINGS)}")
        try:
            changes[key] = SAMPLING_SETTINGS[key](value)
        except ValueError as error:
            raise ValueError(f"--sampling {item!r}: {key} {error}") from None
    generator.arch = dataclasses.replace(generator.arch, **changes)  # checked by the architecture
    return {key: getattr(generator.arch, key) for key in SAMPLING_SETTINGS}


def judge(generator, out: Path) -> dict:
    """The default validation of ``generator`` against an independent MC reference; the report in ``out``,
    the tables printed, the numbers returned."""
    cfg = ValidationConfig()
    grid = cfg.conditions_grid()
    reference = simulate_grid(grid, 2 * cfg.events_per_cell, GEOMETRY, "e-", REFERENCE_SEED)
    started = time.perf_counter()
    candidate = generate_grid(generator, grid, cfg.events_per_cell, "e-", GENERATION_SEED)
    showers_per_s = candidate.sizes["event"] / (time.perf_counter() - started)
    validation = validate(reference, candidate, cfg)
    validation.to_json(out / "result.json")
    write_html(validation, out / "report.html")

    print(f"\n{'metric':<16} {'value':>10} {'95% CI':>22} {'MC-vs-MC floor':>15} {'threshold':>10}")
    for name in ("classifier_auc", "fpd", "kpd", "coverage"):
        m = validation.metrics[name]
        ci = f"[{m.ci[0]:.4g}, {m.ci[1]:.4g}]"
        threshold = "-" if m.threshold is None else f"{m.threshold:g}"
        print(f"{name:<16} {m.value:>10.4g} {ci:>22} {m.baseline:>15.4g} {threshold:>10}")
    print(f"\n{'cell':<12} {'E_sum/E_p error':>16} {'occupancy error':>16} {'passed':>7}")
    cells = {}
    for cell in validation.cells:
        e = validation.metrics[f"{cell.id}/e_ratio/mean_error"].value
        o = validation.metrics[f"{cell.id}/occupancy/mean_error"].value
        cells[cell.id] = {"e_ratio_error": e, "occupancy_error": o, "passed": cell.passed}
        print(f"{cell.id:<12} {e:>+16.4f} {o:>+16.4f} {'yes' if cell.passed else 'no':>7}")
    within = {k: sum(abs(c[f"{k}_error"]) <= bound for c in cells.values()) for k, bound in (("e_ratio", 0.02),)}
    print(
        f"\nE_sum/E_p within 2% in {within['e_ratio']}/{len(cells)} cells; within 5% in "
        f"{sum(abs(c['e_ratio_error']) <= 0.05 for c in cells.values())}/{len(cells)}; occupancy within 20% in "
        f"{sum(abs(c['occupancy_error']) <= 0.2 for c in cells.values())}/{len(cells)}"
    )
    failed = validation.failing_cells()
    if failed:
        print("\nfailed checks (observable.metric: cells):")
        for check, where in failed.items():
            print(f"  {check}: {' '.join(where) or 'global'}")
    print(f"{validation.summary()}")
    print(f"wrote {out / 'report.html'}")
    return {
        "generation_showers_per_s": showers_per_s,
        "passed": validation.passed,
        **{
            name: {"value": validation.metrics[name].value, "floor": validation.metrics[name].baseline}
            for name in ("classifier_auc", "fpd", "kpd", "coverage")
        },
        "cells": cells,
        "failed_checks": failed,
        "max_abs_e_ratio_error": float(np.max([abs(c["e_ratio_error"]) for c in cells.values()])),
    }


if __name__ == "__main__":
    main()
