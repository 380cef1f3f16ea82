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

Its modules: :mod:`.checks` (what a file must satisfy, and the reader that checks its content),
:mod:`.areas` (the three areas, the entries' records and the moves between the areas) and
:mod:`.processing` (:class:`Landing`: the scan and the processing of one entry).
"""

from .areas import MARKER_SUFFIX, TEMP_SUFFIXES, Accepted, Entry, Quarantined
from .checks import CHECKS, DEFAULT_CHECKS, HDF5_SUFFIXES, ZARR_SUFFIX, LandingChecks, read_entry, safe_name, sanitized
from .processing import Landing

__all__ = [
    "CHECKS",
    "DEFAULT_CHECKS",
    "HDF5_SUFFIXES",
    "MARKER_SUFFIX",
    "TEMP_SUFFIXES",
    "ZARR_SUFFIX",
    "Accepted",
    "Entry",
    "Landing",
    "LandingChecks",
    "Quarantined",
    "read_entry",
    "safe_name",
    "sanitized",
]
