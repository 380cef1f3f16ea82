"""The angle-conditioned 3DGAN (Khattak, Vallecorsa et al., EPJC 82:386, 2022; PyTorch port in itwinai).

Generator: [E_p/100, theta, 254 N(0,1) noise] -> Linear(256 -> 8*bx*by*bz) -> view (8, bx, by, bz)
-> trilinear upsampling -> seven Conv3d (8->8->6->6->6->6->6->1) with zero padding between, each
ReLU then BatchNorm3d, final ReLU. Discriminator: four Conv3d (1->16->8->8->8), LeakyReLU, dropout
0.2, BatchNorm after the last three, AvgPool(2), flatten; heads: real/fake (a *logit*) and energy
regression; plus two outputs computed from the un-scaled input x^(1/power): total energy and the
incidence angle from per-layer barycentres.

For ``clic_ecal_51x51x25`` the layers are the reference ones (base (9, 9, 8), upsampling x6,
kernels (6,6,8), (4,4,6)x3, (3,3,5), (3,3,3), (2,2,2); discriminator kernels (5,6,6)). Other grids
get a scaled-down variant of the same structure: 3x3x3 kernels with size-preserving padding, the
base grid and upsampling chosen so the output is the geometry's grid, and the noise multiplied by
E_p/100 as in the first (fixed-angle) 3DGAN. With the reference's plain concatenation, the two
conditions compete with 254 noise inputs and the energy response takes thousands of steps to
appear, which is fine on a GPU and out of reach of a CPU test or demo.

Fixed defects of the reference: the real/fake head returns a logit and the loss is
BCE-with-logits once (the reference applied it after a sigmoid), and a collapsed training raises an
error (the reference called ``sys.exit()``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..physics.geometry import DEFAULT_GEOMETRY, Geometry, get_geometry

LATENT_SIZE = 256  # 2 conditions + 254 noise dimensions


@dataclass(frozen=True)
class ConvSpec:
    """One Conv3d layer: output channels, kernel (x, y, z), zero padding after it ((x, y, z), both sides)."""

    channels: int
    kernel: tuple[int, int, int]
    pad_after: tuple[int, int, int] = (0, 0, 0)
    padding: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class Architecture:
    """Everything that fixes the layer shapes of a generator/discriminator pair for one grid."""

    grid: tuple[int, int, int]
    base: tuple[int, int, int]
    upsample: int
    generator: tuple[ConvSpec, ...]
    discriminator: tuple[ConvSpec, ...]
    latent_size: int = LATENT_SIZE
    base_channels: int = 8
    #: Multiply the noise by E_p/100, as the first (fixed-angle) 3DGAN did. Off in the reference (its
    #: Keras code has the line commented out). On in the scaled-down variants: it makes the input almost
    #: deterministic at 10-15 GeV, but without it an 80-step training of the small preset learned no energy
    #: response at all (the same mean visible energy at 20 and 90 GeV), with it 195 and 904 MeV (MC: 207, 929).
    noise_times_energy: bool = False
    #: Give the real/fake head the conditions [E_p/100, theta] beside the features. Off in the reference
    #: (its layers and parameter count are the published ones), on in the scaled-down variants.
    conditioned_discriminator: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        def convs(items):
            return tuple(
                ConvSpec(c["channels"], tuple(c["kernel"]), tuple(c["pad_after"]), tuple(c["padding"])) for c in items
            )

        return cls(
            grid=tuple(d["grid"]),
            base=tuple(d["base"]),
            upsample=int(d["upsample"]),
            generator=convs(d["generator"]),
            discriminator=convs(d["discriminator"]),
            latent_size=int(d["latent_size"]),
            base_channels=int(d["base_channels"]),
            noise_times_energy=bool(d.get("noise_times_energy", False)),
            conditioned_discriminator=bool(d.get("conditioned_discriminator", False)),
        )


#: The reference layers (itwinai / CERN openlab) for the 51 x 51 x 25 grid.
REFERENCE = Architecture(
    grid=(51, 51, 25),
    base=(9, 9, 8),
    upsample=6,
    generator=(
        ConvSpec(8, (6, 6, 8), pad_after=(2, 2, 1)),
        ConvSpec(6, (4, 4, 6), pad_after=(2, 2, 1)),
        ConvSpec(6, (4, 4, 6), pad_after=(2, 2, 1)),
        ConvSpec(6, (4, 4, 6), pad_after=(1, 1, 0)),
        ConvSpec(6, (3, 3, 5), pad_after=(1, 1, 0)),
        ConvSpec(6, (3, 3, 3)),
        ConvSpec(1, (2, 2, 2)),
    ),
    discriminator=(
        ConvSpec(16, (5, 6, 6), padding=(2, 3, 3), pad_after=(0, 0, 1)),
        ConvSpec(8, (5, 6, 6), pad_after=(0, 0, 1)),
        ConvSpec(8, (5, 6, 6)),
        ConvSpec(8, (5, 6, 6)),
    ),
)


def architecture_for(geometry: str | Geometry = DEFAULT_GEOMETRY) -> Architecture:
    """The reference layers for the 51 x 51 x 25 grid, a scaled-down variant for any other grid."""
    grid = get_geometry(geometry).shape
    if grid == REFERENCE.grid:
        return REFERENCE
    # Five size-preserving 3x3x3 convolutions, then 3x3x3 and 2x2x2 without padding: the
    # upsampled grid must be the output grid + 3 in every direction. The largest factor that
    # divides it exactly is used (else 3, and the output is cropped to the grid).
    target = [n + 3 for n in grid]
    upsample = next((f for f in (6, 5, 4, 3, 2) if all(t % f == 0 for t in target)), 3)
    base = tuple(math.ceil(t / upsample) for t in target)
    return Architecture(
        grid=grid,
        base=base,  # type: ignore[arg-type]
        upsample=upsample,
        generator=(
            *(ConvSpec(c, (3, 3, 3), padding=(1, 1, 1)) for c in (8, 6, 6, 6, 6)),
            ConvSpec(6, (3, 3, 3)),
            ConvSpec(1, (2, 2, 2)),
        ),
        discriminator=tuple(ConvSpec(c, (3, 3, 3), padding=(1, 1, 1)) for c in (16, 8, 8, 8)),
        noise_times_energy=True,
        conditioned_discriminator=True,
    )


def _pad(p: tuple[int, int, int]) -> nn.Module:
    """Zero padding of (x, y, z) cells on both sides (ConstantPad3d takes the last dim first)."""
    return nn.ConstantPad3d((p[2], p[2], p[1], p[1], p[0], p[0]), 0.0) if any(p) else nn.Identity()


class Generator(nn.Module):
    """Conditions (E_p/100, theta) and noise to power-scaled cell energies, shape (N, 1, *grid).

    The network works on an O(1) scale: its output is multiplied by ``output_scale`` (a buffer, not a
    weight), which :func:`calibrate_output` sets so that an untrained generator already makes showers of
    the data's visible energy. (Without it, an untrained small generator makes 2000-3100 GeV where the
    MC has 0.15-1 GeV, the energy-sum loss starts at 1e4-1e5 and the cheapest way down, through the final
    ReLU, is to switch cells off for good.)
    """

    output_scale: torch.Tensor  # a buffer

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.linear = nn.Linear(arch.latent_size, arch.base_channels * math.prod(arch.base))
        self.upsample = nn.Upsample(scale_factor=arch.upsample, mode="trilinear", align_corners=False)
        layers: list[nn.Module] = []
        channels = arch.base_channels
        last = len(arch.generator) - 1
        for i, spec in enumerate(arch.generator):
            conv = nn.Conv3d(channels, spec.channels, spec.kernel, padding=spec.padding)
            (nn.init.xavier_normal_ if i == last else nn.init.kaiming_uniform_)(conv.weight)
            layers += [conv, nn.ReLU()]
            if i < last - 1:  # the reference has no BatchNorm after the last two convolutions
                layers.append(nn.BatchNorm3d(spec.channels, eps=1e-6))
            layers.append(_pad(spec.pad_after))
            channels = spec.channels
        self.convs = nn.Sequential(*layers)
        self.register_buffer("output_scale", torch.ones(()))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.linear(latent).view(-1, self.arch.base_channels, *self.arch.base)
        x = self.convs(self.upsample(x)) * self.output_scale
        return x[(..., *(slice(0, n) for n in self.arch.grid))]  # a no-op for the presets


#: edges (MeV of visible cell energy) of the cell-energy histogram the fifth loss compares
COUNT_EDGES_MEV = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, math.inf)
#: softness (in ln E) of the histogram's bin edges, so that the counts have gradients
COUNT_SOFTNESS = 0.1


@dataclass
class DiscriminatorOutput:
    """Real/fake logit, regressed E_p/100, computed angle (rad), computed total energy and computed cell counts
    per energy bin (:data:`COUNT_EDGES_MEV`)."""

    logit: torch.Tensor
    energy: torch.Tensor
    angle: torch.Tensor
    total: torch.Tensor
    counts: torch.Tensor | None = None


class Discriminator(nn.Module):
    """Judges power-scaled showers; also measures their total energy, angle and cell-energy histogram from
    x^(1/power). With ``conditioned_discriminator`` the real/fake head sees the conditions too."""

    def __init__(self, arch: Architecture, geometry: Geometry, power: float = 0.85, mev_per_unit: float = 1000.0):
        super().__init__()
        self.arch, self.power, self.mev_per_unit = arch, power, mev_per_unit
        layers: list[nn.Module] = []
        channels = 1
        for i, spec in enumerate(arch.discriminator):
            layers.append(nn.Conv3d(channels, spec.channels, spec.kernel, padding=spec.padding))
            layers.append(nn.LeakyReLU())
            if i > 0:
                layers.append(nn.BatchNorm3d(spec.channels, eps=1e-6))
            layers += [nn.Dropout(0.2), _pad(spec.pad_after)]
            channels = spec.channels
        layers += [nn.AvgPool3d(2), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        n_features = self.features(torch.zeros(1, 1, *arch.grid)).shape[1]
        self.real_fake = nn.Linear(n_features + (2 if arch.conditioned_discriminator else 0), 1)
        self.energy = nn.Linear(n_features, 1)
        self.angle_estimator = AngleEstimator(geometry)

    def forward(self, cells: torch.Tensor, conditions: torch.Tensor | None = None) -> DiscriminatorOutput:
        """``cells`` (N, 1, x, y, z) power-scaled; ``conditions`` (N, 2) [E_p/100, theta], needed when the
        real/fake head is conditioned."""
        features = self.features(cells)
        unscaled = cells.clamp_min(0).pow(1.0 / self.power)
        head = features
        if self.arch.conditioned_discriminator:
            if conditions is None:
                raise ValueError("this discriminator's real/fake head is conditioned: pass [E_p/100, theta]")
            head = torch.cat([features, conditions.to(features.dtype)], dim=1)
        return DiscriminatorOutput(
            logit=self.real_fake(head).squeeze(1),
            energy=self.energy(features).squeeze(1),
            angle=self.angle_estimator(unscaled),
            total=unscaled.sum(dim=(1, 2, 3, 4)),
            counts=cell_counts(unscaled * self.mev_per_unit),
        )


def cell_counts(cells_mev: torch.Tensor) -> torch.Tensor:
    """Soft number of cells per bin of :data:`COUNT_EDGES_MEV` (N, bins): each edge a sigmoid in ln E of width
    :data:`COUNT_SOFTNESS`, so that the count has a gradient (the reference's hard count has none)."""
    log_e = torch.log(cells_mev.float().flatten(1) + 1e-6)[:, :, None]
    edges = torch.tensor([math.log(e) for e in COUNT_EDGES_MEV[:-1]], device=cells_mev.device)
    above = torch.sigmoid((log_e - edges) / COUNT_SOFTNESS)  # (N, cells, edges)
    above = torch.cat([above, torch.zeros_like(above[:, :, :1])], dim=2)
    return (above[:, :, :-1] - above[:, :, 1:]).sum(dim=1)


class AngleEstimator(nn.Module):
    """Incidence angle (rad) from per-layer energy barycentres, in physical units.

    Per layer it takes the energy-weighted mean x (mm); a line x(z) fitted by least squares with the
    layer energies as weights gives dx/dz = cot(theta), so theta = pi/2 - atan(dx/dz). (The
    reference averages per-layer angles in cell-index units; with 5.1 mm cells and 3.8 mm layers
    that is not theta.) Empty showers give pi/2.
    """

    x: torch.Tensor  # buffers: the cell centres across (mm) and the layer depths (mm)
    z: torch.Tensor

    def __init__(self, geometry: Geometry):
        super().__init__()
        self.register_buffer("x", torch.tensor(geometry.x_centres_mm(), dtype=torch.float32), persistent=False)
        self.register_buffer("z", torch.tensor(geometry.layer_depths_mm(), dtype=torch.float32), persistent=False)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        cells = cells.float().flatten(0, 1) if cells.dim() == 5 else cells.float()  # (N, x, y, z)
        per_layer = cells.sum(dim=2)  # (N, x, z)
        weight = per_layer.sum(dim=1)  # (N, z): layer energies
        x_bar = _safe_divide((per_layer * self.x[None, :, None]).sum(dim=1), weight)
        total = weight.sum(dim=1, keepdim=True)
        z_mean = _safe_divide((weight * self.z).sum(dim=1, keepdim=True), total)
        x_mean = _safe_divide((weight * x_bar).sum(dim=1, keepdim=True), total)
        dz = self.z - z_mean
        slope = _safe_divide((weight * dz * (x_bar - x_mean)).sum(dim=1), (weight * dz * dz).sum(dim=1))
        return math.pi / 2 - torch.atan(slope)


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator where the denominator is > 0, else 0, with finite gradients everywhere."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, torch.ones_like(denominator)), 0.0)


def make_latent(
    arch: Architecture,
    energy_gev: torch.Tensor,
    theta_rad: torch.Tensor,
    energy_scale_gev: float = 100.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The generator input [E_p/100, theta, noise] (N, latent_size), the noise drawn from ``generator``."""
    noise = torch.randn((len(energy_gev), arch.latent_size - 2), generator=generator, device=energy_gev.device)
    return latent_from_noise(arch, noise, energy_gev, theta_rad, energy_scale_gev)


def latent_from_noise(
    arch: Architecture,
    noise: torch.Tensor,
    energy_gev: torch.Tensor,
    theta_rad: torch.Tensor,
    energy_scale_gev: float = 100.0,
) -> torch.Tensor:
    """[E_p/100, theta, noise] from given N(0, 1) ``noise`` (N, latent_size - 2); noise x E_p/100 where the
    architecture says so."""
    energy = (energy_gev / energy_scale_gev).float()
    if arch.noise_times_energy:
        noise = noise * energy[:, None]
    return torch.cat([torch.stack([energy, theta_rad.float()], dim=1), noise], dim=1)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def gan_losses(
    out: DiscriminatorOutput,
    is_real: torch.Tensor,
    energy: torch.Tensor,
    angle: torch.Tensor,
    total: torch.Tensor,
    weights: tuple[float, ...] = (3.0, 0.1, 25.0, 0.1),
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference's loss: BCE (on logits, once), MAPE on energy, L1 on angle, MAPE on the sum, and, with a
    fifth weight and target ``counts``, the cell-energy histogram term (:func:`count_error`).

    Returns the weighted total and the unweighted terms.
    """
    terms = {
        "real_fake": F.binary_cross_entropy_with_logits(out.logit.float(), is_real.float()),
        "energy": mape(out.energy.float(), energy),
        "angle": F.l1_loss(out.angle.float(), angle),
        "total": mape(out.total.float(), total),
    }
    if len(weights) == 5:
        if counts is None or out.counts is None:
            raise ValueError("a fifth loss weight needs the target cell counts")
        terms["counts"] = count_error(out.counts, counts)
    weighted = sum(w * t for w, t in zip(weights, terms.values(), strict=True))
    return cast(torch.Tensor, weighted), terms  # sum's start 0 is never returned: there are 4 or 5 terms


def count_error(counts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean relative error of cell counts per bin, in percent, with +1 in the denominator (bins may be empty)."""
    return (100.0 * (counts.float() - target).abs() / (target + 1.0)).mean()


def calibrate_output(generator: Generator, latent: torch.Tensor, target_total: float, power: float = 0.85) -> None:
    """Set ``output_scale`` so that the generator's mean un-scaled shower sum (sum of x^(1/power)) on ``latent``
    is ``target_total`` (the data's, in the transform's units), in the mode the generator is in."""
    with torch.no_grad():
        generator.output_scale.fill_(1.0)
        made = float(generator(latent).float().clamp_min(0).pow(1.0 / power).sum(dim=(1, 2, 3, 4)).mean())
        if made > 0 and math.isfinite(made):
            generator.output_scale.fill_((target_total / made) ** power)


def refresh_batchnorm(generator: nn.Module, latents: list[torch.Tensor]) -> None:
    """Recompute the BatchNorm running statistics of ``generator`` as exact averages over ``latents`` (its
    weights are an average, so the running statistics of the trained weights do not fit them)."""
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = generator.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    generator.train()
    with torch.no_grad():
        for latent in latents:
            generator(latent)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    generator.train(was_training)


def mape(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute percentage error, in percent (as Keras' MeanAbsolutePercentageError)."""
    return (100.0 * (target - prediction).abs() / target.abs().clamp_min(1e-7)).mean()
