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
