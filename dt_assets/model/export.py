"""The generator for an MC framework: ONNX (run by ONNX Runtime, as Geant4's Par04 fast-simulation example
does) and TorchScript, with the preprocessing inverted inside the graph.

The exported graph is :class:`ExportedGenerator`:

========================  ==========================  =======  =========================================
name                      shape                       dtype    meaning
========================  ==========================  =======  =========================================
``noise`` (input)         ``[batch, latent - 2]``     float32  standard normal N(0, 1) noise
``energy_gev`` (input)    ``[batch]``                 float32  primary energy, GeV
``theta_rad`` (input)     ``[batch]``                 float32  polar angle, rad
``deposits_mev`` (output) ``[batch, x, y, z]``        float32  cell energy deposits, MeV
========================  ==========================  =======  =========================================

``batch`` is dynamic. Inside the graph runs the generator's own ``sample(noise, energy_gev,
theta_rad)``, then cells below the data's threshold (0.1 MeV for the reference preprocessing) are set
to 0, as they were in the training data. For the 3DGAN that is: the latent ``[E/100, theta, noise]``
built as :func:`~dt_assets.model.gan3d.latent_from_noise` builds it, the network, and the power
scaling inverted to MeV (:meth:`Transform.inverse`). For the flow family it is both ODE solves,
unrolled at the generator's fixed number of midpoint steps, and the assembly of the cells
(:meth:`~dt_assets.model.flow.FlowGenerator.sample`): the exported graph needs neither Python nor an
ODE library. With the same noise and conditions the output is what
:func:`~dt_assets.model.generation.generate` returns with that threshold applied (``generate`` keeps a
3DGAN's sub-threshold cells as the network made them; ``ExportedGenerator(apply_threshold=False)``
equals it).

This module does not import Dagster.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .flow import FlowGenerator
from .generation import ShowerGenerator

#: ONNX opset of the export: 17 is read by ONNX Runtime >= 1.14 (2023), old enough for the Geant4 builds that
#: link ONNX Runtime, and has every operator this network needs (ConvTranspose/Conv3d, LeakyReLU, Pow, Where).
OPSET = 17
INPUTS = ("noise", "energy_gev", "theta_rad")
OUTPUT = "deposits_mev"
ONNX_FILE = "generator.onnx"
TORCHSCRIPT_FILE = "generator.pt"
INTERFACE_FILE = "interface.json"
#: Bound on the maximum relative error of ONNX Runtime against PyTorch (as :func:`relative_error` defines it).
#: Both run the same float32 graph on the CPU and differ only in the order of the sums inside the
#: convolutions: a few float32 ulps (6e-8 each) per sum, grown through the layers and the x^(1/0.85)
#: inversion. Measured: 3e-6 to 1.4e-5 on untrained small and reference generators; 1e-4 leaves a margin
#: of ~10 and still catches any real mismatch (a wrong constant or operator would be off by >1e-2).
MAX_RELATIVE_ERROR = 1e-4
#: The flow's bound. Its sampler ends in an iterative assembly (per-layer ranks, a bounded Newton tilt run twice,
#: the hottest cell's choice) that grows the same ulps further: measured on the small test flow 2e-7 to 8e-5 with
#: one tilt and up to 4.5e-4 with the hottest cell set (batches of 1, 7 and 32). 1e-3 still catches a real mismatch.
FLOW_MAX_RELATIVE_ERROR = 1e-3
#: Conditions of :func:`check_onnx`: the ranges of the training data.
CHECK_ENERGY_GEV = (1.0, 500.0)
CHECK_THETA_DEG = (60.0, 120.0)


class ExportError(RuntimeError):
    """The exported model disagrees with PyTorch beyond the bound."""


class ExportedGenerator(nn.Module):
    """(noise [B, noise_size], energy_gev [B], theta_rad [B]) -> deposits_mev [B, x, y, z], all float32."""

    def __init__(self, generator: ShowerGenerator, apply_threshold: bool = True):
        super().__init__()
        self.generator = generator
        self.threshold_mev = threshold_mev(generator) if apply_threshold else 0.0

    def forward(self, noise: torch.Tensor, energy_gev: torch.Tensor, theta_rad: torch.Tensor) -> torch.Tensor:
        deposits = self.generator.sample(noise, energy_gev, theta_rad)
        if self.threshold_mev > 0:
            deposits = torch.where(deposits < self.threshold_mev, torch.zeros_like(deposits), deposits)
        return deposits


def threshold_mev(generator: ShowerGenerator) -> float:
    """The cell threshold of the generator's training data, MeV."""
    if isinstance(generator, FlowGenerator):
        return float(generator.arch.threshold_mev)
    return float(generator.transform.threshold * generator.transform.mev_per_unit)


def noise_size(generator: ShowerGenerator) -> int:
    return generator.noise_size


def example_inputs(
    generator: ShowerGenerator, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random float32 inputs: N(0, 1) noise, energies uniform in 1-500 GeV, angles uniform in 60-120 deg (rad)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, noise_size(generator)), dtype=np.float32)
    energy = rng.uniform(*CHECK_ENERGY_GEV, n).astype(np.float32)
    theta = np.radians(rng.uniform(*CHECK_THETA_DEG, n)).astype(np.float32)
    return torch.from_numpy(noise), torch.from_numpy(energy), torch.from_numpy(theta)


