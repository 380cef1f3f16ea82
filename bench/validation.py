"""Benchmark and calibration of the validation framework on the small preset.

1. Calibration: ``--pairs`` validations of MC against independent MC at the default grid and
   events per cell (different seeds each). For every check it prints the largest ``|value|`` any
   cell reached (the statistical floor at this sample size), the default threshold and their ratio;
   the default thresholds in ``dt_assets/validation/config.py`` were set from this table.
2. Timing: one validation with the default settings (bootstrap 100, the CaloChallenge classifier),
   split into observables, per-cell metrics and global metrics.

Prints tables, then one JSON line.

    .venv/bin/python bench/validation.py [--pairs 4]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from dt_assets.validation.config import ValidationConfig
from dt_assets.validation.samples import simulate_grid
from dt_assets.validation.validate import validate

GEOMETRY = "small_ecal_15x15x12"


def calibrate(pairs: int) -> dict[str, dict[str, float]]:
    light = ValidationConfig.from_dict(
        {"bootstrap": 2, "classifier": {"hidden": 64, "epochs": 8, "lr": 1e-3, "batch_size": 256}}
    )
    grid = light.conditions_grid()
    floors: dict[str, float] = {}
    thresholds: dict[str, float | None] = {}
    for pair in range(pairs):
        reference = simulate_grid(grid, 2 * light.events_per_cell, GEOMETRY, seed=10_000 + pair)
        candidate = simulate_grid(grid, light.events_per_cell, GEOMETRY, seed=20_000 + pair)
        result = validate(reference, candidate, light)
        for m in result.metrics.values():
            if m.metric == "coverage":
                continue
            key = f"{m.observable}.{m.metric}" if m.observable else m.metric
            for value in (m.value, m.baseline):  # both are MC-vs-MC comparisons
                floors[key] = max(floors.get(key, 0.0), abs(value))
            thresholds[key] = m.threshold
        print(f"pair {pair + 1}/{pairs}: {result.summary()}", flush=True)
    return {k: {"floor": floors[k], "threshold": thresholds[k]} for k in sorted(floors)}


def timing() -> dict[str, float]:
    """One validation with the default settings, its stages timed."""
    import dt_assets.validation.validate as v

    cfg = ValidationConfig()
    grid = cfg.conditions_grid()
    start = time.perf_counter()
    reference = simulate_grid(grid, 2 * cfg.events_per_cell, GEOMETRY, seed=1)
    candidate = simulate_grid(grid, cfg.events_per_cell, GEOMETRY, seed=2)
    simulated = time.perf_counter() - start
    stages: dict[str, float] = {}

    def timed(name, func):
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - begin

        return wrapper

    originals = (v.compute_observables, v._compare_cell, v._global_metrics)
    v.compute_observables = timed("observables", v.compute_observables)
    v._compare_cell = timed("per-cell metrics (bootstrap 100)", v._compare_cell)
    v._global_metrics = timed("FPD, KPD, classifier", v._global_metrics)
    try:
        start = time.perf_counter()
        validate(reference, candidate, cfg)
        total = time.perf_counter() - start
    finally:
        v.compute_observables, v._compare_cell, v._global_metrics = originals
    return {
        "events": int(reference.sizes["event"] + candidate.sizes["event"]),
        "simulate_seconds": simulated,
        "validate_seconds": total,
        **{f"{k} seconds": t for k, t in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    table = calibrate(args.pairs)
    print(f"\n{'check':<40} {'max |MC-vs-MC|':>15} {'threshold':>10} {'floor/thr':>10}")
    for key, row in table.items():
        thr = row["threshold"]
        ratio = row["floor"] / thr if thr else float("nan")
        print(f"{key:<40} {row['floor']:>15.4f} {thr if thr is not None else '-':>10} {ratio:>10.2f}")
    worst = max((r["floor"] / r["threshold"] for r in table.values() if r["threshold"]), default=np.nan)
    print(f"\nlargest floor/threshold: {worst:.2f} (below 1: independent MC passes every check)")
    out = {"benchmark": "validation", "pairs": args.pairs, "worst_floor_over_threshold": worst}
    if not args.skip_timing:
        times = timing()
        print(f"\ndefault validation of {times['events']} events (15 cells): {times['validate_seconds']:.1f} s")
        for key, value in times.items():
            if key.endswith(" seconds"):
                print(f"  {key.removesuffix(' seconds'):<36} {value:6.1f} s")
        out |= times
    print(json.dumps(out | {"calibration": table}))


if __name__ == "__main__":
    main()
