"""Materializing the data stages in one call: simulated runs up to the training set (tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from .data import raw_showers, simulation_runs
from .preprocess import preprocessed_showers, training_set

#: run config that keeps Dagster's console logger to warnings
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materialize_training_set(
    instance: dg.DagsterInstance,
    resources: Mapping[str, Any],
    simulations: Sequence[Mapping[str, Any]],
) -> list[str]:
    """Register ``simulations`` (``SimulationConfig`` dicts), materialize raw and preprocessed showers
    of each new run, then the training set; returns the run keys. Raises if any step fails."""
    result = dg.materialize(
        [simulation_runs],
        run_config={"ops": {"simulation_runs": {"config": {"simulations": list(simulations)}}}, **QUIET},
        instance=instance,
        resources=resources,
    )
    table = result.asset_materializations_for_node("simulation_runs")[0].metadata["runs"].value
    keys = [row.data["run"] for row in table.records]
    done = instance.get_materialized_partitions(preprocessed_showers.key)
    for key in keys:
        if key not in done:
            dg.materialize(
                [raw_showers, preprocessed_showers],
                partition_key=key,
                instance=instance,
                resources=resources,
                run_config=QUIET,
            )
    dg.materialize([training_set], instance=instance, resources=resources, run_config=QUIET)
    return keys
