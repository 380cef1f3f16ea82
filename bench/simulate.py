"""Benchmark: Monte Carlo throughput against the floor of drawing and binning the same spots.

For each primary energy it simulates showers on the default geometry (clic_ecal_51x51x25, the
angle drawn in 60-120 degrees) with ``GFlashSimulator.simulate_block`` and, in the same run, times
the floor: drawing the same number of spots (four float32 uniforms each, as the simulator draws)
and adding them into the same cell grid with NumPy. Prints a table, then one JSON line; a progress
bar on stderr follows the timings.

    .venv/bin/python bench/simulate.py [--events 256] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from dt_assets.physics.geometry import get_geometry
from dt_assets.progress import Progress, enable_bars
from dt_assets.simulation import GFlashSimulator, sample_conditions


def floor_block(
    n_events: int, n_spots: int, shape: tuple[int, int, int], rng: np.random.Generator, chunk: int
) -> np.ndarray:
    """Draw ``n_spots`` random spots (4 uniforms each) and bin them into an (n_events, *shape) grid.

    Done in chunks of ``chunk`` spots with reused buffers, as the simulator does, so the floor gets
    the same cache and allocation benefits: only drawing, index arithmetic and binning remain.
    """
    cells = np.zeros((n_events, *shape), dtype=np.float32).reshape(-1)
    u = np.empty((4, min(chunk, n_spots)), dtype=np.float32)
    index = np.empty(u.shape[1], dtype=np.int64)
    flat = np.empty(u.shape[1], dtype=np.int64)
    for start in range(0, n_spots, chunk):
        m = min(chunk, n_spots - start)
        for row in range(4):
            rng.random(dtype=np.float32, out=u[row, :m])
        flat[:m] = 0
        for row, size in enumerate((n_events, *shape)):
            np.multiply(u[row, :m], size, out=u[row, :m])
            np.copyto(index[:m], u[row, :m], casting="unsafe")
            np.multiply(flat[:m], size, out=flat[:m])
            np.add(flat[:m], index[:m], out=flat[:m])
        np.add.at(cells, flat[:m], u[3, :m])
    return cells


def best_interleaved(repeat: int, *fns, progress: Progress | None = None) -> list[float]:
    """Best wall time of each function, running them in turn ``repeat`` times (fair on a noisy machine);
    ``progress`` counts each round."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
        if progress is not None:
            progress.update()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=256, help="events per energy (one block is 256)")
    parser.add_argument("--repeat", type=int, default=5, help="timings are the best of this many")
    parser.add_argument("--geometry", default="clic_ecal_51x51x25")
    args = parser.parse_args()
    enable_bars()
    geometry = get_geometry(args.geometry)
    simulator = GFlashSimulator()
    rows = []
    energies = (10.0, 100.0, 500.0)
    progress = Progress(len(energies) * args.repeat, "MC and floor timings", "rounds")
    for energy in energies:
        conditions = sample_conditions(args.events, energy, (60.0, 120.0), "e-", np.random.default_rng(0))
        n_spots = int(simulator.shower_steps(conditions, geometry, np.random.default_rng(1)).n_spots.sum())
        mc, fl = best_interleaved(
            args.repeat,
            lambda c=conditions: simulator.simulate_block(c, geometry, np.random.default_rng(1)),
            lambda m=n_spots: floor_block(
                args.events, m, geometry.shape, np.random.default_rng(2), simulator.max_spots_per_chunk
            ),
            progress=progress,
        )
        rows.append(
            {
                "energy_gev": energy,
                "events": args.events,
                "spots_per_event": n_spots / args.events,
                "mc_showers_per_s": args.events / mc,
                "floor_showers_per_s": args.events / fl,
                "mc_ns_per_spot": mc / n_spots * 1e9,
                "floor_ns_per_spot": fl / n_spots * 1e9,
                "ratio_mc_to_floor": mc / fl,
            }
        )
    progress.close()
    print(f"GFlash MC on {geometry.name} {geometry.shape}, e-, theta 60-120 deg, best of {args.repeat}")
    print(f"{'E [GeV]':>8} {'spots/ev':>9} {'MC sh/s':>9} {'floor sh/s':>11} {'MC ns/spot':>11} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['energy_gev']:>8.0f} {r['spots_per_event']:>9.0f} {r['mc_showers_per_s']:>9.0f} "
            f"{r['floor_showers_per_s']:>11.0f} {r['mc_ns_per_spot']:>11.1f} {r['ratio_mc_to_floor']:>6.2f}"
        )
    machine = {"cpu": platform.processor() or platform.machine(), "numpy": np.__version__}
    print(json.dumps({"bench": "simulate", "geometry": geometry.name, "machine": machine, "results": rows}))


if __name__ == "__main__":
    main()
