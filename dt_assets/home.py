"""The data home: where everything the embedded defaults write lives.

``$CALOTWIN_HOME`` (default ``.calotwin`` in the working directory) holds ``data/`` (zarr stores and
run specs), ``landing/``, ``quarantine/``, ``checkpoints/``, ``reports/``, ``mlflow/`` and
``dagster/`` (the default ``DAGSTER_HOME``).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CALOTWIN_HOME"
DEFAULT_HOME = ".calotwin"
SUBDIRS = ("data", "landing", "quarantine", "checkpoints", "reports", "mlflow", "dagster")


def calotwin_home() -> Path:
    """The data home as an absolute path (not created)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def ensure_home(home: Path | None = None) -> Path:
    """Create the data home and its sub-folders; return it."""
    home = home or calotwin_home()
    for sub in SUBDIRS:
        (home / sub).mkdir(parents=True, exist_ok=True)
    return home


DAGSTER_YAML = """\
# Written by CaloTwin for the embedded default instance; edit freely, it is not overwritten.
telemetry:
  enabled: false
"""


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME`` (default ``$CALOTWIN_HOME/dagster``), created with a dagster.yaml if missing.

    Sets ``DAGSTER_HOME`` in this process's environment when it was not set.
    """
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or calotwin_home() / "dagster").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home
