"""The landing area: shower files dropped by producers, checked, then accepted (by checksum) or quarantined.

Producers put 3DGAN or CaloChallenge HDF5 files (``.h5``, ``.hdf5``, ``.hdf``) or zarr stores
(directories named ``*.zarr``) at the top level of a landing folder or fsspec URL prefix.
:meth:`Landing.scan` says which entries are ready: those with a ``<name>.done`` marker, or whose
size and modification time did not change since the last scan (the caller keeps the observations).
:meth:`Landing.process` checks one entry completely and moves it:

- good data to ``<accepted>/<key>/<name>``, ``key = file-<sha256[:12]>`` (the run key of
  :class:`~dt_assets.runs.FileSpec`), so the same bytes under any name are one run;
- anything else to ``<quarantine>/<UTC time>-<sanitized name>`` with a JSON sidecar beside it that
  says what is wrong (``check`` code and a sentence), where it came from and its checksum.

Nothing is ever deleted or overwritten: a bad file is kept for inspection, a duplicate is kept beside
the first copy. A symlink is quarantined (the link itself is moved): one that leads out of the landing
area without its target ever being read (``symlink_outside``), one to a file inside it because that
file is processed on its own and the link would dangle (``symlink``).

Units: primary energy in GeV, angles in degrees in the checks and messages
(radians in the data), deposits in MeV in the data and GeV in messages.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from .fsio import atomic_file, is_object_store, move, sha256_stream, url_to_fs
from .isolation import ChildError, ChildFailedError, Limits, run_isolated
from .physics.geometry import GEOMETRIES, get_geometry
from .physics.particles import particle_name, pdg_code
from .runs import FileSpec, zarr_checksum
from .showers.errors import ShowerDataError, UnsafeHdf5Error
from .showers.hdf5 import hdf5_blocks
from .showers.schema import DEPOSIT, dataset_geometry, validate_showers
from .showers.store import iter_blocks, read_showers
from .simulation import ENERGY_RANGE_GEV, THETA_RANGE_DEG

#: Names of files still being written by common tools (ignored by :meth:`Landing.scan`).
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")
#: ``<name>.done`` next to an entry says its upload is complete.
MARKER_SUFFIX = ".done"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIX = ".zarr"
#: Check codes of :class:`Quarantined`.
CHECKS = (
    "unsafe_name",
    "symlink_outside",
    "symlink",
    "empty",
    "unsupported_type",
    "unreadable",
    "bad_content",
    "out_of_range",
    "unsafe_hdf5",
    "no_energy",
    "bad_response",
    "reader_crashed",
    "reader_out_of_memory",
    "reader_timeout",
)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_UNREADABLE_HDF5 = ("not a readable HDF5 file, or a truncated one", "truncated or corrupt")
_THETA_TOLERANCE_RAD = 1e-6
_MAX_NAME = 255
_MAX_SANITIZED = 120
_MAX_SIDECAR_BYTES = 1 << 20


def safe_name(name: str) -> bool:
    """Whether ``name`` is a plain file name: letters, digits and ``. _ + -``, starting with a letter or
    digit, no ``..``, at most 255 characters (so no path separators, control characters or newlines)."""
    return len(name) <= _MAX_NAME and ".." not in name and _SAFE_NAME.fullmatch(name) is not None


def sanitized(name: str) -> str:
    """A safe stand-in for ``name``: characters outside ``[A-Za-z0-9._+-]`` become ``_``, runs of dots
    collapse to one, at most 120 characters (never empty)."""
    clean = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._+-]", "_", name))
    return clean[:_MAX_SANITIZED] or "_"


@dataclass(frozen=True)
class LandingChecks:
    """What a landed file must satisfy beyond the shower schema, and what to assume when it does not say."""

    #: primary energies must lie inside (GeV, inclusive)
    energy_range_gev: tuple[float, float] = ENERGY_RANGE_GEV
    #: incidence angles must lie inside (degrees, 90 = perpendicular to the face; 1e-6 rad tolerance)
    theta_range_deg: tuple[float, float] = THETA_RANGE_DEG
    #: particle recorded for files that do not say (canonical name after validation)
    particle: str = "e-"
    #: geometry preset the files must fit; None: the preset matching each file's grid
    geometry: str | None = None
    #: the largest fraction of showers that may carry no visible energy at all
    max_empty_fraction: float = 0.01
    #: the mean visible fraction (E_sum / E_p over the showers) must lie within these multiples of the
    #: geometry's sampling fraction (a wide window: it catches empty files, unit mix-ups, total instead of
    #: visible energy, not a different calorimeter)
    response_window: tuple[float, float] = (0.1, 10.0)
    #: each file is read in a child process that may use this much memory (MB) and time (s)
    reader_memory_mb: int = 4096
    reader_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "energy_range_gev", _range(self.energy_range_gev, "energy_range_gev", 0.0, math.inf))
        if self.energy_range_gev[0] <= 0:
            raise ValueError(f"energy_range_gev must be positive, got {self.energy_range_gev}")
        object.__setattr__(self, "theta_range_deg", _range(self.theta_range_deg, "theta_range_deg", 0.0, 180.0))
        try:
            object.__setattr__(self, "particle", particle_name(pdg_code(self.particle)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"particle: {exc}") from None
        if self.geometry is not None:
            try:
                get_geometry(self.geometry)
            except ValueError as exc:
                raise ValueError(f"geometry: {exc}") from None
        if not (isinstance(self.max_empty_fraction, int | float) and 0 <= self.max_empty_fraction <= 1):
            raise ValueError(f"max_empty_fraction must lie within [0, 1], got {self.max_empty_fraction!r}")
        window = _range(self.response_window, "response_window", 0.0, math.inf)
        if window[0] <= 0:
            raise ValueError(f"response_window must be positive multiples, got {self.response_window}")
        object.__setattr__(self, "response_window", window)
        try:
            self.reader_limits()
        except ValueError as exc:
            raise ValueError(f"reader_{exc}") from None

    def reader_limits(self) -> Limits:
        """The memory and time each file's reader may use."""
        return Limits(memory_mb=self.reader_memory_mb, timeout_s=self.reader_timeout_s)


