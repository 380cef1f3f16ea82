"""The one Dagster ``Definitions`` object of CaloTwin (loaded by workspace.yaml and `dagster dev`)."""

import dagster as dg

from resources import storage_from_env

from .defs.data import raw_showers, simulation_runs
from .defs.jobs import ingest_runs_job, register_runs_job

defs = dg.Definitions(
    assets=[simulation_runs, raw_showers],
    jobs=[register_runs_job, ingest_runs_job],
    resources={"storage": storage_from_env()},
)
