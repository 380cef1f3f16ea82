"""Benchmark: compression codecs for shower stores (ratio and speed on simulated showers).

Encodes one chunk (256 events, default geometry, e- 10-200 GeV, 60-120 deg) with Blosc variants
and prints ratio and single-chunk encode/decode throughput; the store uses the chosen one
(dt_assets/showers/store.py). Prints a table, then one JSON line.

    .venv/bin/python bench/codecs.py
"""

from __future__ import annotations

import json
import time

from numcodecs import Blosc

from dt_assets import simulate

CANDIDATES = [
    ("zstd", 5, Blosc.BITSHUFFLE),
    ("zstd", 1, Blosc.BITSHUFFLE),
    ("zstd", 5, Blosc.SHUFFLE),
    ("zstd", 1, Blosc.SHUFFLE),
    ("lz4", 5, Blosc.SHUFFLE),
]
SHUFFLE_NAMES = {Blosc.SHUFFLE: "byte", Blosc.BITSHUFFLE: "bit"}


def main() -> None:
    cells = simulate(256, (10.0, 200.0), (60.0, 120.0), seed=1).energy_deposit.values
    raw = cells.nbytes
    rows = []
    for cname, level, shuffle in CANDIDATES:
        codec = Blosc(cname=cname, clevel=level, shuffle=shuffle)
        enc = dec = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            packed = codec.encode(cells)
            mid = time.perf_counter()
            codec.decode(packed)
            enc, dec = min(enc, mid - start), min(dec, time.perf_counter() - mid)
        rows.append(
            {
                "codec": f"blosc-{cname}-{level}-{SHUFFLE_NAMES[shuffle]}shuffle",
                "ratio": raw / len(packed),
                "encode_mb_s": raw / enc / 1e6,
                "decode_mb_s": raw / dec / 1e6,
            }
        )
    print(f"one chunk: 256 showers, {raw / 1e6:.0f} MB raw float32")
    print(f"{'codec':<30} {'ratio':>6} {'enc MB/s':>9} {'dec MB/s':>9}")
    for r in rows:
        print(f"{r['codec']:<30} {r['ratio']:>6.1f} {r['encode_mb_s']:>9.0f} {r['decode_mb_s']:>9.0f}")
    print(json.dumps({"bench": "codecs", "raw_bytes": raw, "results": rows}))


if __name__ == "__main__":
    main()