def _range(value: Sequence[float], field: str, low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        raise ValueError(f"{field} must be an ordered (low, high) range, got {value!r}")
    if a < low or b > high:
        raise ValueError(f"{field} must lie within [{low:g}, {high:g}], got {value!r}")
    return a, b


DEFAULT_CHECKS = LandingChecks()


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


class _RefusedError(Exception):
    """An entry fails a check (internal: turned into a :class:`Quarantined`)."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check, self.reason = check, reason


@dataclass(frozen=True)
class _Area:
    """A folder (local path or URL prefix) and the file system it lives on."""

    url: str
    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def at(cls, url: str, storage_options: Mapping[str, Any] | None) -> _Area:
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
class _State:
    """What an entry is, at the moment it is processed."""

    kind: str  # "file" | "directory" | "symlink"
    is_dir: bool  # the entry, or the target of an inside symlink, is a directory
    size: int
    link_target: str | None = None
    outside_link: str | None = None  # a symlink (the entry or one inside it) leading out of the landing area


class Landing:
    """A landing area with its accepted and quarantine areas (local folders or fsspec URL prefixes).

    All three must be on the same kind of file system, since entries are moved between them.
    """

    def __init__(
        self,
        landing_url: str,
        accepted_url: str,
        quarantine_url: str,
        storage_options: Mapping[str, Any] | None = None,
        checks: LandingChecks = DEFAULT_CHECKS,
    ) -> None:
        self.storage_options = dict(storage_options or {})
        self.checks = checks
        self.landing = _Area.at(landing_url, self.storage_options)
        self.accepted = _Area.at(accepted_url, self.storage_options)
        self.quarantine = _Area.at(quarantine_url, self.storage_options)
        for area in (self.accepted, self.quarantine):
            if type(area.fs) is not type(self.landing.fs):
                raise ValueError(
                    f"{area.url}: must be on the same file system as the landing area {landing_url} "
                    f"(entries are moved, not copied)"
                )
        self._real_root = os.path.realpath(self.landing.root) if self.landing.local else None

    # --- scanning -------------------------------------------------------------------------------
    def scan(self, previous: Mapping[str, Sequence[float]] | None = None) -> tuple[list[Entry], dict[str, list[float]]]:
        """Entries ready to process, and the observations (``{name: [size, mtime]}``) of those still settling.

        Ready: a ``.done`` marker is present, the entry was renamed from a temporary name that the last
        scan saw (``run.h5.part`` then ``run.h5``: the upload is complete), or size and mtime are unchanged
        since ``previous`` (the last scan's observations, which the caller keeps, e.g. in a sensor cursor).
        Never ready: names ending in :data:`TEMP_SUFFIXES` (observed, so that their rename is recognised),
        and, neither ready nor observed, marker files themselves and hidden names starting with a single
        ``.`` (e.g. rsync's ``.name.XYZ`` temp files); names starting with ``..`` are unsafe, not hidden
        (they settle like any file, so their sidecar records the complete upload). Symlinks are ready at
        once (made in one step; they go to quarantine). A landing area that does not exist (yet) is empty.
        Entries are sorted by name.
        """
        previous = previous or {}
        ready: list[Entry] = []
        settling: dict[str, list[float]] = {}
        for entry in self._entries():
            observed = [float(entry.size), float(entry.mtime)]
            if _temporary(entry.name):
                settling[entry.name] = observed
                continue
            if _ignored(entry.name):
                continue
            before = previous.get(entry.name)
            stable = before is not None and [float(v) for v in before] == observed
            renamed = any(entry.name + suffix in previous for suffix in TEMP_SUFFIXES)
            if entry.has_marker or entry.is_link or stable or renamed:
                ready.append(entry)
            else:
                settling[entry.name] = observed
        return ready, settling

    def landed_keys(self) -> set[str]:
        """The run keys that have a folder in the accepted area (one listing)."""
        area = self.accepted
        try:
            listing = area.fs.ls(area.root, detail=False)
        except FileNotFoundError:
            return set()
        return {name for p in listing if (name := str(p).rstrip("/").rsplit("/", 1)[-1]).startswith("file-")}

    def landed_file(self, key: str) -> str | None:
        """The URL of the first data file accepted under ``key`` (markers aside), or None."""
        area = self.accepted
        try:
            listing = sorted(str(p).rstrip("/") for p in area.fs.ls(area.path(key), detail=False))
        except FileNotFoundError:
            return None
        files = [p for p in listing if not p.endswith(MARKER_SUFFIX) and p != area.path(key)]
        return area.url_of(files[0]) if files else None

    def _entries(self) -> list[Entry]:
        area = self.landing
        try:
            listing = area.fs.ls(area.root, detail=True)
        except FileNotFoundError:
            return []
        items = []
        for info in listing:
            path = str(info["name"]).rstrip("/")
            name = path.rsplit("/", 1)[-1]
            if not name or path == area.root:
                continue
            items.append((name, path, info))
        names = {name for name, _, _ in items}
        entries = []
        for name, path, info in items:
            is_link = area.local and os.path.islink(path)
            try:
                is_dir, size, mtime = self._stat(path, info, is_link)
            except FileNotFoundError:  # gone since the listing
                continue
            entries.append(
                Entry(
                    name=name,
                    url=area.url_of(path),
                    size=size,
                    mtime=mtime,
                    is_dir=is_dir,
                    is_link=is_link,
                    has_marker=name + MARKER_SUFFIX in names,
                )
            )
        return sorted(entries, key=lambda e: e.name)

    def _stat(self, path: str, info: Mapping[str, Any], is_link: bool) -> tuple[bool, int, float]:
        """(is a directory, size, mtime) of a listed path; symlinks out of the area are not followed."""
        if self.landing.local:
            if is_link and not self._inside(os.path.realpath(path)):
                st = os.lstat(path)
                return False, int(st.st_size), float(st.st_mtime)
            if os.path.isdir(path):
                return True, *_local_tree(path)
            if not os.path.exists(path):  # a dangling symlink
                st = os.lstat(path)
                return False, int(st.st_size), float(st.st_mtime)
            st = os.stat(path)
            return False, int(st.st_size), float(st.st_mtime)
        if info.get("type") == "directory":
            files = self.landing.fs.find(path, detail=True).values()
            sizes = [int(f.get("size") or 0) for f in files]
            mtimes = [_mtime(f) for f in files]
            return True, sum(sizes), max(mtimes, default=_mtime(info))
        return False, int(info.get("size") or 0), _mtime(info)

    def _inside(self, real: str) -> bool:
        """Whether a resolved local path lies strictly inside the (resolved) landing root."""
        root = self._real_root or ""
        return real != root and os.path.commonpath([real, root]) == root

    # --- processing -----------------------------------------------------------------------------
    def process(self, entry: Entry) -> Accepted | Quarantined:
        """Check one ready entry completely and move it: to the accepted area when good, to quarantine
        (with a sidecar JSON) when bad. Never deletes anything; never raises for a bad file, only for
        infrastructure failures (the entry or the landing area vanished, a store is unreachable)."""
        path = self._entry_path(entry)
        if not self.landing.exists(path):
            raise FileNotFoundError(f"{entry.url}: no longer in the landing area")
        state = self._state(path)
        try:
            if not safe_name(entry.name):
                raise _RefusedError(
                    "unsafe_name",
                    f"unsafe file name {entry.name!r}: path traversal or unsafe characters (allowed: letters, "
                    f"digits and . _ + -, starting with a letter or digit, no '..', at most {_MAX_NAME} characters)",
                )
            if state.outside_link is not None:
                raise _RefusedError("symlink_outside", state.outside_link)
            if state.kind == "symlink":
                # its target sits in the landing area and is processed on its own; the link would dangle then
                raise _RefusedError(
                    "symlink", f"symlink to {state.link_target!r}: drop the file itself, not a link to it"
                )
            spec, n_events = self._examine(entry.name, path, state)
        except _RefusedError as refused:
            return self._quarantine(entry, path, state, refused)
        return self._accept(entry, path, spec, n_events)

    def _entry_path(self, entry: Entry) -> str:
        """The path of an entry from its listed URL, checked to be a direct child of the landing root."""
        area = self.landing
        prefix = (area.root if area.local else area.url) + "/"
        rest = entry.url[len(prefix) :] if entry.url.startswith(prefix) else None
        if rest != entry.name or "/" in entry.name or not entry.name:
            raise ValueError(f"{entry.url!r} is not the landing entry {entry.name!r} at the top of {area.url}")
        return area.path(rest)

    def _state(self, path: str) -> _State:
        if not self.landing.local:
            info = self.landing.fs.info(path)
            is_dir, size, _ = self._stat(path, info, False)
            return _State("directory" if is_dir else "file", is_dir, size)
        if os.path.islink(path):
            target = os.readlink(path)
            real = os.path.realpath(path)
            if not self._inside(real):
                return _State(
                    "symlink",
                    False,
                    os.lstat(path).st_size,
                    target,
                    f"symlink to {target!r}, outside the landing area: refused (its target was not read)",
                )
            is_dir, size, _ = self._stat(path, {}, True)
            state = _State("symlink", is_dir, size, target)
        elif os.path.isdir(path):
            state = _State("directory", True, _local_tree(path)[0])
        else:
            state = _State("file", False, os.stat(path).st_size)
        if state.is_dir:
            for inner in _local_links(os.path.realpath(path)):
                if not self._inside(os.path.realpath(inner)):
                    state.outside_link = (
                        f"contains a symlink {os.path.relpath(inner, os.path.realpath(path))!r} to "
                        f"{os.readlink(inner)!r}, outside the landing area: refused (its target was not read)"
                    )
                    break
        return state

    def _examine(self, name: str, path: str, state: _State) -> tuple[FileSpec, int]:
        """Every check after the name's and the links': type, size, readability, schema, ranges."""
        if self.landing.local and state.kind == "symlink" and not os.path.exists(path):
            raise _RefusedError("unreadable", f"symlink to {state.link_target!r}, which does not exist")
        suffix = os.path.splitext(name)[1].lower()
        if state.size == 0:
            raise _RefusedError(
                "empty", "empty directory (no data in its files)" if state.is_dir else "empty file (0 bytes)"
            )
        if state.is_dir != (suffix == ZARR_SUFFIX) or (not state.is_dir and suffix not in HDF5_SUFFIXES):
            what = f"a directory named {name!r}" if state.is_dir else f"a {suffix or 'suffix-less'} file"
            raise _RefusedError(
                "unsupported_type",
                f"unsupported type ({what}); accepted are HDF5 files ({', '.join(HDF5_SUFFIXES)}) "
                f"and zarr stores (directories named *{ZARR_SUFFIX})",
            )
        url = self.landing.url_of(path)
        try:
            layout, read_geometry, n_events = self._read(url, state.is_dir)
            digest = zarr_checksum(url, self.storage_options) if state.is_dir else _sha256(self.landing.fs, path)
        except _RefusedError:
            raise
        except Exception as exc:  # a reader failing in a way it does not anticipate: a bad file, unless it vanished
            if not (self.landing.exists(self.landing.root) and self.landing.exists(path)):
                raise FileNotFoundError(f"{url}: left the landing area while it was read ({exc})") from None
            raise _RefusedError("unreadable", f"could not be read ({exc})") from None
        # a custom geometry (not a preset): None, the file itself describes it
        geometry = read_geometry if self.checks.geometry is not None or read_geometry in GEOMETRIES else None
        spec = FileSpec(url=url, sha256=digest, layout=layout, geometry=geometry, particle=self.checks.particle)
        return spec, n_events

    def _read(self, url: str, is_dir: bool) -> tuple[str, str, int]:
        """(layout, geometry, events) of an entry, read completely and checked (:func:`read_entry`) in a child
        process within the checks' memory and time limits; a reader that dies there refuses the entry with the
        way it died. An in-memory file system (tests) is not shared with a child: read in this process."""
        args = (url, is_dir, self.checks, self.storage_options)
        if "memory" in _protocols(self.landing.fs):
            outcome = read_entry(*args)
        else:
            try:
                outcome = run_isolated(read_entry, args, self.checks.reader_limits())
            except ChildFailedError as exc:
                raise _RefusedError(
                    f"reader_{exc.check}", f"the reader checking it {exc.status} ({_READER_FAILURES[exc.check]})"
                ) from None
            except ChildError as exc:
                raise RuntimeError(str(exc)) from None
        if "refused" in outcome:
            raise _RefusedError(*outcome["refused"])
        layout, geometry, n_events = outcome["read"]
        return layout, geometry, n_events

    # --- moving ---------------------------------------------------------------------------------
    def _accept(self, entry: Entry, path: str, spec: FileSpec, n_events: int) -> Accepted:
        area = self.accepted
        folder = area.path(spec.key)
        duplicate = area.exists(folder)
        _makedirs(area, folder)
        target, n = area.path(spec.key, entry.name), 0
        while area.exists(target) or area.exists(target + MARKER_SUFFIX):
            n += 1
            target = area.path(spec.key, f"{entry.name}.{n}")
        self._move_with_marker(path, target, spec.layout == "zarr")
        moved = FileSpec(
            url=area.url_of(target),
            sha256=spec.sha256,
            layout=spec.layout,
            geometry=spec.geometry,
            particle=spec.particle,
        )
        return Accepted(name=entry.name, spec=moved, n_events=n_events, duplicate=duplicate)

    def _quarantine(self, entry: Entry, path: str, state: _State, refused: _RefusedError) -> Quarantined:
        area = self.quarantine
        _makedirs(area, area.root)
        stem = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{sanitized(entry.name)}"
        target, n = area.path(stem), 0
        while area.exists(target) or area.exists(target + ".json") or area.exists(target + MARKER_SUFFIX):
            n += 1
            target = area.path(f"{stem}-{n}")
        digest = _sha256(self.landing.fs, path) if state.kind == "file" else None
        self._move_with_marker(path, target, state.kind == "directory")
        sidecar = target + ".json"
        record = {
            "original_name": entry.name,
            "reason": refused.reason,
            "check": refused.check,
            "detected_at": datetime.now(UTC).isoformat(),
            "size": state.size,
            "sha256": digest,
            "source_url": entry.url,
            "kind": state.kind,
            "link_target": state.link_target,
            "url": area.url_of(target),
        }
        with atomic_file(area.url_of(sidecar), self.storage_options) as handle:
            handle.write(json.dumps(record, indent=2).encode())
        return Quarantined(
            name=entry.name,
            reason=refused.reason,
            check=refused.check,
            url=area.url_of(target),
            sidecar_url=area.url_of(sidecar),
            sha256=digest,
            size=state.size,
        )

    def _move_with_marker(self, path: str, target: str, is_dir: bool) -> None:
        marker = path + MARKER_SUFFIX
        _move(self.landing, path, target, is_dir)
        if self.landing.exists(marker):
            _move(self.landing, marker, target + MARKER_SUFFIX, False)

    # --- display --------------------------------------------------------------------------------
    def quarantined(self) -> list[dict[str, Any]]:
        """The sidecars in the quarantine area, newest first, each with its ``sidecar_url`` added."""
        area = self.quarantine
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


_READER_FAILURES = {
    "crashed": "the file makes the reading library crash",
    "out_of_memory": "reading it needs more memory than the landing's reader_memory_mb allows",
    "timeout": "reading it takes longer than the landing's reader_timeout_s allows",
}


def read_entry(url: str, is_dir: bool, checks: LandingChecks, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """Read a landed HDF5 file or zarr store completely and check it: ``{"read": [layout, geometry, events]}``,
    or ``{"refused": [check, reason]}``. Runs in the reader's child process (:meth:`Landing._read`)."""
    try:
        if is_dir:
            return {"read": list(_read_zarr(url, checks, storage_options))}
        return {"read": list(_read_hdf5(url, checks, storage_options))}
    except _RefusedError as refused:
        return {"refused": [refused.check, refused.reason]}


def _read_hdf5(url: str, checks: LandingChecks, storage_options: Mapping[str, Any]) -> tuple[str, str, int]:
    layout = geometry = ""
    response = _Response(checks)
    try:
        for block in hdf5_blocks(url, checks.geometry, checks.particle, storage_options):
            if response.n_events == 0:
                layout, geometry = str(block.attrs["source_layout"]), str(block.attrs["geometry"])
            _check_ranges(block, checks, first_event=response.n_events)
            response.add(block)
    except UnsafeHdf5Error as exc:
        raise _RefusedError("unsafe_hdf5", exc.problem) from None
    except ShowerDataError as exc:
        unreadable = any(marker in exc.problem for marker in _UNREADABLE_HDF5)
        raise _RefusedError("unreadable" if unreadable else "bad_content", exc.problem) from None
    response.check()
    return layout, geometry, response.n_events


def _read_zarr(url: str, checks: LandingChecks, storage_options: Mapping[str, Any]) -> tuple[str, str, int]:
    try:
        ds = read_showers(url, storage_options, validate=False)
    except ShowerDataError as exc:
        raise _RefusedError("unreadable", exc.problem) from None
    response = _Response(checks)
    with ds:
        geometry = str(ds.attrs.get("geometry", ""))
        if checks.geometry is not None and geometry != checks.geometry:
            raise _RefusedError("bad_content", f"geometry {geometry!r}, expected {checks.geometry!r}")
        for block in iter_blocks(ds):
            try:
                validate_showers(block, url, first_event=response.n_events)
            except ShowerDataError as exc:
                raise _RefusedError("bad_content", exc.problem) from None
            _check_ranges(block, checks, first_event=response.n_events)
            response.add(block)
    if response.n_events == 0:
        raise _RefusedError("bad_content", "contains no events")
    response.check()
    return "zarr", geometry, response.n_events


class _Response:
    """Showers without visible energy, and the mean visible fraction, over a file's blocks."""

    def __init__(self, checks: LandingChecks) -> None:
        self.checks = checks
        self.n_events = self.n_empty = 0
        self.fraction_sum = 0.0
        self.sampling_fraction: float | None = None

    def add(self, block: xr.Dataset) -> None:
        n = block.sizes["event"]
        visible_gev = block[DEPOSIT].values.reshape(n, -1).sum(axis=1, dtype=np.float64) * 1e-3
        self.n_empty += int(np.count_nonzero(visible_gev <= 0))
        self.fraction_sum += float(np.sum(visible_gev / block["primary_energy"].values.astype(np.float64)))
        self.n_events += n
        if self.sampling_fraction is None:
            self.sampling_fraction = dataset_geometry(block).sampling_fraction

    def check(self) -> None:
        if self.n_events == 0:
            return
        empty = self.n_empty / self.n_events
        if empty > self.checks.max_empty_fraction:
            raise _RefusedError(
                "no_energy",
                f"{self.n_empty} of {self.n_events} showers ({empty:.1%}) carry no visible energy at all "
                f"(at most {self.checks.max_empty_fraction:.1%} may)",
            )
        mean = self.fraction_sum / self.n_events
        low, high = (f * (self.sampling_fraction or 0.0) for f in self.checks.response_window)
        if not low <= mean <= high:
            raise _RefusedError(
                "bad_response",
                f"mean visible fraction E_sum/E_p {mean:.4g} is outside {low:.3g}-{high:.3g} "
                f"({self.checks.response_window[0]:g}-{self.checks.response_window[1]:g} x the geometry's "
                f"sampling fraction {self.sampling_fraction:.4g}): are the units right, is it visible energy?",
            )


def _check_ranges(block: xr.Dataset, checks: LandingChecks, first_event: int = 0) -> None:
    """Refuse a block whose primary energies or angles leave the allowed ranges, or whose events deposit
    more than their primary energy (a units mistake). ``first_event`` numbers the events in messages."""
    energy = np.asarray(block["primary_energy"].values, dtype=np.float64)
    e0, e1 = checks.energy_range_gev
    bad = np.flatnonzero((energy < e0) | (energy > e1))
    if bad.size:
        i = int(bad[0])
        raise _RefusedError(
            "out_of_range",
            f"primary energy {energy[i]:g} GeV in event {first_event + i} is outside the allowed range "
            f"{e0:g}-{e1:g} GeV",
        )
    theta = np.asarray(block["theta"].values, dtype=np.float64)
    t0, t1 = checks.theta_range_deg
    bad = np.flatnonzero(
        (theta < math.radians(t0) - _THETA_TOLERANCE_RAD) | (theta > math.radians(t1) + _THETA_TOLERANCE_RAD)
    )
    if bad.size:
        i = int(bad[0])
        raise _RefusedError(
            "out_of_range",
            f"theta {math.degrees(theta[i]):g} deg in event {first_event + i} is outside the allowed range "
            f"{t0:g}-{t1:g} deg",
        )
    deposited_gev = block[DEPOSIT].values.reshape(block.sizes["event"], -1).sum(axis=1, dtype=np.float64) * 1e-3
    bad = np.flatnonzero(deposited_gev > energy * (1 + 1e-6))
    if bad.size:
        i = int(bad[0])
        raise _RefusedError(
            "out_of_range",
            f"event {first_event + i} deposits {deposited_gev[i]:g} GeV, more than its primary energy "
            f"{energy[i]:g} GeV: are the units right?",
        )


def _temporary(name: str) -> bool:
    """A name still being written (``run.h5.part``): observed, never ready."""
    return not name.startswith(".") and name.lower().endswith(TEMP_SUFFIXES)


def _ignored(name: str) -> bool:
    """Names scan() neither processes nor observes: temporary files, markers, hidden files."""
    if name.startswith(".."):
        return False  # unsafe, not hidden: it goes to quarantine
    lower = name.lower()
    return name.startswith(".") or lower.endswith(TEMP_SUFFIXES) or lower.endswith(MARKER_SUFFIX)


def _mtime(info: Mapping[str, Any]) -> float:
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


def _local_tree(path: str) -> tuple[int, float]:
    """Total size and newest mtime of the files under a local directory (links not followed)."""
    size, newest = 0, None
    for folder, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            size += st.st_size
            newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
    return size, float(newest if newest is not None else os.stat(path).st_mtime)


def _local_links(path: str) -> Iterator[str]:
    """Symlinks (to files or directories) under a local directory."""
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            if os.path.islink(os.path.join(folder, name)):
                yield os.path.join(folder, name)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """SHA-256 of a file's bytes by path (no URL parsing, so any listed name works)."""
    with open(path, "rb") if isinstance(fs, LocalFileSystem) else fs.open(path, "rb") as handle:
        return sha256_stream(handle)


def _makedirs(area: _Area, path: str) -> None:
    if area.local:
        os.makedirs(path, exist_ok=True)
    elif not is_object_store(area.fs):  # an object store has no folders (and s3fs would create a missing bucket)
        area.fs.makedirs(path, exist_ok=True)


def _move(area: _Area, source: str, target: str, is_dir: bool) -> None:
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
