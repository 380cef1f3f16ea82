"""The error type for bad shower data (it names the source and the problem), and its unsafe-HDF5 kind."""

from __future__ import annotations


class ShowerDataError(ValueError):
    """A shower file or dataset is unusable (missing key, wrong shape, NaN, truncated, ...).

    ``source`` is the file, URL or dataset description; ``problem`` says what is wrong with it.
    """

    def __init__(self, source: str, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")

    def __reduce__(self):  # keep the two fields across pickling (multiprocess executors)
        return (type(self), (self.source, self.problem))


class UnsafeHdf5Error(ShowerDataError):
    """An HDF5 file uses a feature that reads outside the file or runs outside HDF5 itself: a virtual dataset,
    external raw storage, an external link, a soft link that does not stay in the file, or a filter that is not
    built in. Refused before any data is read."""
