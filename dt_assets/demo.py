"""`make demo`: run the loop on embedded defaults and print where everything is.

On the small CPU preset (small_ecal_15x15x12) it registers two Monte Carlo runs and one HDF5 file
in the 3DGAN layout (written here from the simulator, standing in for a Geant4 file),
materializes ``raw_showers`` (with its checks) and ``preprocessed_showers`` for each run, then
``training_set`` and ``flow_model``: a short training of the flow-matching generator on the electrons,
logged to MLflow and registered as a new version of ``calotwin-generator`` (alias ``challenger``).
Then it validates that version:
``mc_reference`` (independent MC on the energy x angle grid), ``generated_showers``,
``validation_report`` with its blocking checks and ``speed_benchmark``; then ``champion_model``
decides the promotion (in a run of its own, so the decision and its reason are recorded even when
a check failed). It prints runs, events, bytes on disk, the model, the verdict, the report's path,
the generator's speed against the MC, the promotion decision and where to look; when its model was
not promoted (a few minutes of training does not pass the default gates), a last line names
``make champion`` (:mod:`dt_assets.champion`), which trains a longer one. Materializations
are recorded in ``$DAGSTER_HOME`` (default ``$CALOTWIN_HOME/dagster``), so ``make ui`` shows them
afterwards; ``make mlflow-ui`` shows the MLflow run and the registered model. Running it again
does no work twice.

Progress bars (tqdm, on stderr) follow the long work: the runs, the simulation of each, the
training's steps, the MC reference and the generation. They come from the assets' own progress
reporters (:mod:`dt_assets.progress`), switched to bars in this process; stdout keeps the summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .home import calotwin_home, ensure_dagster_home, ensure_home
from .progress import enable_bars
from .walkthrough import GEOMETRY, Session, ingest, print_verdict, train, validate_and_judge

DEMO_RUNS = [
    {
        "n_events": 10000,
        "energy_min_gev": 10.0,
        "energy_max_gev": 200.0,
        "particle": "e-",
        "seed": 1,
        "geometry": GEOMETRY,
    },
    {
        "n_events": 1000,
        "energy_min_gev": 10.0,
        "energy_max_gev": 200.0,
        "particle": "gamma",
        "seed": 2,
        "geometry": GEOMETRY,
    },
]
EXAMPLE_FILE_EVENTS = 500
#: A CPU-sized training of the flow-matching generator on the electrons: 6 epochs of their 8000 training
#: showers, 186 steps of 256 (about 1.5 minutes on 2 cores). Far too short to pass the default gates: the demo
#: shows the loop and an honest verdict; `make champion` trains for the gates.
DEMO_TRAINING = {"geometry": GEOMETRY, "particle": "e-", "epochs": 6}
#: the line the demo ends with when its model was not promoted
CHAMPION_HINT = (
    "no model passed the default gates within the demo's budget: `make champion` trains a longer one on fresh data, "
    "validates it, and promotes and exports it if it passes (40–55 minutes on 2 cores)"
)


def _example_file(home) -> str:
    """A 3DGAN-layout HDF5 file, as a Geant4 production would deliver it (simulated here)."""
    from .showers.hdf5 import write_hdf5
    from .simulation import simulate

    path = home / "examples" / "demo_3dgan_e-_50-150GeV.h5"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        showers = simulate(EXAMPLE_FILE_EVENTS, (50.0, 150.0), (60.0, 120.0), "e-", geometry=GEOMETRY, seed=7)
        write_hdf5(showers, str(path), layout="3dgan")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    enable_bars()
    home = ensure_home()
    ensure_dagster_home()

    from .defs.configs import FlowModelConfig
    from .defs.model import flow_model
    from .fsio import store_size_bytes
    from .model.registry import default_tracking_uri
    from .showers.store import open_store

    started = time.monotonic()
    session = Session.open()
    storage = session.storage
    print(f"CaloTwin demo: data home {calotwin_home()}, Dagster home {os.environ['DAGSTER_HOME']}")
    rows = ingest(session, DEMO_RUNS, [_example_file(home)])
    if rows is None:
        return 1

    print(f"\n{'run':<22} {'events':>7} {'MB on disk':>11}  description")
    total_events = total_bytes = 0
    for row in rows:
        key = row["run"]
        url = storage.raw_showers_url(key)
        events = open_store(url, storage.options()).sizes["event"]
        size = store_size_bytes(url, storage.options())
        total_events, total_bytes = total_events + events, total_bytes + size
        print(f"{key:<22} {events:>7} {size / 1e6:>11.1f}  {row['description']}")
    print(f"{'total: ' + str(len(rows)) + ' runs':<22} {total_events:>7} {total_bytes / 1e6:>11.1f}")

    config = FlowModelConfig(**DEMO_TRAINING)
    announce = (
        f"\ntraining a flow-matching generator on the {config.particle} runs of {GEOMETRY}: "
        f"{config.epochs} epochs of their training showers in batches of {config.batch_size}"
    )
    model = train(session, flow_model, config, announce)
    print(
        f"\nmodel: {model['model_uri']} ({model['family']}, alias challenger), MLflow run {model['mlflow_run_id']}; "
        f"validation E_sum/E_p generated {model['val_esum_over_ep_gan']:.4f} vs MC {model['val_esum_over_ep_mc']:.4f}"
    )
    report, decision = validate_and_judge(session, model)
    print_verdict(session, report, decision)

    print(f"\nraw showers (zarr):  {storage.url('data', 'raw')}")
    print(f"training tensors:    {storage.url('data', 'preprocessed')}")
    print(f"run specs (json):    {storage.url('data', 'runs')}")
    print(f"checkpoints:         {storage.url('checkpoints')}")
    print(f"MLflow:              {default_tracking_uri()}")
    print(
        f"done in {time.monotonic() - started:.0f} s; `make ui` shows the assets, their metadata and checks; "
        "`make mlflow-ui` shows the training run and the registered model"
    )
    if not decision["promoted"]:
        print(CHAMPION_HINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
