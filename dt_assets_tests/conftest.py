"""Shared fixtures: an isolated data home, an ephemeral Dagster instance, small simulated samples, and a data
home filled once per session by `make demo`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import xarray as xr

from dt_assets import simulate

REPO = Path(__file__).resolve().parents[1]
SMALL = "small_ecal_15x15x12"


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


def make_env(home: Path) -> dict[str, str]:
    """The environment of a user who runs `make` with ``$CALOTWIN_HOME`` = ``home`` (Dagster's home inside it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CALOTWIN_STORAGE_URL", "MAKEFLAGS")}
    env["CALOTWIN_HOME"] = str(home)
    return env


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> tuple[Path, str]:
    """A data home filled by `make demo` (run once per session: it takes minutes), and what the demo printed."""
    home = tmp_path_factory.mktemp("demo") / "calotwin"
    run = subprocess.run(["make", "demo"], cwd=REPO, env=make_env(home), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return home, run.stdout


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
