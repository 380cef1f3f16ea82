"""CaloTwin: a digital twin of a calorimeter (Monte Carlo -> 3DGAN -> physics validation), run by Dagster.

The public Python API. None of it imports Dagster; the Dagster layer lives in
``dt_assets.defs`` and ``dt_assets.definitions``.
"""

from .model.generation import build_generator, generate, load_generator
from .physics.geometry import GEOMETRIES, Geometry, get_geometry
from .physics.simulator import GFlashSimulator, Simulator, simulate, simulate_blocks
from .showers.errors import ShowerDataError
from .showers.hdf5 import read_hdf5, write_hdf5
from .showers.store import read_showers, write_showers
from .version import __version__

__all__ = [
    "GEOMETRIES",
    "GFlashSimulator",
    "Geometry",
    "ShowerDataError",
    "Simulator",
    "__version__",
    "build_generator",
    "generate",
    "get_geometry",
    "load_generator",
    "read_hdf5",
    "read_showers",
    "simulate",
    "simulate_blocks",
    "write_hdf5",
    "write_showers",
]
