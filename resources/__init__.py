"""Dagster resources: storage (local folder or object store) and MLflow tracking; compute follows."""

from .storage import LocalStorage, ObjectStorage, StorageResource, storage_from_env
from .tracking import calotwin_mlflow, tracking_resource

__all__ = [
    "LocalStorage",
    "ObjectStorage",
    "StorageResource",
    "calotwin_mlflow",
    "storage_from_env",
    "tracking_resource",
]
