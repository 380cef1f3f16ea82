"""What an asset hands its dependents: the metadata of its materialization, read from Dagster's event log.

An asset records what it produced (URLs of zarr stores and reports, keys, the model it judged) as
materialization metadata. A dependent reads the materialization of the run it is part of, so two
runs of the same assets at the same time (two launches from the UI) never read each other's:

1. the upstream asset's materialization in this run;
2. else in the run this one re-executes (and its parent, and so on): a re-execution from failure
   does not materialize again what already succeeded;
3. else the upstream asset's latest materialization (it was not part of the run).

A config field may name the run whose materialization to read instead (:func:`in_run`): what
``champion_model`` judges, the study ``tuned_model`` trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg


@dataclass(frozen=True)
class Materialization:
    """One materialization of an asset: the asset, the run that made it and its metadata's values."""

    asset: str
    run_id: str
    metadata: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        try:
            return self.metadata[name]
        except KeyError:
            raise dg.Failure(
                f"the {self.asset} materialization of run {self.run_id} has no {name!r} metadata (made by an older "
                f"version of CaloTwin): materialize {self.asset} again"
            ) from None


def _values(materialization: dg.AssetMaterialization) -> dict[str, Any]:
    return {name: value.value for name, value in materialization.metadata.items()}


def materialization_in_run(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> Materialization | None:
    """``key``'s (last) materialization in the run ``run_id``, or None if that run did not materialize it."""
    found = None
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        if entry.asset_materialization is not None and entry.asset_materialization.asset_key == key:
            found = Materialization(key.to_user_string(), run_id, _values(entry.asset_materialization))
    return found


def upstream(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
    key: dg.AssetKey,
    run_id: str = "",
    field: str = "",
) -> Materialization:
    """What ``key`` handed this run: its materialization in this run or the runs it re-executes, else its latest;
    a :class:`dagster.Failure` naming the asset to materialize when it has none. A ``run_id`` (the value of the
    config ``field``) names the run whose materialization to read instead."""
    instance = context.instance
    if run_id:
        return in_run(instance, run_id, key, field)
    run: dg.DagsterRun | None = context.run
    while run is not None:
        found = materialization_in_run(instance, run.run_id, key)
        if found is not None:
            return found
        run = instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None
    latest = instance.get_latest_materialization_event(key)
    if latest is None or latest.asset_materialization is None:
        name = key.to_user_string()
        raise dg.Failure(f"no {name} yet: materialize {name} first")
    return Materialization(key.to_user_string(), latest.run_id, _values(latest.asset_materialization))


def in_run(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey, field: str) -> Materialization:
    """``key``'s materialization in the run a config ``field`` names; a :class:`dagster.Failure` naming the
    problem when there is no such run or it did not materialize ``key``."""
    name = key.to_user_string()
    run = instance.get_run_by_id(run_id.strip())
    if run is None:
        raise dg.Failure(f"{field}: no run {run_id!r} (give the full Run ID of a run that materialized {name})")
    found = materialization_in_run(instance, run.run_id, key)
    if found is None:
        raise dg.Failure(f"{field}: run {run.run_id} ({run.job_name}, {run.status.value}) materialized no {name}")
    return found
