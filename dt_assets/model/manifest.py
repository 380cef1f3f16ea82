"""The training set: which preprocessed runs exist, by geometry, with their split sizes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..fsio import sha256_json
from ..showers.store import open_store
from .preprocess import SPLITS


def build_manifest(runs: Iterable[tuple[str, str]], storage_options: Mapping[str, Any] | None = None) -> dict:
    """``{"geometries": {name: {"runs": [{run, url, train, validation, test}]}}}`` for (run key, store URL) pairs."""
    geometries: dict[str, dict] = {}
    for run_key, url in sorted(runs):
        ds = open_store(url, storage_options)
        split = np.asarray(ds["split"].values)
        entry = {"run": run_key, "url": url, **{name: int((split == code).sum()) for name, code in SPLITS.items()}}
        geometries.setdefault(ds.attrs["geometry"], {"runs": []})["runs"].append(entry)
    return {"geometries": geometries}


def runs_for(manifest: Mapping, geometry: str) -> list[dict]:
    """The manifest's runs of one geometry (empty if none)."""
    return list(manifest.get("geometries", {}).get(geometry, {}).get("runs", []))


def training_key(
    config: Mapping[str, Any], runs: Iterable[Mapping[str, Any]], geometry: str, family: str = "3dgan"
) -> str:
    """Names a training by what fixes its result, except the number of epochs (so more epochs resume);
    ``gan-...`` for a 3DGAN, ``flow-...`` for the flow family."""
    identity = {
        "config": {k: v for k, v in config.items() if k != "epochs"},
        "geometry": geometry,
        "runs": sorted((r["run"], r["train"], r["validation"]) for r in runs),
    }
    return ("gan-" if family == "3dgan" else f"{family}-") + sha256_json(identity, 12)
