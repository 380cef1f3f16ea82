"""Reproducibility records: everything needed to train a registered model version again.

A :class:`ReproducibilityRecord` holds the generator family (``3dgan`` or ``flow``), the particle
trained on, the training data (each preprocessed store's URL, run key,
event counts and content checksum), the whole :class:`~dt_assets.model.job.TrainingJob` settings
(the family's config, :class:`~dt_assets.model.step.TrainConfig` or
:class:`~dt_assets.model.flow_training.FlowTrainConfig`: epochs, batch size, learning rates, seed, step
cap and the family's own settings; the geometry; the warm start and, for a registry warm start, the exact
version it resolved to), the training stages (epoch counts at which a resumed training had stopped),
the code version and git commit, and the software and hardware it ran on (package versions, device,
world size, torch threads and determinism settings).

:func:`build_record` makes one, :func:`verify_data` recomputes the data checksums (a changed or
missing store raises :class:`DataChangedError` naming it) and :func:`reproduce` trains again from the
record, on the CPU by default, in one thread-count-pinned deterministic process. ``gan_model`` and
``flow_model`` store the record as ``reproducibility/record.json`` in the model version's MLflow run;
:func:`read_record` reads it back from a registry URI.

The data checksum (:func:`store_checksum`) is a SHA-256 over what training reads of a store, in
order: the ``transform`` attribute, then for each variable of :data:`HASHED` (``split``, the per-event
conditioning fields, then ``cells``) its name, dtype and shape (of the hashed part), then its values
at the train and validation events (test events are never read by training and are left out), one
on-disk chunk of 256 events at a time. Only one chunk of one variable is in memory at once; the cost is
one read (and decompression) of the store, about what one training epoch reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fsio import atomic_file, sha256_file, sha256_json, url_to_fs
from ..showers.errors import ShowerDataError
from ..showers.schema import EVENTS_PER_CHUNK
from ..showers.store import open_store
from ..version import __version__
from .job import TrainingJob, run_job
from .preprocess import CELLS, SPLITS
from .stream import FIELDS
from .train import TrainResult

__all__ = [
    "RECORD_ARTIFACT",
    "RECORD_TAG",
    "SCHEMA_VERSION",
    "DataChangedError",
    "ReproducibilityRecord",
    "StoreRecord",
    "build_record",
    "compare_weights",
    "log_record",
    "read_record",
    "reproduce",
    "store_checksum",
    "verify_data",
]

SCHEMA_VERSION = 1
#: where the record lies in the model version's MLflow run
RECORD_ARTIFACT = "reproducibility/record.json"
#: model version tag holding the record's short checksum
RECORD_TAG = "reproducibility_record"
#: the record beside the checkpoint, so that a training resumed there knows its earlier stages
CHECKPOINT_RECORD = "record.json"
#: the variables of a preprocessed store that training reads, in the order they are hashed
HASHED = ("split", *FIELDS, CELLS)
#: packages whose versions matter to a training's result (or to reading its record)
PACKAGES = ("torch", "numpy", "zarr", "xarray", "dagster", "mlflow", "calotwin")


class DataChangedError(ValueError):
    """A store of the record is missing, unreadable or no longer holds the data the model was trained on."""


@dataclass(frozen=True)
class StoreRecord:
    """One preprocessed store: where it is, which run it holds, its split sizes and content checksum."""

    url: str
    run: str
    n_train: int
    n_validation: int
    sha256: str


@dataclass(frozen=True)
class ReproducibilityRecord:
    schema_version: int
    data: list[StoreRecord]
    geometry: str
    config: dict[str, Any]
    warm_start: str | None
    warm_start_version_uri: str | None
    warm_start_sha256: str | None
    stages: list[int]
    code_version: str
    git_commit: str | None
    environment: dict[str, Any]
    training_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the generator family (records written before the flow family hold none: a 3DGAN)
    family: str = "3dgan"
    #: the particle the training read (None: every event)
    particle: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ReproducibilityRecord:
        payload = json.loads(text)
        if not isinstance(payload, dict):
            raise ValueError("reproducibility record: expected a JSON object")
        if payload.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"reproducibility record: schema version {payload.get('schema_version')!r}, "
                f"this code reads {SCHEMA_VERSION}"
            )
        unknown = sorted(payload.keys() - cls.__dataclass_fields__.keys())
        if unknown:
            raise ValueError(f"reproducibility record: unknown key(s) {unknown}")
        payload["data"] = [StoreRecord(**s) for s in payload["data"]]
        return cls(**payload)

    def checksum(self, length: int = 16) -> str:
        """A short SHA-256 of the record's JSON (the model version's ``reproducibility_record`` tag)."""
        return sha256_json(json.loads(self.to_json()), length)

    def job(self, checkpoint_dir: str, storage_options: Mapping[str, Any] | None = None, device: str = "cpu"):
        """The :class:`TrainingJob` of the record's last stage, checkpointing in ``checkpoint_dir``."""
        return TrainingJob(
            data=[s.url for s in self.data],
            checkpoint_dir=checkpoint_dir,
            geometry=self.geometry,
            config=dict(self.config),
            storage_options=dict(storage_options or {}),
            warm_start=self.warm_start_version_uri or self.warm_start,
            device=device,
            family=self.family,
            particle=self.particle,
        )


