"""CaloTwin: a digital twin of a calorimeter (Monte Carlo -> 3DGAN -> physics validation), run by Dagster.

The public Python API. None of it imports Dagster; the Dagster layer lives in
``dt_assets.defs`` and ``dt_assets.definitions``. Names are imported on first use, so that
``import dt_assets.model.gan3d`` needs only torch and numpy (as on a bare GPU machine).
"""

from importlib import import_module
from typing import Any

from .version import __version__

_EXPORTS = {
    "GEOMETRIES": ".physics.geometry",
    "Geometry": ".physics.geometry",
    "get_geometry": ".physics.geometry",
    "GFlashSimulator": ".simulation",
    "Simulator": ".simulation",
    "simulate": ".simulation",
    "simulate_blocks": ".simulation",
    "ShowerDataError": ".showers.errors",
    "read_hdf5": ".showers.hdf5",
    "write_hdf5": ".showers.hdf5",
    "read_showers": ".showers.store",
    "write_showers": ".showers.store",
    "build_generator": ".model.generation",
    "generate": ".model.generation",
    "load_generator": ".model.generation",
    "validate": ".validation.validate",
    "ValidationConfig": ".validation.config",
    "ValidationResult": ".validation.result",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
