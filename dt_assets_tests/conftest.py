"""Shared fixtures: an isolated data home, an ephemeral Dagster instance, small simulated samples."""

from __future__ import annotations

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
