"""Dagster resources: storage (local or object store), MLflow tracking and the model registry; compute follows."""

from .storage import LocalStorage, ObjectStorage, StorageResource, storage_from_env
from .tracking import ModelRegistry, calotwin_mlflow, tracking_resource

__all__ = [
    "LocalStorage",
    "ModelRegistry",
    "ObjectStorage",
    "StorageResource",
    "calotwin_mlflow",
    "storage_from_env",
    "tracking_resource",
]
