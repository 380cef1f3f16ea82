"""The self-driving loop end to end, with the real webserver and daemon (`dagster dev`).

The sensors are turned on through the GraphQL API, as the UI's toggle does. A good file dropped into
the landing folder must be ingested, trained on, validated and judged with no one at the keyboard; a
bad file must end up in quarantine with its reason and change nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from conftest import SMALL, bad_landing_files
from dt_assets import simulate, write_hdf5
from dt_assets.home import DAGSTER_YAML, ensure_home
from dt_assets.twin import (
    LOOP_SENSORS,
    DagsterDev,
    graphql,
    latest_metadata,
    loop_runs,
    loop_states,
    react,
    start_sensors,
)
from dt_assets.validation.config import DEFAULT_THRESHOLDS

pytestmark = pytest.mark.slow

#: a CPU-sized loop: 1-second sensors, a 3-step training of the loop's default family (the flow), a one-cell
#: validation whose checks all pass
TWIN = {
    "landing": {"min_interval_seconds": 1},
    "retrain": {
        "min_interval_seconds": 1,
        "flow_model": {"epochs": 1, "max_steps_per_epoch": 3, "batch_size": 16, "stage2_hidden": 64},
    },
    "validation": {
        "mc_reference": {"events_per_cell": 100, "n_energies": 1, "angles_deg": [90.0]},
        "validation_report": {
            "bootstrap": 5,
            "classifier_epochs": 2,
            "thresholds": {key: 1e12 for key, value in DEFAULT_THRESHOLDS.items() if value is not None},
        },
    },
}
LOOP = ("land_files", "ingest_runs", "train_flow", "validate_model", "promote_champion")
DEADLINE_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, condition, timeout_s: float, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {what}; dagster dev log:\n" + log.read_text()[-4000:]
    )


def partitions(port: int) -> list[str]:
    data = graphql(
        port, '{ assetNodeOrError(assetKey: {path: ["raw_showers"]}) { ... on AssetNode { partitionKeys } } }'
    )
    return sorted(data["assetNodeOrError"]["partitionKeys"])


def champion(home: Path) -> str | None:
    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow/mlflow.db")
    version = client.get_registered_model("calotwin-generator").aliases.get("champion")
    return None if version is None else str(version)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """`dagster dev` on a fresh data home and instance, with the fast loop settings."""
    home = tmp_path_factory.mktemp("twin") / "calotwin"
    ensure_home(home)
    # the default instance, with the run queue looked at every second instead of every 5 s
    (home / "dagster" / "dagster.yaml").write_text(DAGSTER_YAML + "run_queue:\n  dequeue_interval_seconds: 1\n")
    (home / "twin.yaml").write_text(yaml.safe_dump(TWIN))
    env = {k: v for k, v in os.environ.items() if k not in ("CALOTWIN_STORAGE_URL", "CALOTWIN_LOOP", "MAKEFLAGS")}
    env |= {"CALOTWIN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    with DagsterDev(env, free_port(), home / "dagster-dev.log") as server:
        yield home, server


def test_a_landed_file_is_ingested_retrained_validated_and_promoted_unattended(twin, tmp_path):
    home, server = twin
    port = server.port
    assert {name: loop_states(port)[name] for name in LOOP_SENSORS} == dict.fromkeys(LOOP_SENSORS, "STOPPED")
    assert start_sensors(port) == dict.fromkeys(LOOP_SENSORS, "RUNNING")

    batch, runs = react(port, home / "landing", 400, SMALL, seed=41, timeout_s=DEADLINE_S)
    (landed,) = (home / "data" / "landed").glob(f"*/{batch.name}")
    key = f"file-{hashlib.sha256(landed.read_bytes()).hexdigest()[:12]}"
    log = server.log_path.read_text()[-4000:]
    assert [(r["jobName"], r["status"]) for r in runs] == [(job, "SUCCESS") for job in LOOP], log
    first = runs[0]["creationTime"]
    for r in runs:  # the latencies, for the log (bench/loop.py measures them)
        times = ", ".join(f"{k} +{r[k + 'Time'] - first:5.1f} s" for k in ("creation", "start", "end"))
        print(f"{r['jobName']:<18} {times}")
    land, ingest, train, validate, promote = runs
    assert land["tags"]["calotwin/files"] == batch.name and land["tags"]["calotwin/loop"] == "land"
    assert ingest["tags"]["dagster/partition"] == key and ingest["tags"]["calotwin/loop"] == "ingest"
    assert train["tags"]["calotwin/new_runs"] == key and train["tags"]["calotwin/warm_start"] == ""
    assert (
        validate["tags"]["calotwin/model_uri"]
        == "models:/calotwin-generator/1"
        == promote["tags"]["calotwin/model_uri"]
    )
    assert partitions(port) == [key]
    assert landed.parent.name == key
    assert not list((home / "landing").iterdir())
    decision = latest_metadata(port, "champion_model")
    assert decision["promoted"] is True and decision["reason"] and decision["candidate_version"] == 1
    assert champion(home) == "1"
    model = latest_metadata(port, "flow_model")
    assert model["partitions"] == key and model["run_id"] == train["runId"] and model["family"] == "flow"

    # a bad file and one whose ECAL is a virtual dataset (which crashed the reader, and so the sensor, before it
    # was refused): both quarantined with their reasons by land_files, and nothing else changes
    bad = home / "landing" / "bad-nan.h5"
    shutil.copy(landed, tmp_path / "bad.h5")
    with h5py.File(tmp_path / "bad.h5", "r+") as h5:
        h5["ECAL"][7, 2, 2, 2] = np.inf
    shutil.copy(landed, tmp_path / "virtual.h5")
    with h5py.File(tmp_path / "virtual.h5", "r+") as h5:
        shape = h5["ECAL"].shape
        del h5["ECAL"]
        layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(tmp_path / "bad.h5"), "ECAL", shape=shape)
        h5.create_virtual_dataset("ECAL", layout)
    before = [(r["runId"], r["status"]) for r in loop_runs(port)]
    shutil.copy(tmp_path / "virtual.h5", home / "landing" / "virtual.h5")
    shutil.copy(tmp_path / "bad.h5", bad)
    sidecars = wait_for(
        "the bad files in quarantine",
        lambda: len(found := list((home / "quarantine").glob("*.json"))) == 2 and found,
        120,
        server.log_path,
    )
    reasons = {(r := json.loads(p.read_text()))["original_name"]: r for p in sidecars}
    assert reasons["virtual.h5"]["check"] == "unsafe_hdf5" and "virtual dataset" in reasons["virtual.h5"]["reason"]
    sidecar = reasons["bad-nan.h5"]
    assert "inf" in sidecar["reason"]
    assert Path(sidecar["url"]).read_bytes() == (tmp_path / "bad.h5").read_bytes()
    shown = wait_for(
        "the quarantine in the UI", lambda: latest_metadata(port, "quarantined_files"), 60, server.log_path
    )
    assert shown["file"] in ("bad-nan.h5", "virtual.h5") and shown["check"] in ("bad_content", "unsafe_hdf5")
    time.sleep(5)  # several ticks of every sensor

    def settled():  # the runs since, once none is still queued or running (a tick's land_files may just be starting)
        found = [r for r in loop_runs(port) if (r["runId"], r["status"]) not in before]
        return found and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in found) and found

    new = wait_for("the runs since the bad files to end", settled, 120, server.log_path)  # one, or one per tick
    assert {(r["jobName"], r["status"]) for r in new} == {("land_files", "SUCCESS")}
    assert partitions(port) == [key] and champion(home) == "1"
    assert not list((home / "landing").iterdir())


def test_many_files_dropped_at_once_land_exactly_once_and_intact_under_the_daemon(twin, tmp_path):
    """14 good files (12 distinct, 2 twice) and 10 bad ones of different kinds, dropped at once while the loop runs:
    each ends accepted or quarantined exactly once with its bytes intact, the new partitions are exactly the distinct
    good checksums, nothing stays in the landing area, and one ingestion is requested per partition. (Fifty files, and
    one retraining covering all their 35 partitions, are test_loop.py's in-process test: under the daemon every
    ingestion run starts a process that imports torch, about 10 s of CPU each.)"""
    home, server = twin
    port = server.port
    landing = home / "landing"
    # the waits below are upper bounds for a loaded machine (`make test` runs another module beside this one): the
    # sensors request one ingestion per tick, and every run starts a process that imports torch
    good: dict[str, bytes] = {}
    for i in range(12):
        path = tmp_path / f"load-{i:02d}.h5"
        write_hdf5(simulate(20, (10.0, 100.0), (60.0, 120.0), "e-", geometry=SMALL, seed=900 + i), str(path))
        good[path.name] = path.read_bytes()
        if i < 2:
            good[f"load-copy-{i:02d}.h5"] = good[path.name]
    staging = tmp_path / "staging"
    staging.mkdir()
    refused = bad_landing_files(staging, good["load-00.h5"], tmp_path)
    for name, data in good.items():
        (staging / name).write_bytes(data)
    dropped = {p.name: p.read_bytes() for p in staging.iterdir()}
    assert len(dropped) == 24
    before = set(partitions(port))
    runs_before = {r["runId"] for r in loop_runs(port)}
    sidecars_before = set((home / "quarantine").glob("*.json"))
    for path in staging.iterdir():  # a rename per file, as an uploader finishing its uploads
        path.rename(landing / path.name)

    wait_for("the landing area to drain", lambda: not list(landing.iterdir()), 600, server.log_path)
    keys = {f"file-{hashlib.sha256(data).hexdigest()[:12]}" for data in good.values()}
    wait_for("the new partitions", lambda: set(partitions(port)) == before | keys, 300, server.log_path)
    accepted = {p.name: p.read_bytes() for p in (home / "data" / "landed").glob("*/load-*")}
    assert accepted == good
    quarantined = [json.loads(p.read_text()) for p in set((home / "quarantine").glob("*.json")) - sidecars_before]
    assert sorted(s["original_name"] for s in quarantined) == sorted(refused)  # each exactly once
    assert {s["original_name"]: s["check"] for s in quarantined} == refused
    assert all(Path(s["url"]).read_bytes() == dropped[s["original_name"]] for s in quarantined)

    def ingestions():
        new = [r for r in loop_runs(port) if r["runId"] not in runs_before and r["jobName"] == "ingest_runs"]
        return len(new) >= len(keys) and new

    requested = wait_for("an ingestion per new partition", ingestions, 300, server.log_path)
    assert sorted(r["tags"]["dagster/partition"] for r in requested) == sorted(keys)

    def lands():
        found = [r for r in loop_runs(port) if r["runId"] not in runs_before and r["jobName"] == "land_files"]
        return found and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in found) and found

    assert {r["status"] for r in wait_for("the land_files runs to end", lands, 300, server.log_path)} == {"SUCCESS"}
