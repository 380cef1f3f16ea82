"""The orchestration of the landing: which entries are ready (:meth:`Landing.scan`), and one entry checked
completely and moved (:meth:`Landing.process`): its name and links, its type and size, then its content read
in a child process within memory and time limits (:func:`~dt_assets.landing.checks.read_entry`), and the move
to the accepted area or to quarantine (:mod:`dt_assets.landing.areas`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..isolation import ChildError, ChildFailedError, run_isolated
from ..physics.geometry import GEOMETRIES
from ..runs import FileSpec, zarr_checksum
from . import areas
from .areas import (
    MARKER_SUFFIX,
    TEMP_SUFFIXES,
    Accepted,
    Area,
    Entry,
    Quarantined,
    State,
    file_sha256,
    ignored,
    info_mtime,
    local_links,
    local_tree,
    protocols,
    temporary,
)
from .checks import (
    DEFAULT_CHECKS,
    HDF5_SUFFIXES,
    MAX_NAME,
    READER_FAILURES,
    ZARR_SUFFIX,
    LandingChecks,
    RefusedError,
    read_entry,
    safe_name,
)


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
        self.landing = Area.at(landing_url, self.storage_options)
        self.accepted = Area.at(accepted_url, self.storage_options)
        self.quarantine = Area.at(quarantine_url, self.storage_options)
        for area in (self.accepted, self.quarantine):
            if type(area.fs) is not type(self.landing.fs):
                raise ValueError(
                    f"{area.url}: must be on the same file system as the landing area {landing_url} "
                    f"(entries are moved, not copied)"
                )
        self._real_root = os.path.realpath(self.landing.root) if self.landing.local else None

    # --- scanning and listing -------------------------------------------------------------------------------
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
            if temporary(entry.name):
                settling[entry.name] = observed
                continue
            if ignored(entry.name):
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
        return areas.landed_keys(self.accepted)

    def landed_file(self, key: str) -> str | None:
        """The URL of the first data file accepted under ``key`` (markers aside), or None."""
        return areas.landed_file(self.accepted, key)

    def quarantined(self) -> list[dict[str, Any]]:
        """The sidecars in the quarantine area, newest first, each with its ``sidecar_url`` added."""
        return areas.quarantined(self.quarantine)

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
                return True, *local_tree(path)
            if not os.path.exists(path):  # a dangling symlink
                st = os.lstat(path)
                return False, int(st.st_size), float(st.st_mtime)
            st = os.stat(path)
            return False, int(st.st_size), float(st.st_mtime)
        if info.get("type") == "directory":
            files = self.landing.fs.find(path, detail=True).values()
            sizes = [int(f.get("size") or 0) for f in files]
            mtimes = [info_mtime(f) for f in files]
            return True, sum(sizes), max(mtimes, default=info_mtime(info))
        return False, int(info.get("size") or 0), info_mtime(info)

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
                raise RefusedError(
                    "unsafe_name",
                    f"unsafe file name {entry.name!r}: path traversal or unsafe characters (allowed: letters, "
                    f"digits and . _ + -, starting with a letter or digit, no '..', at most {MAX_NAME} characters)",
                )
            if state.outside_link is not None:
                raise RefusedError("symlink_outside", state.outside_link)
            if state.kind == "symlink":
                # its target sits in the landing area and is processed on its own; the link would dangle then
                raise RefusedError(
                    "symlink", f"symlink to {state.link_target!r}: drop the file itself, not a link to it"
                )
            spec, n_events = self._examine(entry.name, path, state)
        except RefusedError as refused:
            return areas.quarantine(
                self.landing, self.quarantine, entry, path, state, refused.check, refused.reason, self.storage_options
            )
        return areas.accept(self.landing, self.accepted, entry, path, spec, n_events)

    def _entry_path(self, entry: Entry) -> str:
        """The path of an entry from its listed URL, checked to be a direct child of the landing root."""
        area = self.landing
        prefix = (area.root if area.local else area.url) + "/"
        rest = entry.url[len(prefix) :] if entry.url.startswith(prefix) else None
        if rest != entry.name or "/" in entry.name or not entry.name:
            raise ValueError(f"{entry.url!r} is not the landing entry {entry.name!r} at the top of {area.url}")
        return area.path(rest)

    def _state(self, path: str) -> State:
        if not self.landing.local:
            info = self.landing.fs.info(path)
            is_dir, size, _ = self._stat(path, info, False)
            return State("directory" if is_dir else "file", is_dir, size)
        if os.path.islink(path):
            target = os.readlink(path)
            real = os.path.realpath(path)
            if not self._inside(real):
                return State(
                    "symlink",
                    False,
                    os.lstat(path).st_size,
                    target,
                    f"symlink to {target!r}, outside the landing area: refused (its target was not read)",
                )
            is_dir, size, _ = self._stat(path, {}, True)
            state = State("symlink", is_dir, size, target)
        elif os.path.isdir(path):
            state = State("directory", True, local_tree(path)[0])
        else:
            state = State("file", False, os.stat(path).st_size)
        if state.is_dir:
            for inner in local_links(os.path.realpath(path)):
                if not self._inside(os.path.realpath(inner)):
                    state.outside_link = (
                        f"contains a symlink {os.path.relpath(inner, os.path.realpath(path))!r} to "
                        f"{os.readlink(inner)!r}, outside the landing area: refused (its target was not read)"
                    )
                    break
        return state

    def _examine(self, name: str, path: str, state: State) -> tuple[FileSpec, int]:
        """Every check after the name's and the links': type, size, readability, schema, ranges."""
        if self.landing.local and state.kind == "symlink" and not os.path.exists(path):
            raise RefusedError("unreadable", f"symlink to {state.link_target!r}, which does not exist")
        suffix = os.path.splitext(name)[1].lower()
        if state.size == 0:
            raise RefusedError(
                "empty", "empty directory (no data in its files)" if state.is_dir else "empty file (0 bytes)"
            )
        if state.is_dir != (suffix == ZARR_SUFFIX) or (not state.is_dir and suffix not in HDF5_SUFFIXES):
            what = f"a directory named {name!r}" if state.is_dir else f"a {suffix or 'suffix-less'} file"
            raise RefusedError(
                "unsupported_type",
                f"unsupported type ({what}); accepted are HDF5 files ({', '.join(HDF5_SUFFIXES)}) "
                f"and zarr stores (directories named *{ZARR_SUFFIX})",
            )
        url = self.landing.url_of(path)
        try:
            layout, read_geometry, n_events = self._read(url, state.is_dir)
            digest = zarr_checksum(url, self.storage_options) if state.is_dir else file_sha256(self.landing.fs, path)
        except RefusedError:
            raise
        except Exception as exc:  # a reader failing in a way it does not anticipate: a bad file, unless it vanished
            if not (self.landing.exists(self.landing.root) and self.landing.exists(path)):
                raise FileNotFoundError(f"{url}: left the landing area while it was read ({exc})") from None
            raise RefusedError("unreadable", f"could not be read ({exc})") from None
        # a custom geometry (not a preset): None, the file itself describes it
        geometry = read_geometry if self.checks.geometry is not None or read_geometry in GEOMETRIES else None
        spec = FileSpec(url=url, sha256=digest, layout=layout, geometry=geometry, particle=self.checks.particle)
        return spec, n_events

    def _read(self, url: str, is_dir: bool) -> tuple[str, str, int]:
        """(layout, geometry, events) of an entry, read completely and checked (:func:`read_entry`) in a child
        process within the checks' memory and time limits; a reader that dies there refuses the entry with the
        way it died. An in-memory file system (tests) is not shared with a child: read in this process."""
        args = (url, is_dir, self.checks, self.storage_options)
        if "memory" in protocols(self.landing.fs):
            outcome = read_entry(*args)
        else:
            try:
                outcome = run_isolated(read_entry, args, self.checks.reader_limits())
            except ChildFailedError as exc:
                raise RefusedError(
                    f"reader_{exc.check}", f"the reader checking it {exc.status} ({READER_FAILURES[exc.check]})"
                ) from None
            except ChildError as exc:
                raise RuntimeError(str(exc)) from None
        if "refused" in outcome:
            raise RefusedError(*outcome["refused"])
        layout, geometry, n_events = outcome["read"]
        return layout, geometry, n_events

    # --- moving ---------------------------------------------------------------------------------
