"""Partitions: one dynamic partition per simulation run (see :mod:`dt_assets.runs`)."""

import dagster as dg

simulation_runs_partitions = dg.DynamicPartitionsDefinition(name="simulation_runs")
