"""The landing's three areas (landing, accepted, quarantine: local folders or fsspec URL prefixes) and the moves
between them.

:class:`Area` is one folder and its file system; :class:`Entry`, :class:`Accepted` and :class:`Quarantined`
describe an entry before and after it is moved. :func:`accept` moves a good entry to
``<accepted>/<key>/<name>``, :func:`quarantine` a bad one to ``<quarantine>/<UTC time>-<sanitized name>`` with a
JSON sidecar beside it; both move its ``.done`` marker along and never overwrite anything.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..fsio import atomic_file, is_object_store, move, sha256_stream, url_to_fs
from ..runs import FileSpec
from .checks import sanitized

#: Names of files still being written by common tools (ignored by :meth:`~dt_assets.landing.Landing.scan`).
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")
#: ``<name>.done`` next to an entry says its upload is complete.
MARKER_SUFFIX = ".done"
_MAX_SIDECAR_BYTES = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One candidate at the top level of the landing area."""

    name: str  # name relative to the landing root, exactly as listed
    url: str  # full path or URL, as listed (never rebuilt from the name)
    size: int  # bytes (a directory: the sum over its files)
    mtime: float  # seconds since the epoch (a directory: its newest file's); 0.0 when the store does not say
    is_dir: bool
    is_link: bool  # a symlink (local file system only)
    has_marker: bool  # a "<name>.done" marker sits next to it


@dataclass(frozen=True)
class Accepted:
    """An entry that passed every check, now in ``<accepted>/<key>/``."""

    name: str  # original name in the landing area
    spec: FileSpec  # url: where it now lives; sha256, layout, geometry (preset name) and particle
    n_events: int
    duplicate: bool  # the same bytes (same key) were accepted before; this copy is kept beside them

    @property
    def key(self) -> str:
        return self.spec.key


@dataclass(frozen=True)
class Quarantined:
    """An entry that failed a check, now in the quarantine area with a JSON sidecar beside it."""

    name: str  # original name, exactly as it was
    reason: str  # a sentence naming the problem
    check: str  # one of CHECKS
    url: str  # where the quarantined bytes (or the symlink itself) now are
    sidecar_url: str
    sha256: str | None  # of a regular file's bytes; None for directories and symlinks
    size: int


@dataclass(frozen=True)
class Area:
    """A folder (local path or URL prefix) and the file system it lives on."""

    url: str
    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def at(cls, url: str, storage_options: Mapping[str, Any] | None) -> Area:
        fs, root = url_to_fs(url, storage_options)
        root = root.rstrip("/") or root
        return cls(root if isinstance(fs, LocalFileSystem) else url.rstrip("/"), fs, root)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def url_of(self, path: str) -> str:
        """The URL of a path in this area (the listed path itself on a local file system)."""
        if self.local:
            return path
        if path.startswith(self.root + "/"):
            return self.url + path[len(self.root) :]
        return self.fs.unstrip_protocol(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path) if self.local else self.fs.exists(path)


@dataclass
class State:
    """What an entry is, at the moment it is processed."""

    kind: str  # "file" | "directory" | "symlink"
    is_dir: bool  # the entry, or the target of an inside symlink, is a directory
    size: int
    link_target: str | None = None
    outside_link: str | None = None  # a symlink (the entry or one inside it) leading out of the landing area


# ----------------------------------------------------------------------------------------- moves


def accept(landing: Area, accepted: Area, entry: Entry, path: str, spec: FileSpec, n_events: int) -> Accepted:
    """Move a good entry (at ``path`` in ``landing``) to ``<accepted>/<key>/<name>`` (``<name>.<n>`` when taken)."""
    area = accepted
    folder = area.path(spec.key)
    duplicate = area.exists(folder)
    _makedirs(area, folder)
    target, n = area.path(spec.key, entry.name), 0
    while area.exists(target) or area.exists(target + MARKER_SUFFIX):
        n += 1
        target = area.path(spec.key, f"{entry.name}.{n}")
    move_with_marker(landing, path, target, spec.layout == "zarr")
    moved = FileSpec(
        url=area.url_of(target),
        sha256=spec.sha256,
        layout=spec.layout,
        geometry=spec.geometry,
        particle=spec.particle,
    )
    return Accepted(name=entry.name, spec=moved, n_events=n_events, duplicate=duplicate)


def quarantine(
    landing: Area,
    quarantine_area: Area,
    entry: Entry,
    path: str,
    state: State,
    check: str,
    reason: str,
    storage_options: Mapping[str, Any],
) -> Quarantined:
    """Move a bad entry (at ``path`` in ``landing``) to the quarantine area with a JSON sidecar that says
    what is wrong (``check``, ``reason``), where it came from and its checksum."""
    area = quarantine_area
    _makedirs(area, area.root)
    stem = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{sanitized(entry.name)}"
    target, n = area.path(stem), 0
    while area.exists(target) or area.exists(target + ".json") or area.exists(target + MARKER_SUFFIX):
        n += 1
        target = area.path(f"{stem}-{n}")
    digest = file_sha256(landing.fs, path) if state.kind == "file" else None
    move_with_marker(landing, path, target, state.kind == "directory")
    sidecar = target + ".json"
    record = {
        "original_name": entry.name,
        "reason": reason,
        "check": check,
        "detected_at": datetime.now(UTC).isoformat(),
        "size": state.size,
        "sha256": digest,
        "source_url": entry.url,
        "kind": state.kind,
        "link_target": state.link_target,
        "url": area.url_of(target),
    }
    with atomic_file(area.url_of(sidecar), storage_options) as handle:
        handle.write(json.dumps(record, indent=2).encode())
    return Quarantined(
        name=entry.name,
        reason=reason,
        check=check,
        url=area.url_of(target),
        sidecar_url=area.url_of(sidecar),
        sha256=digest,
        size=state.size,
    )


