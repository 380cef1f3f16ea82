"""Benchmark: HDF5 -> zarr ingestion against a raw read + write of the same bytes.

Writes a 3DGAN-layout HDF5 file of simulated showers (default geometry), then, in one run and
interleaved, times

- **ingest**: CaloTwin's path, ``hdf5_blocks`` (keys, shapes, NaN/inf/negative checks, units) into
  ``write_showers`` (validation, atomic zarr v3 store);
- **raw**: ``h5py`` reading the same ``ECAL`` blocks and ``zarr`` writing them, same chunks and
  codec, no checks, no dataset, no atomic rename.

The goal (docs/design.md, "Performance goals"): ingest within 2x of raw. Prints a table, then one JSON line.

    .venv/bin/python bench/ingest.py [--events 2048] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import zarr
from zarr.codecs import BloscCodec

from dt_assets import simulate_blocks
from dt_assets.showers.hdf5 import hdf5_blocks, write_hdf5
from dt_assets.showers.schema import EVENTS_PER_CHUNK, concat_blocks
from dt_assets.showers.store import write_showers


def ingest(h5_path: Path, out: Path) -> None:
    write_showers(hdf5_blocks(str(h5_path)), str(out), overwrite=True)


def raw(h5_path: Path, out: Path) -> None:
    with h5py.File(h5_path) as h5:
        ecal = h5["ECAL"]
        array = zarr.create_array(
            str(out),
            shape=ecal.shape,
            chunks=(EVENTS_PER_CHUNK, *ecal.shape[1:]),
            dtype="float32",
            compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
            overwrite=True,
        )
        for start in range(0, ecal.shape[0], EVENTS_PER_CHUNK):
            array[start : start + EVENTS_PER_CHUNK] = ecal[start : start + EVENTS_PER_CHUNK]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="calotwin-bench-"))
    try:
        h5_path = work / "showers.h5"
        write_hdf5(
            concat_blocks(list(simulate_blocks(args.events, (10.0, 200.0), (60.0, 120.0), seed=1))), str(h5_path)
        )
        best = {"ingest": float("inf"), "raw": float("inf")}
        for _ in range(args.repeat):
            for name, fn in (("ingest", ingest), ("raw", raw)):
                start = time.perf_counter()
                fn(h5_path, work / f"{name}.zarr")
                best[name] = min(best[name], time.perf_counter() - start)
        with h5py.File(h5_path) as h5:
            raw_mb = h5["ECAL"].size * 4 / 1e6
        row = {
            "events": args.events,
            "hdf5_mb_on_disk": h5_path.stat().st_size / 1e6,
            "cells_mb": raw_mb,
            "ingest_s": best["ingest"],
            "raw_s": best["raw"],
            "ingest_events_per_s": args.events / best["ingest"],
            "ratio_ingest_to_raw": best["ingest"] / best["raw"],
        }
        print(f"HDF5 (3DGAN layout) -> zarr, {args.events} showers ({raw_mb:.0f} MB of cells), best of {args.repeat}")
        print(f"{'path':<8} {'seconds':>8} {'events/s':>9}")
        print(f"{'ingest':<8} {row['ingest_s']:>8.2f} {row['ingest_events_per_s']:>9.0f}")
        print(f"{'raw':<8} {row['raw_s']:>8.2f} {args.events / row['raw_s']:>9.0f}")
        print(f"ratio ingest / raw: {row['ratio_ingest_to_raw']:.2f} (goal: <= 2)")
        print(json.dumps({"bench": "ingest", "results": [row]}))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
