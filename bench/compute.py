"""Benchmark: the same gan_model materialization on each compute resource (local, torchrun, Slurm).

For each compute it measures the wall time of materializing ``gan_model`` through Dagster, the
training time inside it (the sum of the epochs' seconds, as the training reported them through
Pipes or in-process), the launch overhead (the rest: process start-up, torch import, rendezvous,
queueing, reading the model back from the checkpoint, registration) and the samples/s of the last
epoch, which under DDP counts every rank. Slurm is measured when ``$SLURM_CONF`` names a running
cluster (``.ci/slurm up``; ``source /tmp/calotwin-slurm/env``).

Small preset, one run of ``--events`` showers, ``--epochs`` epochs of ``--steps`` steps of batch
``--batch`` (per rank). Prints a table, then one JSON line. Progress bars on stderr follow the
simulation and the in-process training (an external training logs its steps to the Dagster log).

    .venv/bin/python bench/compute.py [--events 2000] [--epochs 2] [--steps 15] [--batch 32] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
from mlflow import MlflowClient

from dt_assets.defs.model import gan_model
from dt_assets.defs.pipeline import QUIET, materialize_training_set
from dt_assets.progress import enable_bars
from resources import LocalCompute, LocalStorage, SlurmCompute, TorchrunCompute, tracking_resource

GEOMETRY = "small_ecal_15x15x12"


def prepare(instance: dg.DagsterInstance, events: int) -> None:
    sims = [{"n_events": events, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": GEOMETRY, "seed": 1}]
    materialize_training_set(instance, {"storage": LocalStorage()}, sims)


def measure(name: str, compute, instance, home: Path, config: dict) -> dict:
    started = time.monotonic()
    result = dg.materialize(
        [gan_model],
        instance=instance,
        resources={"storage": LocalStorage(), "compute": compute, "mlflow": tracking_resource()},
        run_config={"ops": {"gan_model": {"config": config}}, **QUIET},
    )
    wall = time.monotonic() - started
    metadata = result.asset_materializations_for_node("gan_model")[0].metadata
    run_id = metadata["mlflow_run_id"].value
    client = MlflowClient(f"sqlite:///{home}/mlflow/mlflow.db")
    rates = client.get_metric_history(run_id, "samples_per_second")
    seconds = sum(m.value for m in client.get_metric_history(run_id, "epoch_seconds"))
    world = metadata["world_size"].value
    return {
        "compute": name,
        "label": metadata["compute"].value,
        "world_size": world,
        "wall_s": round(wall, 1),
        "training_s": round(seconds, 1),
        "overhead_s": round(wall - seconds, 1),
        "samples_per_s_last_epoch": round(rates[-1].value, 1),
    }


def slurm_available() -> bool:
    if not os.environ.get("SLURM_CONF") or not shutil.which("sinfo"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    enable_bars()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "calotwin"
        os.environ["CALOTWIN_HOME"] = str(home)
        os.environ.pop("CALOTWIN_STORAGE_URL", None)
        with dg.DagsterInstance.ephemeral() as instance:
            prepare(instance, args.events)
            computes = [
                ("local", LocalCompute()),
                (f"torchrun x{args.nproc}", TorchrunCompute(nproc_per_node=args.nproc)),
            ]
            if slurm_available():
                computes.append(("slurm", SlurmCompute(time="30:00")))
            for seed, (name, compute) in enumerate(computes):
                config = {
                    "epochs": args.epochs,
                    "max_steps_per_epoch": args.steps,
                    "batch_size": args.batch,
                    "seed": 100 + seed,  # a new training key each: no compute resumes another's checkpoint
                }
                rows.append(measure(name, compute, instance, home, config))
    print(
        f"gan_model on each compute: {args.events} events, {args.epochs} epochs x {args.steps} steps x batch "
        f"{args.batch} per rank ({os.cpu_count()} CPUs)"
    )
    print(f"{'compute':<14}{'ranks':>6}{'wall s':>9}{'train s':>9}{'overhead s':>12}{'samples/s':>11}")
    for r in rows:
        print(
            f"{r['compute']:<14}{r['world_size']:>6}{r['wall_s']:>9}{r['training_s']:>9}{r['overhead_s']:>12}"
            f"{r['samples_per_s_last_epoch']:>11}"
        )
    print(json.dumps({"benchmark": "compute", "cpus": os.cpu_count(), **vars(args), "results": rows}))


if __name__ == "__main__":
    main()
