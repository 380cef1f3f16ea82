"""Storage resources: where zarr stores, run specs and files live.

``LocalStorage`` (the default) keeps everything under the data home (``$CALOTWIN_HOME``, default
``.calotwin``). ``ObjectStorage`` takes any fsspec URL (``s3://bucket/prefix`` for an
S3-compatible object store, with its ``storage_options``). Asset code sees only
:class:`StorageResource`; writes are atomic in both (see :mod:`dt_assets.fsio`).

From the environment (:func:`storage_from_env`, what the Definitions use):

- ``$CALOTWIN_STORAGE_URL``: a non-local fsspec URL such as ``s3://bucket/calotwin`` selects
  ``ObjectStorage``; a local path (or ``file://`` URL) moves the ``LocalStorage`` root.
- ``$CALOTWIN_STORAGE_OPTIONS``: a JSON object of fsspec options for that URL, e.g.
  ``{"endpoint_url": "http://minio:9000"}`` for an S3-compatible store that is not AWS.

Credentials are best left out of both: s3fs (botocore) reads ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (or ``~/.aws``, an instance role, ...) itself. The endpoint is passed
explicitly as ``endpoint_url``; botocore's ``AWS_ENDPOINT_URL`` also works when it is not.
"""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from dt_assets.fsio import atomic_file, url_to_fs
from dt_assets.home import calotwin_home

STORAGE_URL_ENV = "CALOTWIN_STORAGE_URL"
STORAGE_OPTIONS_ENV = "CALOTWIN_STORAGE_OPTIONS"


class StorageResource(ConfigurableResource):
    """A root location with a fixed layout: ``data/raw/<run>.zarr``, ``data/runs/<run>.json``,
    ``data/preprocessed/<run>.zarr``, ``data/training_sets/<key>.json``, ``checkpoints/<training>/``,
    ``validation/`` (reference and generated samples), ``reports/``, and the landing area: ``landing/``,
    ``data/landed/<file-key>/`` (accepted) and ``quarantine/`` (refused)."""

    @abstractmethod
    def root_url(self) -> str:
        """The root as a local path or fsspec URL."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """fsspec storage options for URLs under the root."""

    def url(self, *parts: str) -> str:
        """The URL of a path under the root."""
        return "/".join([self.root_url().rstrip("/"), *(p.strip("/") for p in parts)])

    def raw_showers_url(self, run_key: str) -> str:
        return self.url("data", "raw", f"{run_key}.zarr")

    def run_spec_url(self, run_key: str) -> str:
        return self.url("data", "runs", f"{run_key}.json")

    def preprocessed_url(self, run_key: str) -> str:
        return self.url("data", "preprocessed", f"{run_key}.zarr")

    def training_set_url(self, key: str) -> str:
        """A training set's manifest, named by its content (``training_set`` hands the URL on in its metadata)."""
        return self.url("data", "training_sets", f"{key}.json")

    def checkpoint_dir(self, training_key: str) -> str:
        return self.url("checkpoints", training_key)

    def validation_url(self, *parts: str) -> str:
        """Validation samples: ``validation/mc_reference/<key>.zarr``, ``validation/generated/<model>-...zarr``."""
        return self.url("validation", *parts)

    def report_url(self, *parts: str) -> str:
        """Validation reports: ``reports/<model>/v<version>/<reference>-<settings>/report.html``."""
        return self.url("reports", *parts)

    def landing_url(self) -> str:
        """Where new simulation files are dropped (the landing sensor watches it)."""
        return self.url("landing")

    def landed_url(self) -> str:
        """Accepted landing files, one folder per checksum key: ``data/landed/<file-key>/<name>``."""
        return self.url("data", "landed")

    def quarantine_url(self) -> str:
        """Refused landing files, each with a ``.json`` sidecar naming the reason (never deleted)."""
        return self.url("quarantine")

    def exists(self, url: str) -> bool:
        fs, path = url_to_fs(url, self.options())
        return fs.exists(path)

    def remove(self, url: str) -> None:
        """Delete a folder (and what it holds) or a file of derived data, e.g. a trial's checkpoints.
        Never used on inputs: refused files are quarantined, never deleted."""
        fs, path = url_to_fs(url, self.options())
        fs.rm(path, recursive=True)

    def write_json(self, url: str, payload: Any) -> None:
        """Write a JSON document atomically."""
        with atomic_file(url, self.options(), mode="wb") as handle:
            handle.write(json.dumps(payload, indent=2, sort_keys=True).encode())

    def read_json(self, url: str) -> Any:
        fs, path = url_to_fs(url, self.options())
        with fs.open(path, "rb") as handle:
            return json.loads(handle.read())


class LocalStorage(StorageResource):
    """A folder on the local file system (default: the data home)."""

    root: str | None = Field(
        default=None,
        description="Folder that holds data/, landing/, quarantine/ ...; empty means $CALOTWIN_HOME "
        "(default .calotwin in the working directory).",
    )

    def root_url(self) -> str:
        return str(self.root) if self.root else str(calotwin_home())

    def options(self) -> dict[str, Any]:
        return {}


class ObjectStorage(StorageResource):
    """Any fsspec URL, e.g. an S3-compatible object store: ``s3://bucket/calotwin``."""

    url_prefix: str = Field(description="Root URL, e.g. s3://bucket/calotwin or gcs://bucket/prefix.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options, e.g. {'endpoint_url': 'http://127.0.0.1:9000'} for an S3-compatible store "
        "(credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment, or 'key' and 'secret').",
    )

    def root_url(self) -> str:
        return self.url_prefix

    def options(self) -> dict[str, Any]:
        return dict(self.storage_options)


def storage_options_from_env() -> dict[str, Any]:
    """``$CALOTWIN_STORAGE_OPTIONS`` as a dict (empty when unset); anything but a JSON object is a ValueError."""
    text = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"${STORAGE_OPTIONS_ENV} is not valid JSON ({exc})") from None  # no echo: it may hold a secret
    if not isinstance(options, dict):
        raise ValueError(
            f"${STORAGE_OPTIONS_ENV} must be a JSON object of fsspec options, e.g. "
            f'{{"endpoint_url": "http://127.0.0.1:9000"}}, not a JSON {type(options).__name__}'
        )
    return options


def storage_from_env() -> StorageResource:
    """``ObjectStorage`` (with ``$CALOTWIN_STORAGE_OPTIONS``) when ``$CALOTWIN_STORAGE_URL`` names a non-local
    URL, else ``LocalStorage``. A malformed ``$CALOTWIN_STORAGE_OPTIONS`` raises ValueError naming it."""
    url = os.environ.get(STORAGE_URL_ENV, "")
    options = storage_options_from_env()
    if url and "://" in url and not url.startswith("file://"):
        return ObjectStorage(url_prefix=url, storage_options=options)
    return LocalStorage(root=url.removeprefix("file://") or None)
