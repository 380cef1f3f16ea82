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

The file-system helpers these writes build on (:func:`~dt_assets.fsio.url_to_fs`,
:func:`~dt_assets.fsio.fs_options`, what object stores need) are in :mod:`dt_assets.fsio`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import xarray as xr
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec

from ..fsio import fs_options, url_to_fs
from .errors import ShowerDataError
from .schema import DEPOSIT, EVENTS_PER_CHUNK, validate_showers

WRITE_STATE = "calotwin_write"


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
