"""Shared fixtures: an isolated data home, an ephemeral Dagster instance, small simulated samples, and a data
home filled once per session by `make demo`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import filelock
import h5py
import numpy as np
import pytest
import xarray as xr
from servers import MlflowServer, Postgres, S3Server, mlflow_tracking_server, moto_s3, postgres_cluster
from slurm_cluster import SlurmCluster, require_cluster

from dt_assets import simulate

REPO = Path(__file__).resolve().parents[1]
SMALL = "small_ecal_15x15x12"

#: `make test` runs the suite on two pytest-xdist workers (``--dist loadfile``: a module's tests run on one worker, so
#: a module fixture such as a trained model is built once). The workers take the modules in this order: the longest
#: first, and the demo's second user last, by when the first has made the demo (:func:`demo_home`).
FIRST_MODULES = ("test_notebook", "test_loop_e2e")
LAST_MODULES = ("test_readme_commands",)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.nodeid.partition("::")[0].rpartition("/")[2].removesuffix(".py")
        if module in FIRST_MODULES:
            return FIRST_MODULES.index(module)
        return len(FIRST_MODULES) + 1 if module in LAST_MODULES else len(FIRST_MODULES)

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $CALOTWIN_HOME (and DAGSTER_HOME inside it) for one test."""
    path = tmp_path / "calotwin"
    monkeypatch.setenv("CALOTWIN_HOME", str(path))
    monkeypatch.setenv("DAGSTER_HOME", str(path / "dagster"))
    monkeypatch.delenv("CALOTWIN_STORAGE_URL", raising=False)
    return path


@pytest.fixture
def instance():
    import dagster as dg

    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture(scope="session")
def small_showers() -> xr.Dataset:
    """300 electrons, 10-100 GeV, 60-120 deg, on the small preset (two blocks: 256 + 44 events)."""
    return simulate(300, (10.0, 100.0), (60.0, 120.0), "e-", geometry=SMALL, seed=11)


# --- services: real servers on 127.0.0.1 (servers.py) and the cluster of `.ci/slurm up` (slurm_cluster.py); a test
# module imports only the classes it annotates with (``from servers import Postgres``) -----------------------------
@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster on 127.0.0.1 (skipped, or failed under CALOTWIN_REQUIRE_SERVICES=1, without one)."""
    with postgres_cluster() as pg:
        yield pg


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 with the bucket ``calotwin``."""
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def mlflow_server(
    postgres: Postgres, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """An MLflow tracking server on ``postgres`` with artifacts in ``s3://calotwin/mlflow``, still starting:
    call ``.ready()`` before using it."""
    with mlflow_tracking_server(postgres, s3_server, tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    """The cluster that `SLURM_CONF` points at; skips (or fails with CALOTWIN_REQUIRE_SERVICES=1) if none answers."""
    return require_cluster()


def make_env(home: Path) -> dict[str, str]:
    """The environment of a user who runs `make` with ``$CALOTWIN_HOME`` = ``home`` (Dagster's home inside it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CALOTWIN_STORAGE_URL", "MAKEFLAGS")}
    env["CALOTWIN_HOME"] = str(home)
    return env


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> tuple[Path, str]:
    """A data home filled by `make demo`, and what the demo printed: made once per test run (it takes minutes), by
    whichever pytest-xdist worker asks first; another waits for it and gets the same home."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's base folder, above each worker's own
    folder = shared / "demo"
    with filelock.FileLock(str(shared / "demo.lock")):
        if not (folder / "stdout.txt").exists():
            folder.mkdir(exist_ok=True)
            env = make_env(folder / "calotwin")
            run = subprocess.run(["make", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            (folder / "stdout.txt").write_text(run.stdout)
    return folder / "calotwin", (folder / "stdout.txt").read_text()


def register_untrained_generator(alias: str = "challenger", seed: int = 0, name: str = "calotwin-generator") -> str:
    """An untrained small-preset generator, registered in ``$CALOTWIN_HOME``'s MLflow with ``alias``; its version."""
    import mlflow
    import torch

    from dt_assets import build_generator
    from dt_assets.model.registry import default_tracking_uri, ensure_experiment, log_generator, set_alias

    uri = default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment("calotwin", uri))
    torch.manual_seed(seed)
    with mlflow.start_run():
        version = log_generator(build_generator(SMALL), name)
    set_alias(alias, version.version, name)
    return version.version


def torchrun_training(store: str, folder: Path, *extra: str) -> list[dict]:
    """Two-process DDP training (torchrun, gloo, one thread each) of the small preset on ``store`` for one epoch of 3
    steps, checkpointing in ``folder/ckpt``; each rank's report (rank, world size, weights checksum, history)."""
    import json
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["--data", store, "--checkpoint", str(folder / "ckpt"), "--geometry", SMALL, "--epochs", "1"]
    args += ["--max-steps-per-epoch", "3", "--report", str(folder / "rank{rank}.json"), *extra]
    run = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "dt_assets.model.cli", "train", *args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    reports = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2] and [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["generator_checksum"] == reports[1]["generator_checksum"]  # DDP kept the weights in sync
    return reports


def bad_landing_files(landing: Path, good: bytes, tmp: Path) -> dict[str, str]:
    """Ten bad entries of different kinds in ``landing``: {name: the check that refuses it}."""
    grid = (15, 15, 12)
    ones = {"energy": np.full(20, 50.0), "theta": np.full(20, 1.5)}

    def raw(name: str, **data) -> None:
        with h5py.File(landing / name, "w") as h5:
            for key, value in {"ECAL": np.full((20, *grid), 1e-3, np.float32), **ones, **data}.items():
                if value is not None:
                    h5[key] = value

    (landing / "empty.h5").write_bytes(b"")
    (landing / "truncated.h5").write_bytes(good[: len(good) // 2])
    (landing / "zip.h5").write_bytes(b"PK\x03\x04 a zip file")
    (landing / "notes.txt").write_text("hello")
    (landing / "a..b.h5").write_bytes(good)
    raw("nan.h5", ECAL=np.where(np.arange(20)[:, None, None, None] == 3, np.nan, np.full((20, *grid), 1e-3)))
    raw("keys.h5", ECAL=None, foo=np.ones(3))
    raw("blank.h5", ECAL=np.zeros((20, *grid), np.float32))
    raw("hot.h5", energy=np.full(20, 5000.0))
    with h5py.File(tmp / "elsewhere.h5", "w") as h5:
        h5["d"] = np.full((20, *grid), 1e-3, np.float32)
    raw("virtual.h5", ECAL=None)
    with h5py.File(landing / "virtual.h5", "a") as h5:
        layout = h5py.VirtualLayout(shape=(20, *grid), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(tmp / "elsewhere.h5"), "d", shape=(20, *grid))
        h5.create_virtual_dataset("ECAL", layout)
    return {
        "empty.h5": "empty",
        "truncated.h5": "unreadable",
        "zip.h5": "unreadable",
        "notes.txt": "unsupported_type",
        "a..b.h5": "unsafe_name",
        "nan.h5": "bad_content",
        "keys.h5": "bad_content",
        "blank.h5": "no_energy",
        "hot.h5": "out_of_range",
        "virtual.h5": "unsafe_hdf5",
    }
