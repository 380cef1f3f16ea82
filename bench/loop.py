"""Latency of the self-driving loop with the real webserver and daemon, on the small preset; the landing's load.

Starts ``dagster dev`` on a fresh data home and instance, turns the loop's sensors on through
GraphQL, drops a new 3DGAN HDF5 batch into the landing folder (``make twin``'s code path) and
times, from the moment the file appears: its land_files run being requested, each run of the loop
being requested, started and finished, and the promotion decision.

``--load`` measures the landing alone, without a daemon (the sensor's tick and the land_files job, as
the daemon runs them, in this process): the time of one tick of ``landing_sensor`` with 1000 files
waiting (it lists, it reads nothing: the goal is under 2 s), and the time to drain 50 files dropped at
once (40 good, among them 5 byte-identical pairs, and 10 bad of different kinds) through ``land_files``.

``--interval`` sets both sensors' minimum interval (the loop's default is 30 s); ``--light`` uses
the end-to-end test's CPU-sized training (3 steps) and one-cell validation, which isolates the
orchestration's own latency from the work; without it the loop's default training (4 epochs of 20
steps) and validation (15 cells of 500 events) run. Prints a table, then one JSON line.

    .venv/bin/python bench/loop.py [--interval 30] [--events 1000] [--light]
    .venv/bin/python bench/loop.py --load
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
    parser.add_argument("--load", action="store_true", help="the landing's tick and drain times, without a daemon")
    args = parser.parse_args()
    if args.load:
        load()
        return
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
        "landing_to_land_requested_s": rows[0]["requested_s"],
        "landing_to_ingest_requested_s": next(r["requested_s"] for r in rows if r["run"] == "ingest_runs"),
        "landing_to_decision_s": decided[0] if decided else None,
        "runs": rows,
    }
    decision = f"{decided[0]:.1f} s" if decided else "not reached (a loop run failed)"
    print(
        f"landing -> land_files requested {summary['landing_to_land_requested_s']:.1f} s, ingestion requested "
        f"{summary['landing_to_ingest_requested_s']:.1f} s; "
        f"landing -> promotion decision {decision}"
    )
    print(json.dumps(summary))


def load() -> None:
    """The landing sensor's tick with 1000 files waiting, and 50 files drained through land_files."""
    import dagster as dg
    import numpy as np

    from dt_assets import simulate, write_hdf5
    from dt_assets.defs.landing import land_files_job, landing_area, landing_tick
    from dt_assets.defs.twin_settings import TwinSettings
    from resources import LocalStorage

    settings = TwinSettings()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with tempfile.TemporaryDirectory() as tmp:
        home = ensure_home(Path(tmp) / "calotwin")
        storage = LocalStorage(root=str(home))
        instance = dg.DagsterInstance.ephemeral()
        landing = home / "landing"
        landing.mkdir(parents=True, exist_ok=True)
        good = Path(tmp) / "good.h5"
        write_hdf5(simulate(20, (10.0, 100.0), (60.0, 120.0), "e-", GEOMETRY, seed=1), str(good))
        data = good.read_bytes()
        for i in range(1000):
            (landing / f"waiting-{i:04d}.h5").write_bytes(data)

        def tick(cursor: str | None) -> tuple[float, dg.SensorResult]:
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            started = time.perf_counter()
            result = landing_tick(context, settings, landing_area(storage, settings))
            return time.perf_counter() - started, result

        first_s, first = tick(None)
        ready_s, ready = tick(first.cursor)
        ops = [r.run_config["ops"]["check_landed_files"] for r in ready.run_requests]
        n_requested = sum(len(op["config"]["entries"]) for op in ops)
        for path in landing.iterdir():
            path.unlink()

        # 50 files at once: 35 distinct good ones, 5 of them twice, and 10 bad ones
        for i in range(35):
            path = landing / f"good-{i:02d}.h5"
            write_hdf5(simulate(20, (10.0, 100.0), (60.0, 120.0), "e-", GEOMETRY, seed=100 + i), str(path))
            if i < 5:
                (landing / f"copy-{i:02d}.h5").write_bytes(path.read_bytes())
        bad = {
            "empty.h5": b"",
            "truncated.h5": data[: len(data) // 2],
            "zip.h5": b"PK\x03\x04 a zip file",
            "notes.txt": b"hello",
            "a..b.h5": data,
        }
        for name, content in bad.items():
            (landing / name).write_bytes(content)
        for name, scale in (("blank.h5", 0.0), ("nan.h5", np.nan), ("tenfold.h5", 1e4), ("neg.h5", -1.0)):
            _scaled_copy(good, landing / name, scale)
        _virtual(good, landing / "virtual.h5", Path(tmp))
        for path in list(landing.iterdir()):
            (landing / f"{path.name}.done").touch()
        started = time.perf_counter()
        _, drain = tick(None)
        request_s = time.perf_counter() - started
        for request in drain.run_requests:
            land_files_job.execute_in_process(
                run_config={**request.run_config, **quiet},
                instance=instance,
                resources={"storage": storage},
                raise_on_error=False,
            )
        drain_s = time.perf_counter() - started
        left = sorted(p.name for p in landing.iterdir())
        accepted = len([p for p in (home / "data" / "landed").glob("*/*") if not p.name.endswith(".done")])
        quarantined = len(list((home / "quarantine").glob("*.json")))
        partitions = len(instance.get_dynamic_partitions("simulation_runs"))
    print(
        f"landing_sensor tick with 1000 files waiting: {first_s:.2f} s (first look), {ready_s:.2f} s (all ready: "
        f"{n_requested} files in {len(ready.run_requests)} land_files run requests)"
    )
    print(
        f"50 files at once: requested in {request_s:.2f} s, drained in {drain_s:.1f} s by "
        f"{len(drain.run_requests)} land_files run(s): {accepted} accepted, {quarantined} quarantined, "
        f"{partitions} partitions, {len(left)} left in the landing area"
    )
    print(
        json.dumps(
            {
                "tick_1000_first_s": first_s,
                "tick_1000_ready_s": ready_s,
                "drain_50_request_s": request_s,
                "drain_50_s": drain_s,
                "accepted": accepted,
                "quarantined": quarantined,
                "partitions": partitions,
                "left": len(left),
            }
        )
    )


def _scaled_copy(source: Path, target: Path, scale: float) -> None:
    """A copy of a 3DGAN file whose ECAL is multiplied by ``scale`` (0: no energy, NaN, 1e4: too much...)."""
    import h5py

    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as h5:
        h5["ECAL"][...] = h5["ECAL"][...] * scale


def _virtual(source: Path, target: Path, tmp: Path) -> None:
    """A copy of a 3DGAN file whose ECAL is a virtual dataset pointing at another file."""
    import h5py
    import numpy as np

    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as h5:
        shape = h5["ECAL"].shape
        del h5["ECAL"]
        layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(tmp / "good.h5"), "ECAL", shape=shape)
        h5.create_virtual_dataset("ECAL", layout)


def _drop_time(home: Path, name: str) -> float:
    """When the batch appeared in the landing folder: the mtime it kept when it was moved on."""
    (landed,) = (home / "data" / "landed").glob(f"*/{name}")
    return landed.stat().st_mtime


if __name__ == "__main__":
    main()