def store_checksum(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[str, int, int]:
    """(SHA-256, train events, validation events) of a preprocessed store; see the module docstring."""
    ds = open_store(url, storage_options)
    split = np.asarray(ds["split"].values)
    keep = np.isin(split, [SPLITS["train"], SPLITS["validation"]])
    digest = hashlib.sha256()
    digest.update(b"transform\0" + str(ds.attrs.get("transform", "")).encode() + b"\0")
    for name in HASHED:
        variable = ds[name]
        shape = (int(keep.sum()), *variable.shape[1:])
        digest.update(f"{name}\0{variable.dtype.str}\0{shape}\0".encode())
        for start in range(0, len(split), EVENTS_PER_CHUNK):
            mask = keep[start : start + EVENTS_PER_CHUNK]
            if not mask.any():
                continue
            block = np.asarray(variable[start : start + EVENTS_PER_CHUNK].values)[mask]
            digest.update(np.ascontiguousarray(block).tobytes())
    counts = {k: int((split == SPLITS[k]).sum()) for k in ("train", "validation")}
    return digest.hexdigest(), counts["train"], counts["validation"]


def environment(device: str, world_size: int) -> dict[str, Any]:
    """Package versions, Python, platform, device, world size, torch threads and determinism settings."""
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    packages["torch"] = torch.__version__
    packages["numpy"] = np.__version__
    return {
        "packages": packages,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": device,
        "cuda": torch.version.cuda if device.startswith("cuda") else None,
        "world_size": world_size,
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def git_commit() -> str | None:
    """The source tree's commit (with ``-dirty`` when it has uncommitted changes), or None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def build_record(
    job: TrainingJob,
    runs: list[str],
    device: str,
    world_size: int = 1,
    resumed_from_epoch: int = 0,
    training_key: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ReproducibilityRecord:
    """The record of a finished training of ``job`` (``runs``: the run key of each of ``job.data``).

    A training that resumed after epoch ``resumed_from_epoch`` takes its earlier stages from the
    record :func:`save_beside_checkpoint` left in the checkpoint folder (or, lacking one, assumes a
    single earlier stage).
    """
    if len(runs) != len(job.data):
        raise ValueError(f"build_record: {len(runs)} run key(s) for {len(job.data)} store(s)")
    data = []
    for url, run in zip(job.data, runs, strict=True):
        digest, n_train, n_validation = store_checksum(url, job.storage_options)
        data.append(StoreRecord(url=url, run=run, n_train=n_train, n_validation=n_validation, sha256=digest))
    epochs = job.train_config().epochs
    stages = [epochs]
    if resumed_from_epoch:
        earlier = _checkpoint_record(job)
        before = earlier.stages if earlier is not None else [resumed_from_epoch]
        stages = [s for s in before if s < resumed_from_epoch] + [resumed_from_epoch, epochs]
        stages = sorted(set(stages))
    warm_version = warm_sha = None
    if job.warm_start and job.warm_start.startswith("models:/"):
        from .registry import resolve_version, version_uri

        warm_version = version_uri(resolve_version(job.warm_start))
    elif job.warm_start:
        warm_sha = sha256_file(job.warm_start, job.storage_options)
    return ReproducibilityRecord(
        schema_version=SCHEMA_VERSION,
        data=data,
        geometry=job.geometry,
        config=json.loads(json.dumps(job.train_config().to_dict())),
        warm_start=job.warm_start,
        warm_start_version_uri=warm_version,
        warm_start_sha256=warm_sha,
        stages=stages,
        code_version=__version__,
        git_commit=git_commit(),
        environment=environment(device, world_size),
        training_key=training_key,
        extra=dict(extra or {}),
        family=job.family,
        particle=job.particle,
    )


def save_beside_checkpoint(record: ReproducibilityRecord, job: TrainingJob) -> str:
    """Write the record into the job's checkpoint folder (a later resumed training reads its stages); its URL."""
    url = job.checkpoint_dir.rstrip("/") + "/" + CHECKPOINT_RECORD
    with atomic_file(url, job.storage_options, mode="w") as handle:
        handle.write(record.to_json())
    return url


def _checkpoint_record(job: TrainingJob) -> ReproducibilityRecord | None:
    fs, path = url_to_fs(job.checkpoint_dir.rstrip("/") + "/" + CHECKPOINT_RECORD, job.storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        try:
            return ReproducibilityRecord.from_json(handle.read())
        except (ValueError, TypeError, KeyError):
            return None


def verify_data(record: ReproducibilityRecord, storage_options: Mapping[str, Any] | None = None) -> None:
    """Recompute every store's checksum; raise :class:`DataChangedError` naming the first that differs."""
    for store in record.data:
        try:
            digest, n_train, n_validation = store_checksum(store.url, storage_options)
        except (ShowerDataError, OSError, KeyError) as exc:
            raise DataChangedError(f"store {store.url} (run {store.run}) is missing or unreadable: {exc}") from None
        if digest != store.sha256:
            raise DataChangedError(
                f"store {store.url} (run {store.run}) changed: checksum {digest[:12]}, the record says "
                f"{store.sha256[:12]} ({n_train}/{n_validation} train/validation events, "
                f"recorded {store.n_train}/{store.n_validation})"
            )


def reproduce(
    record: ReproducibilityRecord,
    checkpoint_dir: str,
    storage_options: Mapping[str, Any] | None = None,
    device: str = "cpu",
    verify: bool = True,
) -> TrainResult:
    """Train again from ``record`` into ``checkpoint_dir`` (which should be empty), stage by stage.

    The data are verified first (``verify``). The training runs with deterministic algorithms and the
    recorded number of torch threads (CPU reductions are only bit-identical with the same split
    across threads); both settings are restored afterwards. A training recorded on another device,
    or with more than one process, gives close but not identical weights.
    """
    if verify:
        verify_data(record, storage_options)
    job = record.job(checkpoint_dir, storage_options, device)
    threads = int(record.environment.get("torch_threads") or torch.get_num_threads())
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    environ = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        result = None
        for epochs in record.stages:
            stage = TrainingJob(**{**asdict(job), "config": {**job.config, "epochs": epochs}})
            result = run_job(stage)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        os.environ.update(environ)
    assert result is not None
    return result


def compare_weights(a: torch.nn.Module, b: torch.nn.Module) -> tuple[bool, float]:
    """(every tensor of the state dicts equal, max absolute difference) of two models of one architecture."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        raise ValueError(f"the models differ in their tensors: {sorted(sa.keys() ^ sb.keys())}")
    equal, worst = True, 0.0
    for name, tensor in sa.items():
        x, y = tensor.detach().cpu(), sb[name].detach().cpu()
        if x.shape != y.shape:
            raise ValueError(f"tensor {name}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        if not torch.equal(x, y):
            equal = False
            if x.is_floating_point():
                worst = max(worst, float((x.double() - y.double()).abs().max()))
    return equal, worst


def read_record(model_uri: str) -> ReproducibilityRecord:
    """The reproducibility record of a registry URI's version (``models:/name/N`` or ``models:/name@alias``)."""
    import mlflow

    from .registry import resolve_version

    version_ = resolve_version(model_uri)
    if not version_.run_id:
        raise FileNotFoundError(f"{model_uri}: the version has no MLflow run, hence no reproducibility record")
    try:
        local = mlflow.artifacts.download_artifacts(run_id=version_.run_id, artifact_path=RECORD_ARTIFACT)
    except mlflow.exceptions.MlflowException as exc:
        raise FileNotFoundError(f"{model_uri}: no reproducibility record ({exc.message})") from None
    return ReproducibilityRecord.from_json(Path(local).read_text(encoding="utf-8"))


def log_record(record: ReproducibilityRecord) -> str:
    """Log the record to the active MLflow run as :data:`RECORD_ARTIFACT`; its artifact URI."""
    import mlflow

    mlflow.log_text(record.to_json(), RECORD_ARTIFACT)
    return mlflow.get_artifact_uri(RECORD_ARTIFACT)