def move_with_marker(landing: Area, path: str, target: str, is_dir: bool) -> None:
    """Move an entry of the landing area to ``target``, and its ``.done`` marker beside it when there is one."""
    marker = path + MARKER_SUFFIX
    _move(landing, path, target, is_dir)
    if landing.exists(marker):
        _move(landing, marker, target + MARKER_SUFFIX, False)


# -------------------------------------------------------------------------------------- listings


def landed_keys(accepted: Area) -> set[str]:
    """The run keys that have a folder in the accepted area (one listing)."""
    area = accepted
    try:
        listing = area.fs.ls(area.root, detail=False)
    except FileNotFoundError:
        return set()
    return {name for p in listing if (name := str(p).rstrip("/").rsplit("/", 1)[-1]).startswith("file-")}


def landed_file(accepted: Area, key: str) -> str | None:
    """The URL of the first data file accepted under ``key`` (markers aside), or None."""
    area = accepted
    try:
        listing = sorted(str(p).rstrip("/") for p in area.fs.ls(area.path(key), detail=False))
    except FileNotFoundError:
        return None
    files = [p for p in listing if not p.endswith(MARKER_SUFFIX) and p != area.path(key)]
    return area.url_of(files[0]) if files else None


def quarantined(quarantine_area: Area) -> list[dict[str, Any]]:
    """The sidecars in the quarantine area, newest first, each with its ``sidecar_url`` added."""
    area = quarantine_area
    try:
        listing = area.fs.ls(area.root, detail=True)
    except FileNotFoundError:
        return []
    names = {str(info["name"]).rstrip("/").rsplit("/", 1)[-1]: info for info in listing}
    records = []
    for name, info in names.items():
        # a sidecar is "<item>.json"; a quarantined file that is itself "<x>.json" has its own sidecar
        if not name.endswith(".json") or name + ".json" in names or info.get("type") == "directory":
            continue
        if int(info.get("size") or 0) > _MAX_SIDECAR_BYTES:
            continue
        path = area.path(name)
        try:
            with area.fs.open(path, "rb") as handle:
                record = json.loads(handle.read())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and {"original_name", "check", "reason"} <= record.keys():
            records.append({**record, "sidecar_url": area.url_of(path)})
    return sorted(records, key=lambda r: (str(r.get("detected_at", "")), r["sidecar_url"]), reverse=True)


# --------------------------------------------------------------------------------------- helpers


def temporary(name: str) -> bool:
    """A name still being written (``run.h5.part``): observed, never ready."""
    return not name.startswith(".") and name.lower().endswith(TEMP_SUFFIXES)


def ignored(name: str) -> bool:
    """Names scan() neither processes nor observes: temporary files, markers, hidden files."""
    if name.startswith(".."):
        return False  # unsafe, not hidden: it goes to quarantine
    lower = name.lower()
    return name.startswith(".") or lower.endswith(TEMP_SUFFIXES) or lower.endswith(MARKER_SUFFIX)


def info_mtime(info: Mapping[str, Any]) -> float:
    """Modification time in seconds since the epoch from an fsspec info dict (0.0 when it does not say)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return 0.0


def local_tree(path: str) -> tuple[int, float]:
    """Total size and newest mtime of the files under a local directory (links not followed)."""
    size, newest = 0, None
    for folder, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            size += st.st_size
            newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
    return size, float(newest if newest is not None else os.stat(path).st_mtime)


def local_links(path: str) -> Iterator[str]:
    """Symlinks (to files or directories) under a local directory."""
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            if os.path.islink(os.path.join(folder, name)):
                yield os.path.join(folder, name)


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    """The protocol names of a file system (``("file", "local")``, ``("memory",)``, ...)."""
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def file_sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """SHA-256 of a file's bytes by path (no URL parsing, so any listed name works)."""
    with open(path, "rb") if isinstance(fs, LocalFileSystem) else fs.open(path, "rb") as handle:
        return sha256_stream(handle)


def _makedirs(area: Area, path: str) -> None:
    if area.local:
        os.makedirs(path, exist_ok=True)
    elif not is_object_store(area.fs):  # an object store has no folders (and s3fs would create a missing bucket)
        area.fs.makedirs(path, exist_ok=True)


def _move(area: Area, source: str, target: str, is_dir: bool) -> None:
    """Move a file, directory or symlink (the link itself) to a free target."""
    if area.local:
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(source, target)  # another file system: copy, then remove the source (links stay links)
    else:
        move(area.fs, source, target, recursive=is_dir)  # an object store: copy every object, then delete
