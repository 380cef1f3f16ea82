"""File-system helpers over fsspec: local paths and any fsspec URL (``file://``, ``s3://bucket/key``, ``memory://``).

Object stores (S3 and S3-compatible ones through s3fs, GCS, Azure) differ from a file system in
ways these helpers take care of: there are no directories (a "folder" exists while objects under
its prefix do; nothing is created for it), no atomic rename (single files are written straight to
their key and appear only once complete: :func:`atomic_file`; folders are moved by copying every
object, then deleting the sources: :func:`move`), and other writers are not seen through a cached
listing (fsspec caches listings forever by default; :func:`fs_options` turns that off, so a
long-lived process such as the landing sensor sees new objects).

Nothing here knows about showers or Dagster; the zarr shower stores are :mod:`dt_assets.showers.store`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec

#: fsspec protocols of object stores: a key is written whole or not at all, and nothing is renamed
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"})
_LOCAL_PROTOCOLS = frozenset({"file", "local"})


def fs_options(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options CaloTwin opens ``url`` with: ``storage_options`` and, for any remote file
    system, ``use_listings_cache=False`` unless given (a cached listing never shows other writers' objects)."""
    options = dict(storage_options or {})
    if fsspec.utils.get_protocol(str(url)) not in _LOCAL_PROTOCOLS:
        options.setdefault("use_listings_cache", False)
    return options


def url_to_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system and the path within it for a local path or URL (see :func:`fs_options`)."""
    return fsspec.core.url_to_fs(str(url), **fs_options(url, storage_options))


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is an object store (no directories, no rename, whole-object writes)."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & OBJECT_STORE_PROTOCOLS)


def store_size_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """Bytes on disk (or in the object store) of a store."""
    fs, path = url_to_fs(url, storage_options)
    return int(fs.du(path, total=True)) if fs.isdir(path) else int(fs.size(path))


def sha256_file(url: str, storage_options: Mapping[str, Any] | None = None, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    fs, path = url_to_fs(url, storage_options)
    with fs.open(path, "rb") as handle:
        return sha256_stream(handle, chunk_bytes)


def sha256_stream(handle: Any, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of what an open binary file yields from its position to the end, read in chunks."""
    digest = hashlib.sha256()
    while chunk := handle.read(chunk_bytes):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_json(payload: Any, length: int = 64) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``payload`` as sorted-key JSON (a stable key)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_file(url: str, storage_options: Mapping[str, Any] | None = None, mode: str = "wb") -> Iterator[Any]:
    """Open ``url`` for writing so that readers see either nothing or the whole file (the old one until then).

    On an object store the file is written straight to its key with the commit deferred
    (``autocommit=False``): the object appears, whole, only once the block exits without an error;
    an error discards the upload. Elsewhere writes go to a temporary name beside the target, which
    is renamed into place once the block exits (removed after an error).
    """
    fs, path = url_to_fs(url, storage_options)
    if is_object_store(fs):
        raw = fs.open(path, "wb", autocommit=False)
        try:
            with raw if "b" in mode else io.TextIOWrapper(raw, encoding="utf-8") as handle:
                yield handle
        except BaseException:
            raw.discard()
            raise
        raw.commit()
        return
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open(tmp, mode) as handle:
            yield handle
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def move(fs: fsspec.AbstractFileSystem, source: str, target: str, recursive: bool = False) -> None:
    """Move a file, or with ``recursive`` a folder, to a ``target`` that does not exist yet.

    On an object store a folder is every object under its prefix: each is copied to the same relative
    key under ``target``, and the sources are deleted only once every copy succeeded (a failed copy
    leaves the source whole and removes what was copied). fsspec's own ``mv`` of a prefix nests or
    drops objects there. Elsewhere this is ``fs.mv``.
    """
    if not is_object_store(fs):
        fs.mv(source, target, recursive=recursive)
        return
    source, target = source.rstrip("/"), target.rstrip("/")
    if recursive and fs.isdir(source):
        sources = sorted(fs.find(source))
        targets = [target + name[len(source) :] for name in sources]
    else:
        sources, targets = [source], [target]
    if not sources:
        raise FileNotFoundError(source)
    try:
        fs.copy(sources, targets)
    except BaseException:
        with contextlib.suppress(Exception):
            if copied := [t for t in targets if fs.exists(t)]:
                fs.rm(copied)
        raise
    fs.rm(sources)
