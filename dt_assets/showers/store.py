"""Shower datasets on disk: zarr v3 stores, chunked by event, compressed, written atomically.

``url`` is a local path or any fsspec URL (``file://``, ``s3://bucket/key.zarr``, ``memory://``).
Writes never leave a half store that looks complete:

- on a local file system the store is written under a temporary name beside its destination and
  renamed into place once complete (a rename is atomic);
- on other file systems (object stores have no atomic rename) the store's ``calotwin_write``
  attribute says ``in-progress`` until the last chunk is written, then ``complete``; replacing a
  store there removes the old one first, so a crash during a replacement leaves a refused,
  incomplete store rather than the old one.

:func:`read_showers` refuses a store whose write did not finish, or that lacks chunks (a partial
upload), with a :class:`ShowerDataError` that says so.

Object stores (S3 and S3-compatible ones through s3fs, GCS, Azure) differ from a file system in
ways this module takes care of: there are no directories (a "folder" exists while objects under
its prefix do; nothing is created for it), no atomic rename (single files are written straight to
their key and appear only once complete; folders are moved by copying every object, then deleting
the sources: :func:`move`), and other writers are not seen through a cached listing (fsspec caches
listings forever by default; :func:`fs_options` turns that off, so a long-lived process such as
the landing sensor sees new objects).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import fsspec
import xarray as xr
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec

from .errors import ShowerDataError
from .schema import DEPOSIT, EVENTS_PER_CHUNK, validate_showers

WRITE_STATE = "calotwin_write"
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


def shower_encoding(ds: xr.Dataset, chunked: tuple[str, ...] = (DEPOSIT,)) -> dict[str, dict[str, Any]]:
    """Zarr encoding: per-event variables in chunks of events; ``chunked`` cell arrays compressed."""
    encoding: dict[str, dict[str, Any]] = {}
    for key, variable in ds.data_vars.items():
        name = str(key)
        if name in chunked:
            encoding[name] = {
                "chunks": (EVENTS_PER_CHUNK, *variable.shape[1:]),
                # showers are sparse: byte-shuffled zstd packs them about 50x, at about 700 MB/s per core
                # (bench/README.md has the codec comparison)
                "compressors": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
            }
        elif variable.dims == ("event",):
            encoding[name] = {"chunks": (EVENTS_PER_CHUNK * 64,)}
    return encoding


def write_showers(
    data: xr.Dataset | Iterable[xr.Dataset],
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    """Write a shower dataset (or a stream of blocks of one) to a zarr v3 store at ``url``.

    Each block is validated before it is written. ``attrs`` are added to the store's attributes
    (for provenance known only at the end, such as a checksum). Returns ``url``.
    """
    return write_blocks(data, url, storage_options, overwrite, attrs, validate=validate_showers)


def write_blocks(
    data: xr.Dataset | Iterable[xr.Dataset],
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    attrs: Mapping[str, Any] | None = None,
    validate: Callable[..., None] | None = None,
    encoding: Callable[[xr.Dataset], dict[str, dict[str, Any]]] = shower_encoding,
) -> str:
    """Write a dataset, or a stream of blocks along ``event``, atomically to a zarr v3 store.

    ``validate(block, source, first_event=...)`` runs on each block before it is written;
    ``encoding(first_block)`` gives the zarr encoding.
    """
    fs, path = url_to_fs(url, storage_options)
    if fs.exists(path) and not overwrite:
        raise FileExistsError(f"{url}: a store already exists there (pass overwrite=True to replace it)")
    blocks = [data] if isinstance(data, xr.Dataset) else data
    writer = _BlockWriter(url, attrs, validate, encoding)
    if isinstance(fs, LocalFileSystem):
        parent, name = path.rsplit("/", 1) if "/" in path else (".", path)
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            writer.write(blocks, tmp, {})
            _replace(fs, tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)
    else:
        if fs.exists(path):
            fs.rm(path, recursive=True)
        writer.write(blocks, url, fs_options(url, storage_options))
    return url


class _BlockWriter:
    def __init__(
        self,
        source: str,
        attrs: Mapping[str, Any] | None,
        validate: Callable[..., None] | None,
        encoding: Callable[[xr.Dataset], dict[str, dict[str, Any]]],
    ):
        self.source, self.attrs, self.validate, self.encoding = source, attrs, validate, encoding

    def write(self, blocks: Iterable[xr.Dataset], target: str, storage_options: Mapping[str, Any]) -> None:
        n_events = 0
        so = dict(storage_options) or None
        first_attrs: dict[str, Any] = {}
        for block in blocks:
            if self.validate is not None:
                self.validate(block, self.source, first_event=n_events)
            block = block.copy()
            if n_events == 0:
                block.attrs[WRITE_STATE] = "in-progress"
                first_attrs = dict(block.attrs)
                block.to_zarr(
                    target,
                    mode="w",
                    zarr_format=3,
                    consolidated=False,
                    encoding=self.encoding(block),
                    write_empty_chunks=True,
                    storage_options=so,
                )
            elif block.sizes["event"]:
                block.attrs = first_attrs  # an append rewrites the store's attributes: keep the first block's
                block.to_zarr(
                    target,
                    append_dim="event",
                    zarr_format=3,
                    consolidated=False,
                    write_empty_chunks=True,
                    storage_options=so,
                )
            n_events += block.sizes["event"]
        if n_events == 0:
            raise ShowerDataError(self.source, "nothing to write: no events")
        group = zarr.open_group(target, mode="r+", storage_options=so)
        group.attrs.update({**dict(self.attrs or {}), "n_events": n_events, WRITE_STATE: "complete"})


def _replace(fs: LocalFileSystem, tmp: str, path: str) -> None:
    """Move a finished store into place; an existing store is moved aside first, then removed."""
    old = None
    if fs.exists(path):
        old = f"{path}.old-{uuid.uuid4().hex[:12]}"
        fs.mv(path, old, recursive=True)
    fs.mv(tmp, path, recursive=True)
    if old:
        fs.rm(old, recursive=True)


def open_store(url: str, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open a store lazily (nothing is read but metadata) after checking that it is complete."""
    so = fs_options(url, storage_options) or None
    fs, path = url_to_fs(url, storage_options)
    if not fs.exists(path):
        raise ShowerDataError(url, "no such store")
    try:
        group = zarr.open_group(url, mode="r", storage_options=so)
    except Exception as exc:  # zarr raises several types for a store that is not a zarr group
        raise ShowerDataError(url, f"not a readable zarr store ({type(exc).__name__}: {exc})") from None
    state = group.attrs.get(WRITE_STATE)
    if state is not None and state != "complete":
        raise ShowerDataError(url, f"incomplete store: its write did not finish ({WRITE_STATE}={state!r})")
    for name, array in group.arrays():
        if array.nchunks_initialized != array.nchunks:
            raise ShowerDataError(
                url, f"incomplete store: array {name!r} has {array.nchunks_initialized} of {array.nchunks} chunks"
            )
    try:
        return xr.open_dataset(
            url,
            engine="zarr",
            chunks=None,
            cache=False,
            backend_kwargs={"consolidated": False, "storage_options": so, "zarr_format": 3},
        )
    except Exception as exc:
        raise ShowerDataError(url, f"not a shower dataset ({type(exc).__name__}: {exc})") from None


def read_showers(url: str, storage_options: Mapping[str, Any] | None = None, validate: bool = True) -> xr.Dataset:
    """Open a shower store as a lazily loaded ``xarray.Dataset``.

    With ``validate`` (the default) the whole store is checked against the schema, reading the
    deposits block by block; bad data raises :class:`ShowerDataError`.
    """
    ds = open_store(url, storage_options)
    if validate:
        validate_showers(ds, url)
    return ds


def iter_blocks(ds: xr.Dataset, block_events: int = EVENTS_PER_CHUNK) -> Iterator[xr.Dataset]:
    """Load a (lazy) dataset in blocks of events, so memory stays bounded by one block."""
    for start in range(0, ds.sizes["event"], block_events):
        yield ds.isel(event=slice(start, start + block_events)).load()


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
