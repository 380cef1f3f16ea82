"""`make demo`: run the loop on embedded defaults and print where everything is.

On the small CPU preset (small_ecal_15x15x12) it registers two Monte Carlo runs and one HDF5 file
in the 3DGAN layout (written here from the simulator, standing in for a Geant4 file),
materializes ``raw_showers`` (with its checks) and ``preprocessed_showers`` for each run, then
``training_set`` and ``gan_model``: a short 3DGAN training, logged to MLflow and registered as a
new version of ``calotwin-3dgan`` (alias ``challenger``). Then it validates that version:
``mc_reference`` (independent MC on the energy x angle grid), ``generated_showers``,
``validation_report`` with its blocking checks and ``speed_benchmark``; then ``champion_model``
decides the promotion (in a run of its own, so the decision and its reason are recorded even when
a check failed). It prints runs, events, bytes on disk, the model, the verdict, the report's path,
the generator's speed against the MC, the promotion decision and where to look. Materializations
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
from .progress import Progress, echo, enable_bars

GEOMETRY = "small_ecal_15x15x12"
DEMO_RUNS = [
    {
        "n_events": 2000,
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
#: A CPU-sized training: 4 epochs of 20 steps of 32 showers (about 2 minutes on 2 cores).
DEMO_TRAINING = {"geometry": GEOMETRY, "epochs": 4, "max_steps_per_epoch": 20, "batch_size": 32}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
#: a failed blocking check is reported by the demo itself, not as Dagster's error log with a stack trace
SILENT = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _example_file(home) -> str:
    """A 3DGAN-layout HDF5 file, as a Geant4 production would deliver it (simulated here)."""
    from .physics.simulator import simulate
    from .showers.hdf5 import write_hdf5

    path = home / "examples" / "demo_3dgan_e-_50-150GeV.h5"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        showers = simulate(EXAMPLE_FILE_EVENTS, (50.0, 150.0), (60.0, 120.0), "e-", geometry=GEOMETRY, seed=7)
        write_hdf5(showers, str(path), layout="3dgan")
    return str(path)


def _metadata(instance, key) -> dict | None:
    """The latest materialization's metadata values of an asset, or None."""
    event = instance.get_latest_materialization_event(key)
    if event is None:
        return None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    enable_bars()
    home = ensure_home()
    ensure_dagster_home()

    import dagster as dg

    from resources import ModelRegistry, compute_from_env, storage_from_env, tracking_resource

    from .defs.data import raw_showers, simulation_runs
    from .defs.model import gan_model
    from .defs.preprocess import preprocessed_showers, training_set
    from .defs.validation import (
        champion_model,
        generated_showers,
        mc_reference,
        read_result,
        speed_benchmark,
        validation_checks,
        validation_report,
    )
    from .model.registry import default_tracking_uri
    from .showers.store import open_store, store_size_bytes
    from .validation.promotion import gates

    started = time.monotonic()
    instance = dg.DagsterInstance.get()
    storage = storage_from_env()
    resources = {
        "storage": storage,
        "compute": compute_from_env(),
        "mlflow": tracking_resource(),
        "registry": ModelRegistry(),
    }
    print(f"CaloTwin demo: data home {calotwin_home()}, Dagster home {os.environ['DAGSTER_HOME']}")
    example = _example_file(home)
    config = {"simulations": DEMO_RUNS, "import_files": [{"path": example}]}
    result = dg.materialize(
        [simulation_runs],
        run_config={"ops": {"simulation_runs": {"config": config}}, **QUIET},
        instance=instance,
        resources=resources,
    )
    table = result.asset_materializations_for_node("simulation_runs")[0].metadata["runs"].value
    run_keys = [row.data["run"] for row in table.records]
    done = instance.get_materialized_partitions(preprocessed_showers.key)
    for key in Progress(len(run_keys), "raw + preprocessed showers", "runs").wrap(run_keys):
        if key in done:
            continue
        result = dg.materialize(
            [raw_showers, preprocessed_showers],
            partition_key=key,
            instance=instance,
            resources=resources,
            run_config=QUIET,
        )
        failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
        if failed:
            echo(f"run {key}: checks failed: {failed}", file=sys.stderr)
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

    event = instance.get_latest_materialization_event(gan_model.key)
    if event is None:
        epochs, steps = DEMO_TRAINING["epochs"], DEMO_TRAINING["max_steps_per_epoch"]
        print(f"\ntraining a 3DGAN on {GEOMETRY}: {epochs} epochs of {steps} steps")
        dg.materialize([training_set], instance=instance, resources=resources, run_config=QUIET)
        dg.materialize(
            [gan_model],
            instance=instance,
            resources=resources,
            run_config={"ops": {"gan_model": {"config": DEMO_TRAINING}}, **QUIET},
        )
        event = instance.get_latest_materialization_event(gan_model.key)
    model = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    print(
        f"\nmodel: {model['model_uri']} (alias challenger), MLflow run {model['mlflow_run_id']}; validation "
        f"E_sum/E_p GAN {model['val_esum_over_ep_gan']:.4f} vs MC {model['val_esum_over_ep_mc']:.4f}"
    )

    report = _metadata(instance, validation_report.key)
    if report is None or report["model_uri"] != model["model_uri"]:
        print(f"\nvalidating {model['model_uri']} against an independent MC reference (grid of energy x angle cells)")
        dg.materialize(
            [mc_reference, generated_showers, validation_report, *validation_checks, speed_benchmark],
            instance=instance,
            resources=resources,
            run_config=SILENT,
            raise_on_error=False,
        )
        report = _metadata(instance, validation_report.key)
    decision = _metadata(instance, champion_model.key)
    if decision is None or decision["candidate_version"] != model["model_version"]:
        # its own run, so that the decision (and its reason) is recorded even when a blocking check failed
        dg.materialize([champion_model], instance=instance, resources=resources, run_config=QUIET)
        decision = _metadata(instance, champion_model.key)
    result = read_result(storage, report["result_json"])
    print(f"validation: {result.summary()}")
    print("blocking checks: " + ", ".join(f"{g.name} {'passed' if g.passed else 'FAILED'}" for g in gates(result)))
    print(f"report:     {report['report']}")
    speed = _metadata(instance, speed_benchmark.key)
    if speed is not None:
        print(
            f"speed:      generator {speed['generator_showers_per_s']:.0f} showers/s, "
            f"MC {speed['mc_showers_per_s']:.0f} showers/s on {speed['device']} ({speed['geometry']}, 100 GeV, 90 deg)"
        )
    verb = "promoted to champion" if decision["promoted"] else "not promoted"
    print(f"promotion:  version {decision['candidate_version']} {verb}: {decision['reason']}")

    print(f"\nraw showers (zarr):  {storage.url('data', 'raw')}")
    print(f"GAN tensors (zarr):  {storage.url('data', 'preprocessed')}")
    print(f"run specs (json):    {storage.url('data', 'runs')}")
    print(f"checkpoints:         {storage.url('checkpoints')}")
    print(f"MLflow:              {default_tracking_uri()}")
    print(
        f"done in {time.monotonic() - started:.0f} s; `make ui` shows the assets, their metadata and checks; "
        "`make mlflow-ui` shows the training run and the registered model"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
