"""Preprocessing stage: GAN tensors per run, and the training set over all runs."""

import dagster as dg

from resources.storage import StorageResource

from ..fsio import sha256_json, store_size_bytes
from ..model.manifest import build_manifest
from ..model.preprocess import SPLITS, Transform, preprocess_blocks
from ..showers.store import iter_blocks, open_store, write_blocks
from .configs import PreprocessConfig
from .data import raw_showers
from .partitions import simulation_runs_partitions


@dg.asset(
    partitions_def=simulation_runs_partitions,
    deps=[raw_showers],
    group_name="preprocessing",
    kinds={"zarr", "pytorch"},
    description="One run as 3DGAN tensors: threshold, event selection, power scaling, normalised conditions, "
    "hash-stable train/validation/test split; the transform's parameters are stored with the data.",
)
def preprocessed_showers(
    context: dg.AssetExecutionContext, config: PreprocessConfig, storage: StorageResource
) -> dg.MaterializeResult:
    run_key = context.partition_key
    raw = open_store(storage.raw_showers_url(run_key), storage.options())
    transform = Transform(threshold=config.threshold_gev, power=config.power, min_total=config.min_total_gev)
    url = storage.preprocessed_url(run_key)
    write_blocks(
        preprocess_blocks(iter_blocks(raw), run_key, transform, config.fractions()),
        url,
        storage.options(),
        overwrite=True,
    )
    stored = open_store(url, storage.options())
    split = stored["split"].values
    counts = {name: int((split == code).sum()) for name, code in SPLITS.items()}
    context.log.info(f"{run_key}: kept {stored.sizes['event']} of {raw.sizes['event']} events, splits {counts}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(url),
            "events_in": int(raw.sizes["event"]),
            "events_kept": int(stored.sizes["event"]),
            **{f"{name}_events": n for name, n in counts.items()},
            "bytes_on_disk": store_size_bytes(url, storage.options()),
            "transform": dg.MetadataValue.json(transform.to_dict()),
        }
    )


@dg.asset(
    deps=[preprocessed_showers],
    group_name="preprocessing",
    kinds={"json"},
    description="All preprocessed runs, by geometry, with their split sizes: what gan_model trains on. "
    "Its lineage reaches every run through preprocessed_showers.",
)
def training_set(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    done = context.instance.get_materialized_partitions(preprocessed_showers.key)
    runs = [
        (key, storage.preprocessed_url(key)) for key in sorted(done) if storage.exists(storage.preprocessed_url(key))
    ]
    manifest = build_manifest(runs, storage.options())
    # named by its content: a training that read an earlier set keeps reading that one (no "latest" file)
    url = storage.training_set_url(sha256_json(manifest, 16))
    storage.write_json(url, manifest)
    rows = [
        dg.TableRecord({"geometry": geometry, **run})
        for geometry, group in manifest["geometries"].items()
        for run in group["runs"]
    ]
    columns = [
        dg.TableColumn(name, "string" if name in ("geometry", "run", "url") else "int")
        for name in ("geometry", "run", "url", "train", "validation", "test")
    ]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(url),
            "runs": dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=columns)),
            "partitions": dg.MetadataValue.json(sorted(key for key, _ in runs)),
            "train_events": sum(r.data["train"] for r in rows),
            "geometries": ", ".join(sorted(manifest["geometries"])) or "none",
        }
    )