def interface(generator: ShowerGenerator, model_uri: str = "", opset: int = OPSET) -> dict[str, Any]:
    """The exported graph's contract as JSON-able data: names, shapes, dtypes, units, geometry, model."""
    shape = list(generator.geometry.shape)
    spec = generator.spec()
    return {
        "model_uri": model_uri,
        "family": generator.family,
        "onnx_opset": opset,
        "inputs": [
            {
                "name": "noise",
                "shape": ["batch", noise_size(generator)],
                "dtype": "float32",
                "units": "",
                "description": "standard normal N(0, 1) noise, one row per shower",
            },
            {
                "name": "energy_gev",
                "shape": ["batch"],
                "dtype": "float32",
                "units": "GeV",
                "description": "primary energy",
            },
            {"name": "theta_rad", "shape": ["batch"], "dtype": "float32", "units": "rad", "description": "polar angle"},
        ],
        "outputs": [
            {
                "name": OUTPUT,
                "shape": ["batch", *shape],
                "dtype": "float32",
                "units": "MeV",
                "description": "energy deposited per cell (x, y, z); cells below threshold_mev are 0",
            }
        ],
        "threshold_mev": threshold_mev(generator),
        "conditions": {"energy_gev": list(CHECK_ENERGY_GEV), "theta_deg": list(CHECK_THETA_DEG)},
        "geometry": generator.geometry.to_dict(),
        "architecture": spec["architecture"],
        **({"transform": spec["transform"]} if "transform" in spec else {}),
    }


def _wrapper(generator: ShowerGenerator) -> ExportedGenerator:
    return ExportedGenerator(generator.cpu().eval()).eval()


def export_onnx(generator: ShowerGenerator, path: str | Path, opset: int = OPSET) -> Path:
    """Write the generator as ONNX (batch axis dynamic) with the TorchScript-based exporter; returns the path."""
    path = Path(path)
    wrapper = _wrapper(generator)
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter: no onnxscript needed
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)  # the no-op crop of Generator.forward
        torch.onnx.export(
            wrapper,
            example_inputs(generator, 2),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={name: batch for name in (*INPUTS, OUTPUT)},
        )
    return path


def export_torchscript(generator: ShowerGenerator, path: str | Path) -> Path:
    """Write the generator as TorchScript (traced; the batch size is not fixed); returns the path."""
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(_wrapper(generator), example_inputs(generator, 2))
    traced.save(str(path))
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported generator."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def relative_error(actual: np.ndarray, expected: np.ndarray, threshold_mev: float) -> float:
    """The maximum over showers of max |actual - expected| / max(expected), over the shower's cells above the
    threshold (in either output). A cell one output zeroed counts by how far the other output has it above the
    threshold: a cell at the threshold falls either side by rounding, one well above it counts in full.

    Normalising by the shower's hottest cell, not by each cell, keeps the measure about the shower: a
    0.1 MeV cell made from sums that cancel can differ by 1e-3 of itself (1e-4 MeV) without mattering.
    A shower with no cell above threshold counts 0.
    """
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ExportError(f"output shape {actual.shape}, expected {expected.shape}")
    axes = tuple(range(1, expected.ndim))
    above_a, above_e = actual >= threshold_mev, expected >= threshold_mev
    difference = np.where(above_a & above_e, np.abs(actual - expected), 0.0)
    difference = np.where(above_e & ~above_a, expected - threshold_mev + np.abs(actual), difference)
    difference = np.where(above_a & ~above_e, actual - threshold_mev + np.abs(expected), difference)
    difference = difference.max(axis=axes)
    peak = expected.max(axis=axes)
    ratio = np.divide(difference, peak, out=np.zeros_like(peak), where=peak > 0)
    ratio[(peak <= 0) & (difference > 0)] = 1.0
    return float(ratio.max(initial=0.0))


def error_bound(generator: ShowerGenerator) -> float:
    """The largest relative error (:func:`relative_error`) an export of ``generator``'s family may have."""
    return FLOW_MAX_RELATIVE_ERROR if generator.family == "flow" else MAX_RELATIVE_ERROR


def check_onnx(
    generator: ShowerGenerator,
    path: str | Path,
    n: int = 64,
    seed: int = 0,
    bound: float | None = None,
) -> float:
    """ONNX Runtime (CPU) against the PyTorch wrapper on ``n`` random conditions; the maximum relative error.

    Inputs from :func:`example_inputs` (energies 1-500 GeV, angles 60-120 deg); the error is
    :func:`relative_error` on the thresholded MeV outputs (each difference over its shower's hottest cell,
    cells above threshold). Raises :class:`ExportError` above ``bound`` (by default :func:`error_bound`)
    (or on a non-finite output).
    """
    bound = error_bound(generator) if bound is None else bound
    inputs = example_inputs(generator, n, seed)
    with torch.no_grad():
        expected = _wrapper(generator)(*inputs).numpy()
    session = onnx_session(path)
    (actual,) = session.run([OUTPUT], dict(zip(INPUTS, (t.numpy() for t in inputs), strict=True)))
    if not np.isfinite(actual).all():
        raise ExportError(f"{path}: ONNX Runtime returned non-finite deposits")
    error = relative_error(actual, expected, threshold_mev(generator))
    if not math.isfinite(error) or error > bound:
        raise ExportError(
            f"{path}: ONNX Runtime differs from PyTorch by a relative {error:.3g} on {n} showers "
            f"(bound {bound:g}); the export is not faithful"
        )
    return error
