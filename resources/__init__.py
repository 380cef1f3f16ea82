"""Dagster resources: storage (local or object store), compute (local, torchrun, Slurm, Kubernetes), MLflow."""

from .compute import (
    ComputeResource,
    KubernetesCompute,
    LocalCompute,
    SlurmCompute,
    TorchrunCompute,
    compute_from_env,
)
from .storage import LocalStorage, ObjectStorage, StorageResource, storage_from_env
from .tracking import ModelRegistry, calotwin_mlflow, tracking_resource

__all__ = [
    "ComputeResource",
    "KubernetesCompute",
    "LocalCompute",
    "LocalStorage",
    "ModelRegistry",
    "ObjectStorage",
    "SlurmCompute",
    "StorageResource",
    "TorchrunCompute",
    "calotwin_mlflow",
    "compute_from_env",
    "storage_from_env",
    "tracking_resource",
]
