"""HDF5 features that reach outside the file, refused before any data is read.

An HDF5 file is more than arrays: it can point elsewhere. Reading such a file can open other files
on the reading machine, or run filter plugins found on its plugin path; a virtual dataset that points
at a missing or hostile source has crashed the reading process (h5py segfaults). So before a landed
file's data is read, :func:`check_self_contained` walks every link in it, without following any and
without reading any dataset's values, and refuses:

- a **virtual dataset** (``h5py.VirtualLayout``): its values come from other files;
- **external raw storage** (``create_dataset(..., external=...)``): its bytes sit in other files;
- an **external link** (``h5py.ExternalLink``): an object in another file;
- a **soft link** whose path does not resolve, inside this file, to an object (it dangles, or it
  passes through an external link);
- a **filter that is not built in**: HDF5's own (deflate, shuffle, fletcher32, szip, n-bit,
  scale-offset) and h5py's LZF are read in-process; anything else (Blosc, Zstandard, bitshuffle,
  ...) needs a plugin loaded from the reading machine's plugin path;
- more than :data:`MAX_OBJECTS` links, or groups nested deeper than :data:`MAX_DEPTH` (a file
  that loops back on itself, or is built to make the walk itself the attack).

The reason names the feature and the object's path.
"""

from __future__ import annotations

from typing import NoReturn

import h5py

from .errors import UnsafeHdf5Error

#: filters read without plugins: HDF5's built-ins and h5py's LZF
BUILT_IN_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "deflate",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    h5py.h5z.FILTER_SZIP: "szip",
    h5py.h5z.FILTER_NBIT: "nbit",
    h5py.h5z.FILTER_SCALEOFFSET: "scaleoffset",
    h5py.h5z.FILTER_LZF: "lzf",
}
#: the most links a landed file may hold, and the deepest group nesting
MAX_OBJECTS = 10_000
MAX_DEPTH = 32
_MAX_SOFT_HOPS = 16


def check_self_contained(h5: h5py.File, source: str) -> None:
    """Raise :class:`UnsafeHdf5Error` naming the first feature of ``h5`` that reaches outside it (see the
    module docstring). Reads links and dataset creation properties only, never values."""
    _Walk(h5, source).group(h5, "", 0)


class _Walk:
    def __init__(self, h5: h5py.File, source: str) -> None:
        self.h5, self.source, self.links = h5, source, 0

    def refuse(self, problem: str) -> NoReturn:
        raise UnsafeHdf5Error(self.source, f"unsafe HDF5: {problem}; refused before any data was read")

    def group(self, group: h5py.Group, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.refuse(f"groups nested deeper than {MAX_DEPTH} levels at {path!r}")
        for name in group:  # link names (H5Literate): nothing is followed
            self.links += 1
            if self.links > MAX_OBJECTS:
                self.refuse(f"more than {MAX_OBJECTS} links (a file that loops back on itself?)")
            where = f"{path}/{name}"
            kind, value = _link(group, name)
            if kind == "external":
                self.refuse(f"{where!r} is an external link to {value!r}")
            if kind == "soft":
                self.soft(where, value)
                continue  # its target is walked where it is hard-linked
            if kind != "hard":
                self.refuse(f"{where!r} is a user-defined link (type {value})")
            item = group[name]
            if isinstance(item, h5py.Group):
                self.group(item, where, depth + 1)
            elif isinstance(item, h5py.Dataset):
                self.dataset(item, where)

    def dataset(self, dataset: h5py.Dataset, where: str) -> None:
        if dataset.is_virtual:
            sources = sorted({source.file_name for source in dataset.virtual_sources()})[:3]
            self.refuse(f"{where!r} is a virtual dataset (its values come from {', '.join(map(repr, sources))})")
        external = dataset.external
        if external:
            self.refuse(f"{where!r} keeps its bytes in external file(s) {sorted({e[0] for e in external})[:3]}")
        plist = dataset.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _, _, name = plist.get_filter(i)
            if code not in BUILT_IN_FILTERS:
                label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                self.refuse(f"{where!r} needs filter {code} ({label!r}), which is not built in")

    def soft(self, where: str, target: str) -> None:
        """A soft link must resolve inside the file, through hard and soft links only."""
        path = target if target.startswith("/") else f"{where.rsplit('/', 1)[0]}/{target}"
        for _ in range(_MAX_SOFT_HOPS):
            node: h5py.Group = self.h5
            parts = [p for p in path.split("/") if p]
            for i, part in enumerate(parts):
                kind, value = _link(node, part) if isinstance(node, h5py.Group) else ("missing", "")
                if kind == "missing":
                    self.refuse(f"soft link {where!r} -> {target!r} does not resolve inside the file")
                if kind != "hard" and kind != "soft":
                    self.refuse(f"soft link {where!r} -> {target!r} leads out of the file ({kind} link {value!r})")
                if kind == "soft":
                    rest = "/".join(parts[i + 1 :])
                    base = value if value.startswith("/") else "/".join(["", *parts[:i], value])
                    path = f"{base}/{rest}" if rest else base
                    break
                node = node[part]
            else:
                return
        self.refuse(f"soft link {where!r} -> {target!r} loops")


def _link(group: h5py.Group, name: str) -> tuple[str, str]:
    """("hard" | "soft" | "external" | "user" | "missing", what it points at; "" for hard and missing), from the
    link itself (H5Lexists and H5Lget_info do not traverse it, where ``name in group`` would open an external
    file)."""
    key = name.encode()
    if not group.id.links.exists(key):
        return "missing", ""
    kind = group.id.links.get_info(key).type
    if kind == h5py.h5l.TYPE_HARD:
        return "hard", ""
    if kind == h5py.h5l.TYPE_SOFT:
        return "soft", group.id.links.get_val(key).decode(errors="replace")
    if kind == h5py.h5l.TYPE_EXTERNAL:
        filename, path = group.id.links.get_val(key)
        return "external", f"{path.decode(errors='replace')} in file {filename.decode(errors='replace')}"
    return "user", str(kind)
