"""Latency of the self-driving loop with the real webserver and daemon, on the small preset.

Starts ``dagster dev`` on a fresh data home and instance, turns the loop's sensors on through
GraphQL, drops a new 3DGAN HDF5 batch into the landing folder (``make twin``'s code path) and
times, from the moment the file appears: its ingestion run being requested, each run of the loop
being requested, started and finished, and the promotion decision.

``--interval`` sets both sensors' minimum interval (the loop's default is 30 s); ``--light`` uses
the end-to-end test's CPU-sized training (3 steps) and one-cell validation, which isolates the
orchestration's own latency from the work; without it the loop's default training (4 epochs of 20
steps) and validation (15 cells of 500 events) run. Prints a table, then one JSON line.

    .venv/bin/python bench/loop.py [--interval 30] [--events 1000] [--light]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import yaml

from dt_assets.home import DAGSTER_YAML, ensure_home
from dt_assets.twin import DagsterDev, react, start_sensors

GEOMETRY = "small_ecal_15x15x12"
LIGHT = {
    "retrain": {"flow_model": {"epochs": 1, "max_steps_per_epoch": 3, "batch_size": 16, "stage2_hidden": 64}},
    "validation": {
        "mc_reference": {"events_per_cell": 100, "n_energies": 1, "angles_deg": [90.0]},
        "validation_report": {"bootstrap": 5, "classifier_epochs": 2},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=int, default=30, help="sensors' minimum interval in s (default 30)")
    parser.add_argument("--events", type=int, default=1000, help="showers in the dropped batch (default 1000)")
    parser.add_argument("--light", action="store_true", help="CPU-sized training and validation")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    settings: dict = {"landing": {"min_interval_seconds": args.interval}}
    if args.light:
        settings |= LIGHT
    settings.setdefault("retrain", {})["min_interval_seconds"] = args.interval
    with tempfile.TemporaryDirectory() as tmp:
        home = ensure_home(Path(tmp) / "calotwin")
        (home / "dagster" / "dagster.yaml").write_text(DAGSTER_YAML)
        (home / "twin.yaml").write_text(yaml.safe_dump(settings))
        env = {k: v for k, v in os.environ.items() if k not in ("CALOTWIN_STORAGE_URL", "CALOTWIN_LOOP")}
        env |= {"CALOTWIN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
        started = time.monotonic()
        with DagsterDev(env, free_port(), home / "dagster-dev.log") as server:
            up = time.monotonic() - started
            start_sensors(server.port)
            batch, runs = react(server.port, home / "landing", args.events, GEOMETRY, 7, args.timeout)
            dropped = _drop_time(home, batch.name)
    nan = float("nan")
    rows = []
    for run in runs:
        start, end = run["startTime"] or nan, run["endTime"] or nan
        rows.append(
            {
                "run": run["jobName"],
                "status": run["status"],
                "requested_s": run["creationTime"] - dropped,
                "started_s": start - dropped,
                "finished_s": end - dropped,
                "ran_s": end - start,
            }
        )
    decided = [r["finished_s"] for r in rows if r["run"] == "promote_champion" and r["status"] == "SUCCESS"]
    print(
        f"dagster dev up in {up:.1f} s; {args.events} showers, sensor interval {args.interval} s, "
        f"{'light' if args.light else 'default'} training and validation"
    )
    print(f"{'run':<18} {'status':<8} {'requested':>10} {'started':>9} {'finished':>9} {'ran':>7}   (s after landing)")
    for r in rows:
        print(
            f"{r['run']:<18} {r['status']:<8} {r['requested_s']:>10.1f} {r['started_s']:>9.1f} "
            f"{r['finished_s']:>9.1f} {r['ran_s']:>7.1f}"
        )
    summary = {
        "interval_s": args.interval,
        "events": args.events,
        "light": args.light,
        "landing_to_ingest_requested_s": rows[0]["requested_s"],
        "landing_to_decision_s": decided[0] if decided else None,
        "runs": rows,
    }
    decision = f"{decided[0]:.1f} s" if decided else "not reached (a loop run failed)"
    print(
        f"landing -> ingestion requested {summary['landing_to_ingest_requested_s']:.1f} s; "
        f"landing -> promotion decision {decision}"
    )
    print(json.dumps(summary))


def _drop_time(home: Path, name: str) -> float:
    """When the batch appeared in the landing folder: the mtime it kept when it was moved on."""
    (landed,) = (home / "data" / "landed").glob(f"*/{name}")
    return landed.stat().st_mtime


if __name__ == "__main__":
    main()
