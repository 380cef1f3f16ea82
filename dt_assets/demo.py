"""`make demo`: run the loop on embedded defaults and print where everything is.

Today the loop is the data stage: it registers two Monte Carlo runs and one HDF5 file in the
3DGAN layout (written here from the simulator, standing in for a Geant4 file), materializes
``raw_showers`` for each run with its checks, and prints runs, events, bytes on disk and paths.
Materializations are recorded in ``$DAGSTER_HOME`` (default ``$CALOTWIN_HOME/dagster``), so
``make ui`` shows them afterwards. Running it again does no work twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .home import calotwin_home, ensure_dagster_home, ensure_home

DEMO_RUNS = [
    {"n_events": 2000, "energy_min_gev": 10.0, "energy_max_gev": 200.0, "particle": "e-", "seed": 1},
    {"n_events": 1000, "energy_min_gev": 10.0, "energy_max_gev": 200.0, "particle": "gamma", "seed": 2},
]
EXAMPLE_FILE_EVENTS = 500
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _example_file(home) -> str:
    """A 3DGAN-layout HDF5 file, as a Geant4 production would deliver it (simulated here)."""
    from .physics.simulator import simulate
    from .showers.hdf5 import write_hdf5

    path = home / "examples" / "demo_3dgan_e-_50-150GeV.h5"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_hdf5(simulate(EXAMPLE_FILE_EVENTS, (50.0, 150.0), (60.0, 120.0), "e-", seed=7), str(path), layout="3dgan")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    home = ensure_home()
    ensure_dagster_home()

    import dagster as dg
    from tqdm import tqdm

    from resources import storage_from_env

    from .defs.data import raw_showers, simulation_runs
    from .showers.store import open_store, store_size_bytes

    started = time.monotonic()
    instance = dg.DagsterInstance.get()
    storage = storage_from_env()
    print(f"CaloTwin demo: data home {calotwin_home()}, Dagster home {os.environ['DAGSTER_HOME']}")
    example = _example_file(home)
    config = {"simulations": DEMO_RUNS, "import_files": [{"path": example}]}
    result = dg.materialize(
        [simulation_runs],
        run_config={"ops": {"simulation_runs": {"config": config}}, **QUIET},
        instance=instance,
        resources={"storage": storage},
    )
    table = result.asset_materializations_for_node("simulation_runs")[0].metadata["runs"].value
    run_keys = [row.data["run"] for row in table.records]
    done = instance.get_materialized_partitions(dg.AssetKey("raw_showers"))
    for key in tqdm(run_keys, desc="raw_showers", unit="run"):
        if key in done:
            continue
        result = dg.materialize(
            [raw_showers], partition_key=key, instance=instance, resources={"storage": storage}, run_config=QUIET
        )
        failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
        if failed:
            print(f"run {key}: checks failed: {failed}", file=sys.stderr)
            return 1

    print(f"\n{'run':<22} {'events':>7} {'MB on disk':>11}  description")
    total_events = total_bytes = 0
    for row in table.records:
        key = row.data["run"]
        url = storage.raw_showers_url(key)
        events = open_store(url, storage.options()).sizes["event"]
        size = store_size_bytes(url, storage.options())
        total_events, total_bytes = total_events + events, total_bytes + size
        print(f"{key:<22} {events:>7} {size / 1e6:>11.1f}  {row.data['description']}")
    print(f"{'total: ' + str(len(table.records)) + ' runs':<22} {total_events:>7} {total_bytes / 1e6:>11.1f}")
    print(f"\nraw showers (zarr): {storage.url('data', 'raw')}")
    print(f"run specs (json):   {storage.url('data', 'runs')}")
    print(f"done in {time.monotonic() - started:.0f} s; `make ui` shows the assets, their metadata and checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
