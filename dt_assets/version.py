"""The package version, recorded in every dataset and model this code produces."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calotwin")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
