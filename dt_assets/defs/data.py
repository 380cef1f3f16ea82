"""Data-stage assets: the catalogue of simulation runs and the raw shower store of each run."""

import json
import time
from typing import Any

import dagster as dg
import numpy as np

from resources.storage import StorageResource

from ..fsio import store_size_bytes
from ..plots import longitudinal_profile_png
from ..progress import Progress
from ..runs import FileSpec, RunSpec, file_spec, spec_from_dict
from ..showers.store import write_showers
from ..showers.summary import ShowerSummary, summarised
from .configs import SimulationRunsConfig
from .data_checks import raw_showers_check_results, raw_showers_check_specs
from .metadata import image
from .partitions import simulation_runs_partitions


@dg.asset(
    group_name="data",
    kinds={"python"},
    description="Catalogue of simulation runs. Materialize it with a config to register Monte Carlo runs or "
    "external files; each new run becomes a partition of raw_showers (the same config and seed, or the same "
    "file bytes, is never registered twice).",
)
def simulation_runs(
    context: dg.AssetExecutionContext, config: SimulationRunsConfig, storage: StorageResource
) -> dg.MaterializeResult:
    specs: list[RunSpec] = [sim.to_spec() for sim in config.simulations]
    specs += [file_spec(f.path, f.geometry, f.particle) for f in config.import_files]
    known = set(context.instance.get_dynamic_partitions(simulation_runs_partitions.name))
    new_specs, rows = [], []
    for spec in specs:
        spec_url = storage.run_spec_url(spec.key)
        if not storage.exists(spec_url):
            storage.write_json(spec_url, spec.to_dict())
            new_specs.append(spec.key)
        kind, new = spec.to_dict()["kind"], spec.key in new_specs
        rows.append({"run": spec.key, "kind": kind, "new": new, "description": spec.describe()})
    to_add = sorted({spec.key for spec in specs} - known)
    if to_add:
        context.instance.add_dynamic_partitions(simulation_runs_partitions.name, to_add)
    context.log.info(f"{len(new_specs)} new run(s), {len(specs) - len(new_specs)} known; partitions added: {to_add}")
    return dg.MaterializeResult(
        metadata={
            "runs": runs_table(rows),
            "new_runs": len(new_specs),
            "registered_partitions": len(known | set(to_add)),
        }
    )


def runs_table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    """The ``runs`` metadata table of ``simulation_runs``: run key, kind, whether new, description."""
    columns = [("run", "string"), ("kind", "string"), ("new", "bool"), ("description", "string")]
    return dg.MetadataValue.table(
        [dg.TableRecord(row) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns]),
    )


def load_spec(storage: StorageResource, run_key: str) -> RunSpec:
    """The spec registered for a run, or a clear failure naming what to do."""
    url = storage.run_spec_url(run_key)
    if not storage.exists(url):
        raise dg.Failure(
            f"no run spec registered for partition {run_key!r} (expected {url}); "
            "materialize simulation_runs with a config that describes this run first"
        )
    return spec_from_dict(storage.read_json(url))


@dg.asset(
    partitions_def=simulation_runs_partitions,
    deps=[simulation_runs],
    group_name="data",
    kinds={"zarr"},
    check_specs=raw_showers_check_specs,
    automation_condition=dg.AutomationCondition.on_missing(),
    description="Raw showers of one run (zarr v3, chunked by event): simulated by the GFlash Monte Carlo, "
    "or imported from a 3DGAN / CaloChallenge HDF5 file or a zarr store.",
)
def raw_showers(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    run_key = context.partition_key
    spec = load_spec(storage, run_key)
    context.log.info(f"{run_key}: {spec.describe()}")
    url = storage.raw_showers_url(run_key)
    summary = ShowerSummary()
    total = None if isinstance(spec, FileSpec) else spec.n_events
    started = time.monotonic()
    with Progress(total, f"{'simulating' if total else 'reading'} {run_key}", log=context.log.info) as progress:
        write_showers(
            summarised(progress.wrap(spec.blocks(), lambda block: block.sizes["event"]), summary),
            url,
            storage.options(),
            overwrite=True,
            attrs={"run_key": run_key, "run_spec": json.dumps(spec.to_dict(), sort_keys=True)},
        )
    seconds = time.monotonic() - started
    size = store_size_bytes(url, storage.options())
    png = longitudinal_profile_png(summary, title=f"{run_key}: mean longitudinal profile")
    particles = ", ".join(f"{name}: {count}" for name, count in sorted(summary.particles.items()))
    return dg.MaterializeResult(
        check_results=raw_showers_check_results(url, storage.options()),
        metadata={
            "path": dg.MetadataValue.path(url),
            "events": summary.n_events,
            "bytes_on_disk": size,
            "events_per_second": round(summary.n_events / max(seconds, 1e-9), 1),
            "run": spec.describe(),
            "particles": particles,
            "energy_range_gev": f"{summary.energy_range_gev[0]:.1f}-{summary.energy_range_gev[1]:.1f}",
            "theta_range_deg": "{:.1f}-{:.1f}".format(*np.rad2deg(summary.theta_range_rad)),
            "mean_visible_over_expected": round(summary.mean_visible_ratio, 4),
            "mean_longitudinal_profile": image(png, "mean longitudinal profile"),
            "compression_ratio": round(summary.n_events * summary.cells_per_event * 4 / max(size, 1), 1),
        },
    )
