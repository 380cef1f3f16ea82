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


DAGSTER_HEADER = "# Written by CaloTwin for the embedded default instance; edit freely, it is not overwritten."
CONCURRENCY_YAML = """\
concurrency:
  pools:
    default_limit: 1  # one step at a time per pool: gan_model's pool "training" runs one training at a time
  runs:
    tag_concurrency_limits:  # one run at a time per queue: calotwin/queue is "training" or "validation"
      - key: calotwin/queue
        value: {applyLimitPerUniqueValue: true}
        limit: 1
"""
DAGSTER_YAML = f"""\
{DAGSTER_HEADER}
telemetry:
  enabled: false
{CONCURRENCY_YAML}"""


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME`` (default ``$CALOTWIN_HOME/dagster``), created with a dagster.yaml if missing
    (telemetry off; every concurrency pool limited to 1, so one training runs at a time; queued runs
    tagged ``calotwin/queue`` run one at a time per value: one training run, one validation run).

    Sets ``DAGSTER_HOME`` in this process's environment when it was not set.
    """
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or calotwin_home() / "dagster").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    else:  # a file CaloTwin wrote before pools existed gains the concurrency section, nothing else changes
        text = config.read_text()
        if text.startswith(DAGSTER_HEADER) and "concurrency:" not in text:
            config.write_text(text.rstrip("\n") + "\n" + CONCURRENCY_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home
