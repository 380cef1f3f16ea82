"""Dagster resources: storage (local folder or object store); compute and tracking follow."""

from .storage import LocalStorage, ObjectStorage, StorageResource, storage_from_env

__all__ = ["LocalStorage", "ObjectStorage", "StorageResource", "storage_from_env"]
