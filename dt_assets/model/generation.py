"""The usable generator of either family, saved without pickle, and generation in the MC's schema.

Two families share one interface: the 3DGAN (:class:`CaloGenerator`, family ``3dgan``) and the
two-stage conditional flow matching model (:class:`~dt_assets.model.flow.FlowGenerator`, family
``flow``). Each knows its geometry, has ``noise_size`` and ``sample(noise, energy_gev, theta_rad)``
(standard normal noise and the conditions to deposits in MeV), and a JSON ``spec()`` that names its
family. ``build_generator(geometry, family)`` makes an untrained one; ``generate(generator, n,
energy, theta)`` returns showers in the schema and units of :func:`dt_assets.simulate`, so MC and
generator output are interchangeable. Files hold ``{"spec": <json>, "generator": <tensors>}``
(training checkpoints hold more keys beside these) and load with ``torch.load(weights_only=True)``:
no arbitrary pickle runs. A file without a family in its spec is a 3DGAN (files written before the
flow family existed).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..fsio import atomic_file, url_to_fs
from ..physics.geometry import DEFAULT_GEOMETRY, Geometry, get_geometry
from ..physics.particles import pdg_code
from ..showers.schema import EVENTS_PER_CHUNK, concat_blocks, shower_dataset
from ..simulation import RunArguments, sample_conditions
from .flow import FlowGenerator
from .gan3d import Architecture, Generator, architecture_for, calibrate_output, latent_from_noise, make_latent
from .preprocess import Transform

GENERATOR_FILE = "generator.pt"
GAN = "3dgan"
FLOW = FlowGenerator.family
#: the generator families, by the name their specs, tags and configs use
FAMILIES = (GAN, FLOW)


class CaloGenerator(nn.Module):
    """A 3DGAN generator that knows its geometry, architecture and preprocessing transform."""

    family = GAN

    def __init__(self, geometry: Geometry, arch: Architecture | None = None, transform: Transform | None = None):
        super().__init__()
        self.geometry = geometry
        self.arch = arch or architecture_for(geometry)
        self.transform = transform or Transform()
        self.net = Generator(self.arch)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [E_p/100, theta, noise] (N, 256) to power-scaled cells (N, 1, x, y, z)."""
        return self.net(latent)

    def spec(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "geometry": self.geometry.to_dict(),
            "architecture": self.arch.to_dict(),
            "transform": self.transform.to_dict(),
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> CaloGenerator:
        return cls(
            Geometry.from_dict(spec["geometry"]),
            Architecture.from_dict(spec["architecture"]),
            Transform.from_dict(spec["transform"]),
        )

    def latent(self, energy_gev: torch.Tensor, theta_rad: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return make_latent(self.arch, energy_gev, theta_rad, self.transform.energy_scale_gev, generator)

    @property
    def noise_size(self) -> int:
        """N(0, 1) inputs per shower: the latent without its two conditions."""
        return self.arch.latent_size - 2

    def sample(self, noise: torch.Tensor, energy_gev: torch.Tensor, theta_rad: torch.Tensor) -> torch.Tensor:
        """Deposits (N, x, y, z) in MeV from ``noise`` (N, noise_size) and the conditions; cells below the
        threshold stay as the network made them."""
        latent = latent_from_noise(self.arch, noise, energy_gev, theta_rad, self.transform.energy_scale_gev)
        return self.transform.inverse(self(latent).float()).squeeze(1)


#: a generator of either family
ShowerGenerator = CaloGenerator | FlowGenerator


def build_generator(geometry: str | Geometry = DEFAULT_GEOMETRY, family: str = GAN) -> ShowerGenerator:
    """The untrained generator of ``family`` (``3dgan`` or ``flow``) for a geometry preset (the 3DGAN's
    reference architecture for the default geometry)."""
    geometry = get_geometry(geometry)
    if family == FLOW:
        return FlowGenerator(geometry)
    if family != GAN:
        raise ValueError(f"unknown generator family {family!r}; one of {list(FAMILIES)}")
    generator = CaloGenerator(geometry)
    # its output calibrated to the geometry's visible energy over 10-200 GeV and 60-120 degrees (a training
    # calibrates it to the data); with 4 showers at 100 GeV, 90 degrees, 2 initialisations in 30 made more than 3x
    noise = torch.Generator().manual_seed(0)
    energy = torch.linspace(10.0, 200.0, 64)
    theta = torch.deg2rad(torch.linspace(60.0, 120.0, 64)[torch.randperm(64, generator=noise)])
    latent = generator.latent(energy, theta, noise)
    visible_units = float(energy.mean()) * geometry.sampling_fraction * 1000.0 / generator.transform.mev_per_unit
    calibrate_output(generator.net.eval(), latent, visible_units, generator.transform.power)  # as generate() runs it
    return generator.train()


def generator_from_spec(spec: Mapping[str, Any]) -> ShowerGenerator:
    """An untrained generator of the spec's family, geometry and architecture."""
    family = spec.get("family", GAN)
    if family == GAN:
        return CaloGenerator.from_spec(spec)
    if family == FLOW:
        return FlowGenerator.from_spec(spec)
    raise ValueError(f"unknown generator family {family!r}; one of {list(FAMILIES)}")


def generator_payload(generator: ShowerGenerator) -> dict[str, Any]:
    """The generator as plain data: a JSON spec and a state dict of CPU tensors."""
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    return {"spec": json.dumps(generator.spec(), sort_keys=True), "generator": state}


def generator_bytes(generator: ShowerGenerator) -> bytes:
    buffer = io.BytesIO()
    torch.save(generator_payload(generator), buffer)
    return buffer.getvalue()


def save_generator(generator: ShowerGenerator, url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write the generator file atomically to a path or fsspec URL."""
    with atomic_file(url, storage_options) as handle:
        handle.write(generator_bytes(generator))
    return url


def generator_from_bytes(data: bytes, source: str = "generator file") -> ShowerGenerator:
    """Rebuild a generator from a generator file or a training checkpoint, with ``weights_only=True``."""
    return generator_from_payload(read_payload(data, source), source)


def read_payload(data: bytes, source: str) -> dict[str, Any]:
    """The dict in a generator file or checkpoint, loaded with ``weights_only=True`` (no pickled code)."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not ours
        raise ValueError(f"{source}: not a CaloTwin generator file ({type(exc).__name__}: {exc})") from None


def generator_from_payload(payload: Mapping[str, Any], source: str = "generator file") -> ShowerGenerator:
    """Rebuild a generator of either family from a loaded generator file or checkpoint (``spec``, ``generator``)."""
    try:
        generator = generator_from_spec(json.loads(payload["spec"]))
        generator.load_state_dict(payload["generator"])
    except Exception as exc:  # a missing key, a bad spec or mismatched weights
        raise ValueError(f"{source}: not a CaloTwin generator file ({type(exc).__name__}: {exc})") from None
    return generator.eval()


def load_generator(model_uri: str, storage_options: Mapping[str, Any] | None = None) -> ShowerGenerator:
    """Load a generator from ``models:/name@alias``, ``models:/name/N``, a checkpoint or a generator file.

    Registry URIs are resolved by MLflow (the current tracking URI). Checkpoints written by the
    training loop hold the generator too. Weights load with ``weights_only=True``.
    """
    if model_uri.startswith("models:/"):
        return download_generator(model_uri)
    fs, path = url_to_fs(model_uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{model_uri}: no such generator or checkpoint")
    with fs.open(path, "rb") as handle:
        return generator_from_bytes(handle.read(), model_uri)


def download_generator(model_uri: str) -> ShowerGenerator:
    """Load the generator of a registry URI (``models:/name@alias`` or ``models:/name/N``)."""
    import mlflow  # imported only for registry URIs (it is slow to import)

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    path = local / "extra_files" / GENERATOR_FILE
    if not path.exists():
        raise FileNotFoundError(f"{model_uri}: the model has no CaloTwin generator file ({path.name})")
    return generator_from_bytes(path.read_bytes(), model_uri)


@torch.no_grad()
def generate(
    generator: ShowerGenerator,
    n_events: int,
    energy_gev: float | tuple[float, float],
    theta_deg: float | tuple[float, float],
    particle: str | int = "e-",
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> xr.Dataset:
    """Generate showers: the same schema and units (MeV, GeV, rad) as :func:`dt_assets.simulate`.

    Conditions are drawn as ``simulate`` draws them (uniform in the ranges), from ``seed``.
    """
    geometry = generator.geometry
    run = RunArguments.checked(n_events, energy_gev, theta_deg, particle, geometry, seed)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    was_training = generator.training
    generator.eval().to(device)
    noise = torch.Generator(device=device).manual_seed(run.seed)
    rng = np.random.default_rng([run.seed, 1])
    blocks = []
    try:
        for first in range(0, run.n_events, EVENTS_PER_CHUNK):
            n = min(EVENTS_PER_CHUNK, run.n_events - first)
            conditions = sample_conditions(n, run.energy_gev, run.theta_deg, pdg_code(particle), rng)
            cells = np.empty((n, *geometry.shape), dtype=np.float32)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                energy = torch.as_tensor(conditions.energy_gev[start:stop], device=device, dtype=torch.float32)
                theta = torch.as_tensor(conditions.theta_rad[start:stop], device=device, dtype=torch.float32)
                draw = torch.randn((stop - start, generator.noise_size), generator=noise, device=device)
                cells[start:stop] = generator.sample(draw, energy, theta).float().cpu().numpy()
            attrs = {"simulator": f"calotwin-{generator.family}", "simulator_version": "generator", "seed": run.seed}
            blocks.append(
                shower_dataset(cells, conditions.energy_gev, conditions.theta_rad, conditions.particle, geometry, attrs)
            )
    finally:
        generator.train(was_training)
    ds = concat_blocks(blocks)
    ds.attrs["n_events"] = run.n_events
    return ds
