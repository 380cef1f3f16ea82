"""The conditional flow-matching generator (CaloDREAM-style, two stages), in PyTorch only.

Stage 1, the shower's summary: a flow over ``1 + 7 n_layers`` numbers given the conditions
(log E_p/100 GeV, theta - pi/2): log(E_vis / E_p), and per layer the log energy fraction, the square
root of the number of cells above threshold, the transverse barycentre (x, y) and the log width
(x, y), in cell units, and the hottest cell's fraction of the layer; the barycentres relative to the
shower axis, a fit against the conditions (``axis_barycentres``). Stage 2, the
shapes: a flow over the log energies of one layer's cells (a row of n_x * n_y), the same field for
every layer, given the conditions, log(E_vis / E_p), the layer (one-hot) and the layer's stage-1
numbers. (``stage2_per_layer=False`` models all cells at once,
given the whole summary; on the small preset it learned less per CPU-minute: ``bench/fidelity.py``.)

Each stage is a velocity field ``v(x_t, t | c)`` (a residual MLP) trained by conditional flow
matching on straight paths ``x_t = (1 - t) x_0 + t x_1`` from standard normal noise ``x_0`` to the
standardised data ``x_1``, with target ``x_1 - x_0`` (Lipman et al. 2023; Liu et al. 2023).

Sampling solves both ODEs from ``t = 0`` to ``1`` with a fixed number of midpoint steps, stage 1
first, then assembles the showers (:meth:`FlowGenerator.assemble`):

1. in each layer the cells stage 2 ranks highest are kept, as many as stage 1 asked for;
2. their energies follow stage 2's log energies ``x`` measured from the threshold through a soft
   floor: ``thr x exp(k a)``, ``a = s softplus((x - log thr) / s)`` (``kept_softness``), with ``k``
   such that the layer carries exactly stage 1's energy (a layer whose moments this would take
   further from stage 1's than measuring from its lowest kept cell, which gets the threshold, is
   assembled that way instead: a stray hot cell far from the core);
3. the energy above the thresholds is re-weighted by an exponential tilt in x, y, x^2, y^2 so that
   the layer's barycentre and width become stage 1's (where the kept cells allow it; with
   ``layer_skewness``, which stage 1 then also learns, x^3 and y^3 give it stage 1's third moments too); with
   ``layer_peak`` this is done first, then the tilted layer's hottest cell gets stage 1's fraction
   and the other cells are tilted again around it (kept where the layer's moments stay within
   ``PEAK_TOLERANCE`` of stage 1's);
4. every other cell is 0.

So layer energies and occupancies are exactly stage 1's, the hottest cells and the transverse
moments nearly so.

Discrete parts of the data are made continuous (dequantised) for the flows: an empty cell's log
energy is drawn uniformly in a band a gap below the log threshold (``zero_gap``, ``zero_width``), an
empty layer's energy becomes ``threshold x u`` (``u`` uniform in (0, 1)), both below anything real;
an occupancy count ``n`` becomes ``sqrt(n + u)``; an empty layer's barycentre a little noise around
0 and a width ``w`` is stored as ``log(w + 0.02 (1 + u))``.

Every tensor operation here is traceable, so the whole sampler (both unrolled ODE solves and the
assembly) exports to ONNX and TorchScript (:mod:`dt_assets.model.export`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..physics.geometry import Geometry

#: the family name recorded in specs, registry tags and reproducibility records
FAMILY = "flow"
#: the data's cell threshold (MeV): the preprocessing's 1e-4 GeV
THRESHOLD_MEV = 0.1
ENERGY_SCALE_GEV = 100.0
#: a layer's width is stored as log(width + floor x (1 + u)) (cell units), so one-cell layers are no spike
WIDTH_FLOOR = 0.02
#: per-layer numbers of stage 1 besides the moments: the log fraction and sqrt(occupancy); with the moments,
#: 3 x this (barycentre x, y and log width x, y)
LAYER_STATS = 2
#: (``layer_peak``) how much further from stage 1's moments (cells, summed over x, y barycentre and width) a layer
#: with its hottest cell set may lie than without it and still keep it in full; at twice this it is refused
PEAK_TOLERANCE = 0.05
#: (``barycentre_shift``) the largest translation of a layer's log energies before the moment tilt (cells an axis)
MAX_LAYER_SHIFT = 1.5
#: (``barycentre_shift``) layers of this many kept cells or more are translated in full, fewer in part, 2 or less not
SHIFT_CELLS = 5
#: the largest linear, quadratic and (``layer_skewness``) cubic coefficients of the moment tilt (per standardised
#: width)
TILT_BOUNDS = (5.0, 2.5, 1.0)
#: (``layer_skewness``) a layer's third central moment m (cells^3) is stored as asinh(m / this): linear near 0,
#: logarithmic in the tails (the first layers of an inclined shower reach a few cells^3)
SKEW_SCALE = 0.01
#: (``layer_skewness``) step sizes the three-moment tilt tries along each Newton direction: it takes the one with the
#: lowest dual objective (or none), so the objective never rises and the solve converges
#: (``layer_skewness``) the cubic coefficient of the tilt is bounded so that it moves no free cell's logit by more
#: than this
CUBIC_LOGITS = 30.0
LINE_SEARCH = tuple(0.5**k for k in range(8))


@dataclass(frozen=True)
class FlowArchitecture:
    """The layer sizes of both velocity fields and the sampler's steps."""

    grid: tuple[int, int, int]
    stage1_hidden: int = 256
    stage1_blocks: int = 3
    stage2_hidden: int = 512
    stage2_blocks: int = 3
    time_features: int = 16
    stage1_steps: int = 32
    stage2_steps: int = 8  # see FlowTrainConfig.stage2_steps
    threshold_mev: float = THRESHOLD_MEV
    #: an empty cell's log energy lies uniformly in [log(threshold) - gap - width, log(threshold) - gap]. A flow blurs
    #: the gap between the empty cells' band and the threshold: with a gap of 2.3 (log units) stage 2 put 25-34% of the
    #: cells it ranks among a layer's kept ones inside it, and its layers came out 20-40% too wide before the moment
    #: tilt; with 0.3, 7-11% and 1-7% (layers 1-5; bench/README.md). A model keeps the gap it was trained with.
    zero_gap: float = 0.3
    zero_width: float = 1.0
    #: stage 1 also learns each layer's transverse barycentre and width, stage 2 is conditioned on them and
    #: the assembled layers are tilted to stage 1's barycentres and widths
    moments: bool = True
    #: stage 2 models each layer's cells (one row of x*y cells per layer, the same field for every layer, given the
    #: layer's index and stage-1 numbers) instead of all cells at once
    stage2_per_layer: bool = True
    #: Newton iterations of the moment tilt at assembly
    tilt_iterations: int = 10
    #: (with ``moments``) stage 1 stores each layer's barycentre relative to the shower axis: a least-squares fit,
    #: on the training showers, of the barycentres against the conditions (:func:`axis_features`), subtracted before
    #: the standardisation. Over 60-120 degrees the first layers' barycentres drift by about 1.7 cells while at 90
    #: degrees they fluctuate by 0.01-0.02 cells; standardised over all angles, stage 1 spread them about 3x too wide
    #: (bench/README.md). Models saved before this field load with it off.
    axis_barycentres: bool = True
    #: (with ``moments``) stage 1 also learns each layer's hottest cell as a fraction of the layer (stored as
    #: log(1 - fraction + floor (1 + u))), and the assembly gives the tilted layer's hottest cell that fraction and
    #: tilts the other cells again around it. Without it the shower's hottest cell came out 3-5% low in every cell
    #: of the grid and was, with the shower's skewness, what the classifier separated best (bench/README.md).
    layer_peak: bool = True
    #: a kept cell's energy is thr x exp(k a), a = s softplus((x - log thr) / s) with s this scale (log units):
    #: stage 2's log energy x measured from the threshold, a kept cell that stage 2 put below it landing just above
    #: it. Stage 2 puts about 30% of the cells it ranks among the kept ones between the empty cells' band and the
    #: threshold, where the data has none (a flow blurs the gap between the two modes). With 0, a is measured from the
    #: lowest kept cell (it gets the threshold), as models saved before this field do: those cells then stretch every
    #: layer's range of log energies, the k that gives stage 1's energy falls to 0.75-0.87 (1.02-1.10 with MC's own
    #: cells), the layers come out too wide and the moment tilt's narrowing takes their skewness (bench/README.md).
    kept_softness: float = 1.0
    #: (with ``moments`` and ``stage2_per_layer``) stage 2 is also given where in its cell each layer's barycentre
    #: lies, as sin and cos of 2 pi times the barycentre's offset from a cell centre (x and y). Given the barycentre
    #: as a number only, stage 2 drew each layer's energy towards the nearest cell centre (by 0.02-0.04 cells where
    #: the barycentre lay 0.1-0.4 of a cell from one), which the moment tilt then had to correct; with it, by about a
    #: third less (bench/README.md). Models saved before this field load with it off.
    subcell_phase: bool = True
    #: (sampling, with ``moments``) the moment tilt re-weights by exp(b c tanh(v^2 / c)) instead of exp(b v^2), v a
    #: cell's offset in the layer's standardised units: 0 keeps v^2. Narrowing a layer, exp(b v^2) presses its far
    #: kept cells to the threshold: the default flow put 47-79 cells a shower in the cell spectrum's lowest bin
    #: (0.100-0.133 MeV) where MC has 28-50 and its stage 2 alone 24-44; with c = 1.5, 38-53, and the 15 GeV cells'
    #: spectrum passes, but the classifier separates more (AUC 0.674 against 0.646; bench/README.md)
    tilt_width_saturation: float = 0.0
    #: (sampling, with ``moments``) before the moment tilt, stage 2's log energies of each layer are translated
    #: (linearly interpolated between neighbouring cells, edges held) by the distance from the barycentre of the layer
    #: assembled without the tilt to stage 1's, so that the tilt corrects what is left rather than the whole
    #: distance. Stage 2's barycentres scatter by 0.13-0.36 cells about stage 1's; moving them by the tilt's
    #: exp(a v) pressed the far cells on one side to the threshold. With it the default's 15-minute flow passes
    #: every check in 11 of 15 cells against 7 (bench/README.md). Models saved before this field load with it off.
    barycentre_shift: bool = True
    #: (with ``moments``) stage 1 also learns each layer's transverse third central moment (x, y; stored as
    #: asinh(m / SKEW_SCALE)), stage 2 is given it, and the moment tilt gains a cubic term per axis that gives the
    #: layer stage 1's third moment as well as its barycentre and width. The tilt's second-moment term takes a
    #: layer's skewness with its width; the classifier reads the shower's skewness and how it goes with its centre
    #: (bench/README.md). The three-moment solve is Newton's method with a line search on the tilt's convex dual.
    layer_skewness: bool = False

    def __post_init__(self) -> None:
        for name in ("stage1_hidden", "stage1_blocks", "stage2_hidden", "stage2_blocks", "time_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"flow architecture: {name} must be a positive integer, got {value!r}")
        for name in ("stage1_steps", "stage2_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"flow architecture: {name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.kept_softness) and self.kept_softness >= 0):
            raise ValueError(f"flow architecture: kept_softness must be finite and >= 0, got {self.kept_softness!r}")
        if not (math.isfinite(self.tilt_width_saturation) and self.tilt_width_saturation >= 0):
            raise ValueError(
                f"flow architecture: tilt_width_saturation must be finite and >= 0, got {self.tilt_width_saturation!r}"
            )
        if not self.threshold_mev > 0:
            raise ValueError(f"flow architecture: threshold_mev must be positive, got {self.threshold_mev!r}")
        for name in ("axis_barycentres", "layer_peak", "subcell_phase", "barycentre_shift", "layer_skewness"):
            if getattr(self, name) and not self.moments:
                raise ValueError(f"flow architecture: {name} needs moments=True")
        if self.layer_skewness and self.tilt_width_saturation > 0:
            raise ValueError("flow architecture: layer_skewness needs tilt_width_saturation=0 (the cubic tilt's solve)")
        if self.subcell_phase and not self.stage2_per_layer:
            raise ValueError("flow architecture: subcell_phase needs stage2_per_layer=True")

    @property
    def n_layers(self) -> int:
        return self.grid[2]

    @property
    def n_cells(self) -> int:
        return math.prod(self.grid)

    @property
    def layer_stats(self) -> int:
        """Stage 1's numbers per layer: the log fraction and sqrt(occupancy); with ``moments`` the barycentre and
        the log width in x and y; with ``layer_peak`` the hottest cell; with ``layer_skewness`` the third moment in x
        and y."""
        return LAYER_STATS + 4 * self.moments + self.layer_peak + 2 * self.layer_skewness

    @property
    def stage1_size(self) -> int:
        """log(E_vis/E_p) and ``layer_stats`` numbers per layer (stored stat by stat, each over the layers)."""
        return 1 + self.layer_stats * self.n_layers

    @property
    def noise_size(self) -> int:
        """Standard normal inputs of one shower: the start of both ODEs."""
        return self.stage1_size + self.n_cells

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FlowArchitecture:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"flow architecture: unknown key(s) {unknown}")
        # fields models lack if older
        before = {
            "axis_barycentres": False,
            "layer_peak": False,
            "kept_softness": 0.0,
            "subcell_phase": False,
            "barycentre_shift": False,
            "layer_skewness": False,
        }
        return cls(**{**before, **d, "grid": tuple(d["grid"])})


def axis_features(conditions: torch.Tensor) -> torch.Tensor:
    """The terms the layers' barycentres are fitted on (``axis_barycentres``): with u = theta - pi/2 and
    e = log(E_p / 100 GeV), (1, u, u^2, u^3, u e, u e^2); the drift with depth grows with the angle, and the depth of
    the shower (so the drift within a layer) with the energy. ``conditions`` as :meth:`FlowGenerator.conditions`."""
    e, u = conditions[:, :1], conditions[:, 1:2]
    return torch.cat([torch.ones_like(u), u, u**2, u**3, u * e, u * e**2], dim=1)


#: how many terms :func:`axis_features` has
AXIS_FEATURES = 6


def flow_architecture_for(geometry: Geometry, **sizes) -> FlowArchitecture:
    """The default sizes for a geometry's grid; keyword arguments override them."""
    return FlowArchitecture(grid=geometry.shape, **sizes)


class VelocityField(nn.Module):
    """v(x_t, t | c): a residual MLP (pre-norm blocks, SiLU) with sinusoidal time features; the output
    layer starts at zero, so an untrained field moves nothing."""

    frequencies: torch.Tensor  # a buffer

    def __init__(self, size: int, condition_size: int, hidden: int, blocks: int, time_features: int):
        super().__init__()
        self.register_buffer(
            "frequencies", torch.exp(torch.linspace(0.0, math.log(1000.0), time_features // 2 or 1)), persistent=False
        )
        n_time = 2 * len(self.frequencies)
        self.inp = nn.Linear(size + condition_size + n_time, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies[None, :]
        h = self.inp(torch.cat([x, condition, torch.sin(angles), torch.cos(angles)], dim=1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(nn.functional.silu(self.norm(h)))


def midpoint_solve(field: VelocityField, x: torch.Tensor, condition: torch.Tensor, steps: int) -> torch.Tensor:
    """x at t = 1 from x at t = 0 by ``steps`` explicit midpoint steps (a fixed graph: exports unrolled)."""
    h = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * h, dtype=x.dtype, device=x.device)
        half = x + 0.5 * h * field(x, t, condition)
        x = x + h * field(half, t + 0.5 * h, condition)
    return x


@dataclass
class Observed:
    """Showers as the stages see them, before dequantisation: conditions, log(E_vis/E_p), layer energies and
    occupancies, which cells are hit and their log energies, and (``moments``) each layer's barycentre and width."""

    conditions: torch.Tensor  # (B, 2)
    log_response: torch.Tensor  # (B, 1)
    layer: torch.Tensor  # (B, z), MeV
    count: torch.Tensor  # (B, z)
    hit: torch.Tensor  # (B, x*y, z), bool
    log_cells: torch.Tensor  # (B, x*y, z), log MeV where hit
    mean: torch.Tensor | None = None  # (B, 2, z), cell units
    width: torch.Tensor | None = None  # (B, 2, z), cell units
    peak: torch.Tensor | None = None  # (B, z): the hottest cell's fraction of the layer, 0 in empty layers
    third: torch.Tensor | None = None  # (B, 2, z): the third central moment, cells^3


@dataclass
class ShowerSummary:
    """What the two stages learn from a batch of showers (all float32 tensors)."""

    conditions: torch.Tensor  # (B, 2): log(E_p / 100 GeV), theta - pi/2
    stage1: torch.Tensor  # (B, 1 + 2 n_layers), not standardised
    cells: torch.Tensor  # (B, n_cells): log of the dequantised cell energies (MeV), not standardised


class FlowGenerator(nn.Module):
    """Two conditional flows and the standardisation of their inputs; see the module docstring.

    ``sample(noise, energy_gev, theta_rad)`` is deterministic given the noise (``noise_size`` standard
    normals per shower) and returns deposits in MeV, shape ``(B, x, y, z)``.
    """

    family = FAMILY
    # buffers (register_buffer in __init__)
    stage1_mean: torch.Tensor
    stage1_std: torch.Tensor
    axis_coef: torch.Tensor
    cells_mean: torch.Tensor
    cells_std: torch.Tensor
    cell_xy: torch.Tensor

    def __init__(self, geometry: Geometry, arch: FlowArchitecture | None = None):
        super().__init__()
        self.geometry = geometry
        self.arch = arch or flow_architecture_for(geometry)
        if tuple(self.arch.grid) != geometry.shape:
            raise ValueError(f"flow architecture grid {self.arch.grid} is not the geometry's {geometry.shape}")
        a = self.arch
        self.stage1 = VelocityField(a.stage1_size, 2, a.stage1_hidden, a.stage1_blocks, a.time_features)
        if a.stage2_per_layer:  # a row of a layer's cells, given the conditions, the layer and its stage-1 numbers
            size, condition = a.n_cells // a.n_layers, 2 + a.n_layers + 1 + a.layer_stats + 4 * a.subcell_phase
        else:
            size, condition = a.n_cells, 2 + a.stage1_size
        self.stage2 = VelocityField(size, condition, a.stage2_hidden, a.stage2_blocks, a.time_features)
        # standardisation of both stages' data: fitted on training data by fit_standardisation; until then a
        # guess from the geometry (the response its sampling fraction gives, even layers, a few hits each)
        n_z = a.n_layers
        mean = torch.zeros(a.stage1_size)
        mean[0] = math.log(1000.0 * geometry.sampling_fraction)  # MeV visible per GeV
        mean[1 : 1 + n_z] = -math.log(n_z)
        mean[1 + n_z : 1 + 2 * n_z] = math.sqrt(10.0)
        std = torch.ones(a.stage1_size)
        std[0] = 0.1
        self.register_buffer("stage1_mean", mean)
        self.register_buffer("stage1_std", std)
        if a.moments and a.axis_barycentres:  # barycentres (x, y per layer) as linear in axis_features; 0 until fitted
            self.register_buffer("axis_coef", torch.zeros(AXIS_FEATURES, 2 * n_z))
        self.register_buffer("cells_mean", torch.full((a.n_cells,), math.log(a.threshold_mev) - a.zero_gap))
        self.register_buffer("cells_std", torch.ones(a.n_cells))
        # transverse cell coordinates within a layer (cell units from the grid's centre), in reshape order
        n_x, n_y = a.grid[0], a.grid[1]
        x = torch.arange(n_x, dtype=torch.float32).repeat_interleave(n_y) - (n_x - 1) / 2
        y = torch.arange(n_y, dtype=torch.float32).repeat(n_x) - (n_y - 1) / 2
        self.register_buffer("cell_xy", torch.stack([x, y], dim=1), persistent=False)  # (x*y, 2)

    def spec(self) -> dict:
        return {"family": self.family, "geometry": self.geometry.to_dict(), "architecture": self.arch.to_dict()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> FlowGenerator:
        if spec.get("family") != FAMILY:
            raise ValueError(f"not a flow generator spec (family {spec.get('family')!r})")
        return cls(Geometry.from_dict(spec["geometry"]), FlowArchitecture.from_dict(spec["architecture"]))

    # --- the data side -------------------------------------------------------------------------
    def summarise(
        self,
        deposits_mev: torch.Tensor,
        energy_gev: torch.Tensor,
        theta_rad: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> ShowerSummary:
        """Conditions, stage-1 summary and log cell energies of showers (dequantised with ``generator``)."""
        return self.dequantise(self.observe(deposits_mev, energy_gev, theta_rad), generator)

    def observe(self, deposits_mev: torch.Tensor, energy_gev: torch.Tensor, theta_rad: torch.Tensor) -> Observed:
        """What the stages learn of showers, before dequantisation (computed once per batch)."""
        a = self.arch
        thr = a.threshold_mev
        cells = deposits_mev.reshape(len(deposits_mev), -1, a.n_layers).float()  # (B, x*y, z)
        hit = cells >= thr
        cells = torch.where(hit, cells, torch.zeros_like(cells))
        layer = cells.sum(dim=1)  # (B, z)
        observed = Observed(
            conditions=self.conditions(energy_gev, theta_rad),
            log_response=torch.log(layer.sum(dim=1, keepdim=True) / energy_gev[:, None].float()),
            layer=layer,
            count=hit.sum(dim=1).float(),
            hit=hit,
            log_cells=torch.log(cells.clamp_min(thr)),
        )
        if a.moments:
            observed.mean, observed.width = self._layer_moments(cells, layer)
            if a.layer_skewness:
                observed.third = self._layer_third_moments(cells, layer, observed.mean)
            if a.layer_peak:
                observed.peak = (cells / layer[:, None, :].clamp_min(1e-12)).amax(dim=1)  # 0 in empty layers
        return observed

    def dequantise(self, observed: Observed, generator: torch.Generator | None = None) -> ShowerSummary:
        """The summary of observed showers with fresh dequantisation noise (see the module docstring)."""
        return ShowerSummary(
            observed.conditions, self.stage1_data(observed, generator), self.cell_data(observed, generator)
        )

    def stage1_data(self, observed: Observed, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage 1's data (not standardised), dequantised with ``generator``."""
        thr = self.arch.threshold_mev
        layer, count = observed.layer, observed.count
        u = torch.rand((*layer.shape, 2), generator=generator, device=layer.device)
        layer = torch.where(layer > 0, layer, thr * u[..., 0].clamp_min(1e-6))
        total = layer.sum(dim=1, keepdim=True)
        parts = [observed.log_response, torch.log(layer / total), torch.sqrt(count + u[..., 1])]
        if self.arch.moments:
            assert observed.mean is not None and observed.width is not None  # observed with moments
            jitter = torch.rand(observed.mean.shape, generator=generator, device=layer.device)
            empty = (count == 0)[:, None, :]
            mean = torch.where(empty, 0.2 * (jitter - 0.5), observed.mean)  # empty layers: a little noise around 0
            width = torch.log(observed.width + WIDTH_FLOOR * (1 + jitter))
            parts += [mean.flatten(1), width.flatten(1)]
            if self.arch.layer_peak:  # an empty layer as a single cell's: fraction 1
                assert observed.peak is not None  # observed with the layer peak
                peak = torch.where(count > 0, observed.peak, torch.ones_like(observed.peak))
                parts.append(torch.log(1 - peak + WIDTH_FLOOR * (1 + jitter[:, 0])))
            if self.arch.layer_skewness:  # a one-cell or empty layer's 0 smeared by a tenth of the scale
                assert observed.third is not None  # observed with the layer skewness
                smear = torch.rand(observed.third.shape, generator=generator, device=layer.device) - 0.5
                parts.append(torch.asinh(observed.third / SKEW_SCALE + 0.2 * smear).flatten(1))
        return torch.cat(parts, dim=1)

    def cell_data(self, observed: Observed, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage 2's data (not standardised): the log cell energies, empty cells drawn in their band."""
        a = self.arch
        band = torch.rand(observed.hit.shape, generator=generator, device=observed.hit.device)
        fill = math.log(a.threshold_mev) - a.zero_gap - a.zero_width * band
        return torch.where(observed.hit, observed.log_cells, fill).reshape(len(fill), -1)

    def conditions(self, energy_gev: torch.Tensor, theta_rad: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.log(energy_gev.float() / ENERGY_SCALE_GEV), theta_rad.float() - math.pi / 2], dim=1)

    @torch.no_grad()
    def fit_standardisation(self, summary: ShowerSummary) -> None:
        """Set the standardisation (per variable, per cell) from a (large) summary of training showers, and with
        ``axis_barycentres`` first the barycentres' fit against the conditions."""
        if hasattr(self, "axis_coef"):
            x = axis_features(summary.conditions).double()
            y = summary.stage1[:, self._barycentres].double()
            self.axis_coef.copy_(torch.linalg.lstsq(x, y).solution.float())
        stage1 = self._axis_relative(summary.stage1, summary.conditions, -1.0)
        for name, values in (("stage1", stage1), ("cells", summary.cells)):
            getattr(self, f"{name}_mean").copy_(values.mean(dim=0))
            getattr(self, f"{name}_std").copy_(values.std(dim=0).clamp_min(1e-3))

    def standardised_stage1(self, stage1: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Stage 1's data (:meth:`stage1_data`) as its flow learns it: barycentres relative to the axis (with
        ``axis_barycentres``), every variable standardised."""
        return (self._axis_relative(stage1, conditions, -1.0) - self.stage1_mean) / self.stage1_std

    def stage1_values(self, standardised: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`standardised_stage1`: stage 1's numbers in their own units."""
        return self._axis_relative(standardised * self.stage1_std + self.stage1_mean, conditions, 1.0)

    @property
    def _barycentres(self) -> slice:
        n_z = self.arch.n_layers
        return slice(1 + 2 * n_z, 1 + 4 * n_z)

    def _axis_relative(self, stage1: torch.Tensor, conditions: torch.Tensor, sign: float) -> torch.Tensor:
        """``stage1`` with ``sign`` x the fitted axis added to its barycentres (unchanged without ``axis_coef``)."""
        if not hasattr(self, "axis_coef"):
            return stage1
        axis = axis_features(conditions).to(stage1.dtype) @ self.axis_coef.to(stage1.dtype)
        return self._with_barycentres(stage1, stage1[:, self._barycentres] + sign * axis)

    def _with_barycentres(self, stage1: torch.Tensor, barycentres: torch.Tensor) -> torch.Tensor:
        """``stage1`` with its barycentre columns replaced by ``barycentres``."""
        b = self._barycentres
        return torch.cat([stage1[:, : b.start], barycentres, stage1[:, b.stop :]], dim=1)

    def targets(self, summary: ShowerSummary) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(stage-1 data, stage-2 data, stage-2 condition), standardised, the stage-2 ones as its field takes
        them (one row per layer with ``stage2_per_layer``)."""
        stage1 = self.standardised_stage1(summary.stage1, summary.conditions)
        cells = (summary.cells - self.cells_mean) / self.cells_std
        return stage1, self.stage2_rows(cells), self.stage2_condition(summary.conditions, stage1)

    def stage2_rows(self, cells: torch.Tensor) -> torch.Tensor:
        """(B, n_cells) cells as stage 2's field takes them: (B * n_layers, x*y) per layer, or unchanged.
        Every reshape here and below leaves the batch axis to -1, so an export keeps it dynamic."""
        if not self.arch.stage2_per_layer:
            return cells
        n_z = self.arch.n_layers
        per_layer = self.arch.n_cells // n_z
        return cells.reshape(-1, per_layer, n_z).transpose(1, 2).reshape(-1, per_layer)

    def stage2_cells(self, rows: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`stage2_rows`: (B, n_cells)."""
        if not self.arch.stage2_per_layer:
            return rows
        n_z = self.arch.n_layers
        return rows.reshape(-1, n_z, self.arch.n_cells // n_z).transpose(1, 2).reshape(-1, self.arch.n_cells)

    def stage2_condition(self, conditions: torch.Tensor, stage1: torch.Tensor) -> torch.Tensor:
        """Stage 2's condition: [conditions, standardised stage 1] per shower, or per layer row the conditions,
        the layer (one-hot), log(E_vis/E_p) and the layer's stage-1 numbers (fraction, occupancy, moments). With
        ``axis_barycentres`` the barycentres it is given are where the layer's energy lies, in cells (the axis added
        back): a shape field given only the fluctuation about the axis must learn the drift with angle itself. With
        ``subcell_phase`` each layer row ends with its barycentre's phase within its cell (:meth:`_subcell_phase`)."""
        a = self.arch
        barycentres = None
        if hasattr(self, "axis_coef") or a.subcell_phase:  # where the layers' energy lies, in cells
            barycentres = self.stage1_values(stage1, conditions)[:, self._barycentres]
        if barycentres is not None and hasattr(self, "axis_coef"):
            stage1 = self._with_barycentres(stage1, barycentres)
        if not a.stage2_per_layer:
            return torch.cat([conditions, stage1], dim=1)
        n_z = a.n_layers
        n_stats = (stage1.shape[1] - 1) // n_z
        per_layer = stage1[:, 1:].reshape(-1, n_stats, n_z).transpose(1, 2)  # (B, z, stats)
        if barycentres is not None and a.subcell_phase:
            per_layer = torch.cat([per_layer, self._subcell_phase(barycentres)], dim=2)
        rows = torch.zeros_like(per_layer[:, :, :1])  # (B, z, 1): broadcasts the rest along the batch
        layer = torch.eye(n_z, device=stage1.device, dtype=stage1.dtype)[None] + rows
        shower = torch.cat([conditions, stage1[:, :1]], dim=1)[:, None, :] + rows
        return torch.cat([shower, layer, per_layer], dim=2).reshape(-1, shower.shape[2] + n_z + per_layer.shape[2])

    def _subcell_phase(self, barycentres: torch.Tensor) -> torch.Tensor:
        """sin and cos of 2 pi x each layer's barycentre's offset from the centre of its cell, in x and y: (B, z, 4)
        from ``barycentres`` (B, 2 z; cell units from the grid's centre, as stage 1 stores them)."""
        n_x, n_y, n_z = self.arch.grid
        # a cell's centre lies at a whole number of cells from the grid's first cell
        offset = torch.tensor([(n_x - 1) / 2, (n_y - 1) / 2], dtype=barycentres.dtype, device=barycentres.device)
        angle = 2 * math.pi * (barycentres.reshape(-1, 2, n_z) + offset[None, :, None])
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).transpose(1, 2)

    def loss(
        self, summary: ShowerSummary, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Conditional flow-matching loss of both stages (stage 2 given the true stage-1 summary)."""
        stage1, cells, condition2 = self.targets(summary)
        terms = {
            "stage1": flow_matching_loss(self.stage1, stage1, summary.conditions, generator),
            "stage2": flow_matching_loss(self.stage2, cells, condition2, generator),
        }
        return terms["stage1"] + terms["stage2"], terms

    # --- the generator side --------------------------------------------------------------------
    @property
    def noise_size(self) -> int:
        return self.arch.noise_size

    def sample(self, noise: torch.Tensor, energy_gev: torch.Tensor, theta_rad: torch.Tensor) -> torch.Tensor:
        """Deposits (B, x, y, z) in MeV from standard normal ``noise`` (B, noise_size) and the conditions."""
        a = self.arch
        conditions = self.conditions(energy_gev, theta_rad)
        z1, z2 = noise[:, : a.stage1_size], noise[:, a.stage1_size :]
        stage1 = midpoint_solve(self.stage1, z1, conditions, a.stage1_steps)
        rows = midpoint_solve(
            self.stage2, self.stage2_rows(z2), self.stage2_condition(conditions, stage1), a.stage2_steps
        )
        values = self.stage1_values(stage1, conditions)
        log_cells = self.stage2_cells(rows) * self.cells_std + self.cells_mean
        if a.barycentre_shift:  # (needs moments: the architecture refuses it without)
            log_cells = self.shifted_to_barycentres(values, log_cells, energy_gev)
        return self.assemble(values, log_cells, energy_gev)

    def shifted_to_barycentres(
        self, stage1: torch.Tensor, log_cells: torch.Tensor, energy_gev: torch.Tensor
    ) -> torch.Tensor:
        """Stage 2's log energies (B, n_cells) with each layer translated by the distance (at most
        MAX_LAYER_SHIFT cells an axis) from the barycentre of the layer assembled without the moment tilt to stage 1's
        (``barycentre_shift``)."""
        a = self.arch
        n_z = a.n_layers
        plain = self.assemble(stage1, log_cells, energy_gev, tilted=False).reshape(-1, a.n_cells // n_z, n_z)
        layer = plain.sum(dim=1)  # (B, z)
        got, _ = self._layer_moments(plain, layer)
        target = stage1[:, 1:].reshape(-1, a.layer_stats, n_z)[:, 2:4]  # (B, 2, z)
        # in full from SHIFT_CELLS kept cells on, none below 3: a layer of a few cells has a barycentre that jumps
        # where stage 2's ranking of two cells flips, and the whole layer would jump with it
        cells = (plain > 0).sum(dim=1).to(plain.dtype)  # (B, z)
        weight = ((cells - 2) / (SHIFT_CELLS - 2)).clamp(0, 1)[:, None, :]
        delta = (weight * (target - got)).clamp(-MAX_LAYER_SHIFT, MAX_LAYER_SHIFT)
        return translate_layers(log_cells.reshape(-1, *a.grid), delta).reshape(-1, a.n_cells)

    def assemble(
        self, stage1: torch.Tensor, log_cells: torch.Tensor, energy_gev: torch.Tensor, tilted: bool = True
    ) -> torch.Tensor:
        """Showers whose layer energies and occupancies are stage 1's, with stage 2's cells ranked in each layer;
        with ``tilted`` (and ``moments``) the layers tilted to stage 1's barycentres, widths and hottest cells."""
        a = self.arch
        n_z, thr = a.n_layers, a.threshold_mev
        per_layer = a.n_cells // n_z
        stats = stage1[:, 1:].reshape(-1, a.layer_stats, n_z)  # (B, stats, z)
        total = torch.exp(stage1[:, :1]) * energy_gev[:, None].float()
        layer_energy = total * torch.softmax(stats[:, 0], dim=1)  # exp(log fraction), renormalised: (B, z)
        count = torch.floor(stats[:, 1].clamp_min(0) ** 2).clamp(0, per_layer)  # (B, z)
        # no more cells than the layer's energy can hold at the threshold: every kept cell is visible
        count = torch.minimum(count, torch.floor(layer_energy / thr * (1 + 1e-6)))
        cells = log_cells.reshape(-1, per_layer, n_z)  # (B, x*y, z)
        # rank of each cell within its layer (0 = highest): keep the first `count`
        order = torch.argsort(cells, dim=1, descending=True)
        rank = torch.argsort(order, dim=1).float()
        keep = rank < count[:, None, :]
        n_kept = keep.sum(dim=1, keepdim=True).float()
        spare = layer_energy[:, None, :] - thr * n_kept  # (B, 1, z): the energy above the kept cells' thresholds
        # the kept cells' energies: thr x exp(k a), k such that the layer sums to stage 1's energy, a stage 2's log
        # energy measured from the lowest kept one (that cell gets the threshold) or, with kept_softness, from the
        # threshold through a soft floor
        lowest = torch.gather(torch.gather(cells, 1, order), 1, (count[:, None, :] - 1).clamp_min(0).long())
        anchored = torch.where(keep, cells - lowest, torch.zeros_like(cells))  # >= 0 where kept
        mean = width = fraction = third = None
        if a.moments and tilted:
            mean = stats[:, 2:4]  # (B, 2, z) barycentres
            width = (torch.exp(stats[:, 4:6]) - 1.5 * WIDTH_FLOOR).clamp_min(0)
            if a.layer_peak:
                fraction = (1 - (torch.exp(stats[:, 6]) - 1.5 * WIDTH_FLOOR)).clamp(0, 1)
            if a.layer_skewness:
                first = 6 + a.layer_peak
                # asinh(m / SKEW_SCALE), within what a layer of this grid can hold (a stray stage-1 draw would
                # overflow sinh); sinh written out (it exports)
                most = math.asinh((max(a.grid[:2]) / 2) ** 3 / SKEW_SCALE)
                stored = stats[:, first : first + 2].clamp(-most, most)
                third = SKEW_SCALE * 0.5 * (torch.exp(stored) - torch.exp(-stored))  # (B, 2, z), cells^3
        if not a.kept_softness > 0:
            energy = self._kept_energies(anchored, keep, layer_energy, spare, mean, width, fraction, third)
        else:
            s = a.kept_softness
            soft = torch.where(keep, s * nn.functional.softplus((cells - math.log(thr)) / s), torch.zeros_like(cells))
            energy = self._kept_energies(soft, keep, layer_energy, spare, mean, width, fraction, third)
            if mean is not None and width is not None:
                # stage 2 now and then ranks a cell far from the layer's core among its highest; measured from the
                # lowest kept cell, k < 1 damped it, from the threshold it can outweigh the core beyond what the tilt
                # corrects (one shower in a few hundred; its layer's barycentre cells off). A layer keeps the soft
                # floor where its moments stay as near stage 1's as anchored (within PEAK_TOLERANCE; in part up to
                # twice that)
                fallback = self._kept_energies(anchored, keep, layer_energy, spare, mean, width, fraction, third)
                energy = self._unless_further(energy, fallback, layer_energy, mean, width)
        return energy.reshape(-1, *a.grid)  # 0 where not kept (both candidates are)

    def _kept_energies(
        self,
        above: torch.Tensor,
        keep: torch.Tensor,
        layer_energy: torch.Tensor,
        spare: torch.Tensor,
        mean: torch.Tensor | None,
        width: torch.Tensor | None,
        fraction: torch.Tensor | None,
        third: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The kept cells' energies (B, x*y, z; 0 elsewhere) from their log energies ``above`` the lowest (0 where not
        kept): thr x exp(k above) with k per layer such that the layer holds ``layer_energy`` (B, z), ``spare`` (B, 1,
        z) of it above the kept cells' thresholds; with the barycentres ``mean`` and widths ``width`` (B, 2, z) tilted
        to them (and to the third moments ``third``, B, 2, z, where given), and with the hottest cell's ``fraction``
        of the layer (B, z) that cell set (see the module)."""
        thr = self.arch.threshold_mev
        zero = torch.zeros_like(above)
        spread = _exponent_for_sum(above, keep, (spare / thr).clamp_min(0))
        share = _normalised(torch.where(keep, torch.exp(spread * above) - 1, zero), keep)
        fixed = torch.where(keep, torch.full_like(above, thr), zero)  # what the shares come on
        free_energy = spare.clamp_min(0)
        if mean is None or width is None:
            return torch.where(keep, fixed + free_energy * share, zero)
        share = self._tilted_share(share, keep, layer_energy, fixed, free_energy, mean, width, third)
        energy = fixed + free_energy * share
        if fraction is not None:
            # the hottest cell of the tilted layer gets stage 1's fraction of the layer (all of it when alone), and
            # the other kept cells' shares of what is left are tilted again around it; a layer keeps this only where
            # its moments stay as near stage 1's as without it (within PEAK_TOLERANCE cells; in part up to twice
            # that): a hot cell away from the barycentre, which the rest cannot balance, is refused
            n_kept = keep.sum(dim=1, keepdim=True).float()
            hot_extra = (fraction[:, None, :] * layer_energy[:, None, :] - thr).clamp_min(0)
            hot_extra = torch.where(n_kept > 1, torch.minimum(hot_extra, free_energy), free_energy)  # (B, 1, z)
            index = torch.arange(above.shape[1], device=above.device)[None, :, None]
            hot = keep & (index == share.argmax(dim=1, keepdim=True))
            free = keep & ~hot
            free_energy = free_energy - hot_extra
            fixed = fixed + torch.where(hot, hot_extra, zero)
            share = self._tilted_share(
                _normalised(share, free), free, layer_energy, fixed, free_energy, mean, width, third
            )
            peaked = fixed + free_energy * share
            energy = self._unless_further(peaked, energy, layer_energy, mean, width)
        return torch.where(keep, energy, zero)

    def _tilted_share(
        self,
        share: torch.Tensor,
        free: torch.Tensor,
        layer_energy: torch.Tensor,
        fixed: torch.Tensor,
        free_energy: torch.Tensor,
        mean: torch.Tensor,
        width: torch.Tensor,
        third: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`tilt`'s shares; with the third moments ``third``, the three-moment tilt's per layer where its
        barycentre and width land as near stage 1's as the two-moment tilt's (:meth:`_further_weight`; that one here
        with its line search), else the two-moment tilt's: a third moment the kept cells cannot give (stage 2 kept
        other cells than the far ones that carry it) would otherwise pull the layer off its barycentre and width."""
        if third is None:
            return self.tilt(share, free, layer_energy, fixed, free_energy, mean, width)
        two = self.tilt(share, free, layer_energy, fixed, free_energy, mean, width, line_search=True)
        three = self.tilt(share, free, layer_energy, fixed, free_energy, mean, width, third)
        weight = self._further_weight(fixed + free_energy * three, fixed + free_energy * two, layer_energy, mean, width)
        return two + weight * (three - two)

    def _further_weight(
        self,
        candidate: torch.Tensor,
        reference: torch.Tensor,
        layer_energy: torch.Tensor,
        mean: torch.Tensor,
        width: torch.Tensor,
    ) -> torch.Tensor:
        """Per layer (B, 1, z) 1 where the moments of ``candidate`` (B, x*y, z) lie no further from ``mean`` and
        ``width`` than the reference's plus ``PEAK_TOLERANCE`` (cells), 0 from twice that, linearly in between
        (continuous, so that an exported graph's rounding cannot flip the choice)."""
        miss = [self._moment_miss(e, layer_energy, mean, width) for e in (candidate, reference)]
        return ((miss[1] + 2 * PEAK_TOLERANCE - miss[0]) / PEAK_TOLERANCE).clamp(0.0, 1.0)

    def _unless_further(
        self,
        candidate: torch.Tensor,
        reference: torch.Tensor,
        layer_energy: torch.Tensor,
        mean: torch.Tensor,
        width: torch.Tensor,
    ) -> torch.Tensor:
        """Per layer ``candidate`` (B, x*y, z), or ``reference`` where the candidate's moments lie further from
        ``mean`` and ``width`` than the reference's by more than twice ``PEAK_TOLERANCE`` (cells), linearly in between
        from one tolerance on (continuous, so that an exported graph's rounding cannot flip the choice). Both hold the
        threshold or more in the kept cells and 0 elsewhere, and so does the blend: held at the threshold against its
        rounding (next to a hot cell's energy a few ulps are 1e-5 of the threshold)."""
        weight = self._further_weight(candidate, reference, layer_energy, mean, width)
        blend = reference + weight * (candidate - reference)
        return torch.where(reference > 0, blend.clamp_min(self.arch.threshold_mev), blend)

    def _layer_moments(self, energy: torch.Tensor, layer_energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each layer's transverse barycentre and width (B, 2, z; cell units, 0 in empty layers) of cell energies
        ``energy`` (B, x*y, z) whose layers sum to ``layer_energy`` (B, z)."""
        weight = (energy / layer_energy[:, None, :].clamp_min(1e-12))[:, :, None, :]  # (B, x*y, 1, z)
        xy = self.cell_xy.to(energy.dtype)[None, :, :, None]  # (1, x*y, 2, 1)
        mean = (weight * xy).sum(dim=1)  # (B, 2, z)
        return mean, (weight * (xy - mean[:, None]) ** 2).sum(dim=1).clamp_min(0).sqrt()

    def _layer_third_moments(
        self, energy: torch.Tensor, layer_energy: torch.Tensor, mean: torch.Tensor
    ) -> torch.Tensor:
        """Each layer's transverse third central moment (B, 2, z; cells^3, 0 in empty layers) of cell energies
        ``energy`` (B, x*y, z) whose layers sum to ``layer_energy`` (B, z) and whose barycentres are ``mean``."""
        weight = (energy / layer_energy[:, None, :].clamp_min(1e-12))[:, :, None, :]
        xy = self.cell_xy.to(energy.dtype)[None, :, :, None]
        return (weight * (xy - mean[:, None]) ** 3).sum(dim=1)

    def _moment_miss(
        self, energy: torch.Tensor, layer_energy: torch.Tensor, mean: torch.Tensor, width: torch.Tensor
    ) -> torch.Tensor:
        """How far the layers of ``energy`` (B, x*y, z) lie from barycentres ``mean`` and widths ``width`` (B, 2, z):
        the sum of the four absolute differences in cells (B, 1, z)."""
        got, spread = self._layer_moments(energy, layer_energy)
        return ((got - mean).abs() + (spread - width).abs()).sum(dim=1, keepdim=True)

    def tilt(
        self,
        share: torch.Tensor,
        free: torch.Tensor,
        layer_energy: torch.Tensor,
        fixed: torch.Tensor,
        free_energy: torch.Tensor,
        mean: torch.Tensor,
        width: torch.Tensor,
        third: torch.Tensor | None = None,
        line_search: bool = False,
    ) -> torch.Tensor:
        """Shares of the ``free`` cells' energy re-weighted per layer by exp(a_x v_x + b_x v_x^2 + a_y v_y + b_y v_y^2),
        with v the cell coordinates standardised by the shares' own barycentre and width, the four found by Newton's
        method (each axis a 2 x 2 system) so that the layer's barycentre and width become stage 1's ``mean`` and
        ``width`` (B, 2, z; cell units). With the third central moments ``third`` (B, 2, z; cells^3) a cubic term
        c v^3 per axis gives the layer those too: each Newton step (3 x 3 per axis) is then taken at a length of
        ``LINE_SEARCH`` (or none) weighted by a soft minimum of the tilt's convex dual, so the objective never rises
        by more than a rounding (the two-moment tilt too with ``line_search``; with ``tilt_width_saturation``, whose
        basis is no dual's, at the length that lowers the squared miss of the statistics most). ``fixed``
        (B, x*y, z) is what the cells hold besides their shares of ``free_energy`` (B, 1, z). The tilt is bounded; a
        layer takes it in full where it brings the layer closer to the target by a tenth or more, in part where by
        less, and keeps its shares where it would not bring it closer, where it has fewer than two free cells, or no
        free energy."""
        order = 2 if third is None else 3
        u = self.cell_xy.to(share.dtype)[None, :, :, None]  # (1, x*y, 2 axes, 1)
        held = (fixed[:, :, None, None, :] * torch.stack([u**k for k in range(1, order + 1)], dim=3)).sum(dim=1)
        # the raw moments (B, 2 axes, order, z) the free part must have for the whole layer to have the target's
        moments = [mean, width**2 + mean**2]
        if third is not None:
            moments.append(third + 3 * mean * width**2 + mean**3)
        raw = (layer_energy[:, None, None, :] * torch.stack(moments, dim=2) - held) / free_energy.clamp_min(1e-12)[
            :, :, None, :
        ]
        # the coordinates standardised by the shares' own moments: a well-conditioned tilt
        p0 = share[:, :, None, :]  # (B, x*y, 1, z)
        mu = (p0 * u).sum(dim=1)  # (B, 2, z)
        sigma = ((p0 * (u - mu[:, None]) ** 2).sum(dim=1)).sqrt().clamp_min(0.3)
        v = (u - mu[:, None]) / sigma[:, None]  # (B, x*y, 2, z)
        stats = torch.stack([v**k for k in range(1, order + 1)], dim=3)  # (B, x*y, 2, order, z)
        # what the tilt re-weights by: the statistics themselves, or (tilt_width_saturation) a bounded width term
        c = self.arch.tilt_width_saturation
        basis = torch.stack([v, c * torch.tanh(v**2 / c)], dim=3) if c > 0 else stats
        m1, m2 = raw[:, :, 0], raw[:, :, 1]
        g1 = (m1 - mu) / sigma
        g2 = (m2 - 2 * mu * m1 + mu**2) / sigma**2
        goals = [g1, torch.maximum(g2, g1 * g1 + 1e-3)]
        if third is not None:
            goals.append((raw[:, :, 2] - 3 * mu * m2 + 3 * mu**2 * m1 - mu**3) / sigma**3)
        goal = torch.stack(goals, dim=2)  # (B, 2, order, z)
        # a layer with no free energy keeps its shares (below): its goal, raw moments over ~0, set to 0 (not taken;
        # a cubic's would overflow, and 0 x NaN is NaN)
        goal = torch.where((free_energy > 0)[:, :, None, :] & torch.isfinite(goal), goal, torch.zeros_like(goal))
        base = torch.where(free, torch.log(share.clamp_min(1e-30)), torch.full_like(share, -1e30))
        theta = torch.zeros_like(goal)
        bound = torch.tensor(TILT_BOUNDS[:order], device=share.device, dtype=share.dtype)[None, None, :, None]
        if third is not None:
            # the cubic's coefficient bounded so that it moves no free cell's logit by more than CUBIC_LOGITS: a
            # goal the kept cells cannot reach would drive it to a bound where exp(c v^3) of a far cell (v^3 up to
            # 10^4 in a narrow layer) leaves the line search comparing float32 roundings
            far = torch.where(free[:, :, None, :], v.abs(), torch.zeros_like(v)).amax(dim=1)  # (B, 2, z)
            cubic = torch.minimum(bound[:, :, 2], CUBIC_LOGITS / far.clamp_min(1.0) ** 3)
            bound = torch.cat([bound[:, :, :2] + torch.zeros_like(far)[:, :, None], cubic[:, :, None]], dim=2)

        def logits(t: torch.Tensor) -> torch.Tensor:  # (B, x*y, z)
            return base + (t[:, None] * basis).sum(dim=(2, 3))

        current = logits(theta)  # (B, x*y, z)
        for _ in range(self.arch.tilt_iterations):
            p = torch.softmax(current, dim=1)[:, :, None, None, :]
            expected = (p * stats).sum(dim=1)  # (B, 2, order, z)
            d = stats - expected[:, None]  # (B, x*y, 2, order, z)
            q = p[:, :, :, 0]  # (B, x*y, 1, z)
            # the Jacobian of the expected statistics in the coefficients: their covariance with the basis, damped
            # (Levenberg-Marquardt); symmetric where the basis is the statistics
            f = d if basis is stats else basis - (p * basis).sum(dim=1)[:, None]
            jacobian = [[(q * d[:, :, :, i] * f[:, :, :, j]).sum(dim=1) for j in range(order)] for i in range(order)]
            for i in range(order):
                jacobian[i][i] = jacobian[i][i] + 0.05
            step = _solve_small(jacobian, goal - expected)
            if third is None and basis is stats and not line_search:  # the two-moment tilt: bounded Newton steps
                theta = torch.maximum(torch.minimum(theta + step.clamp(-0.5, 0.5), bound), -bound)
                current = logits(theta)
                continue
            # with the cubic or the saturated width term: the Newton step scaled to at most 0.5 a coefficient (keeping
            # its direction) and kept within the bounds, then taken per layer at a length of LINE_SEARCH (or 0) by a
            # merit: the tilt's convex dual, log sum p exp(theta . s) - theta . goal, of which the step is a descent
            # direction (a soft minimum over the lengths, below), or (the saturated width term, not a dual's) the
            # squared distance of the statistics from the goal (the length that lowers it most). Without it the plain
            # tilt's Newton steps oscillate in a layer of one dominant cell (an export's float32 rounding then lands
            # elsewhere); the default (line_search off) keeps them for now, as its measured numbers (bench/README.md)
            # were taken with them
            largest = step.abs().amax(dim=(1, 2), keepdim=True)  # (B, 1, 1, z)
            step = step * (0.5 / largest.clamp_min(0.5))
            step = torch.maximum(torch.minimum(theta + step, bound), -bound) - theta
            along = (step[:, None] * basis).sum(dim=(2, 3))  # (B, x*y, z): the logits' change per unit length
            lengths = [0.0, *LINE_SEARCH]
            tries = torch.stack([current + h * along for h in lengths], dim=0)  # (n, B, x*y, z)
            if basis is stats:
                gain = (step * goal).sum(dim=(1, 2))  # (B, z)
                merit = torch.logsumexp(tries, dim=2) - torch.stack([h * gain for h in lengths], dim=0)
            else:
                reached = (torch.softmax(tries, dim=2)[:, :, :, None, None, :] * stats[None]).sum(dim=2)
                merit = (reached - goal[None]).pow(2).sum(dim=(2, 3))
            if basis is stats:
                # the lengths weighted by a soft minimum of the merit, not its argmin: continuous in the merits (an
                # exported graph's rounding cannot flip the choice between two near-equal lengths), and by the dual's
                # convexity the merit at the weighted length is at most the weighted merits', within a quarter of the
                # way from the best length's to no step's (_soft_min_length)
                length = _soft_min_length(merit, lengths)  # (B, z)
                theta = theta + length[:, None, None, :] * step
                current = current + length[:, None, :] * along
                continue
            best = merit.argmin(dim=0)  # (B, z)
            length = torch.tensor(lengths, dtype=share.dtype, device=share.device)[best]  # (B, z)
            theta = theta + length[:, None, None, :] * step
            current = torch.gather(tries, 0, best[None, :, None, :].expand_as(tries[:1]))[0]
        tilted = torch.softmax(current, dim=1)

        def miss(q: torch.Tensor) -> torch.Tensor:  # distance of the standardised moments from the goal
            got = (q[:, :, None, None, :] * stats).sum(dim=1)
            return (got - goal).abs().sum(dim=(1, 2))[:, None, :]  # (B, 1, z)

        # how much of the tilt to take: all of it where it cuts the miss by a tenth or more, none where it does not
        # cut it, in between linearly (continuous, so that an exported graph's rounding cannot flip the choice)
        before = miss(share)
        weight = ((before - miss(tilted)) / (0.1 * before + 1e-6)).clamp(0.0, 1.0)
        n_free = free.sum(dim=1, keepdim=True)
        weight = torch.where((n_free >= 2) & (free_energy > 0), weight, torch.zeros_like(weight))  # (B, 1, z)
        return share + weight * (torch.where(free, tilted, torch.zeros_like(tilted)) - share)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``[E_p / 100 GeV, theta, noise]`` (B, 2 + noise_size) to deposits in MeV (the MLflow model's signature)."""
        return self.sample(latent[:, 2:], latent[:, 0] * ENERGY_SCALE_GEV, latent[:, 1])


def translate_layers(field: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``field`` (B, x, y, z) with each layer translated by ``delta`` (B, 2, z) cells in x and y: linearly
    interpolated between neighbouring cells, the edge cells held beyond the grid (continuous in ``delta``)."""
    for axis in (0, 1):
        n = field.shape[1 + axis]
        shape = [1, 1, 1, 1]
        shape[1 + axis] = n
        # where each cell's new value comes from: (B, x or 1, 1 or y, z)
        source = torch.arange(n, dtype=field.dtype, device=field.device).reshape(shape) - delta[:, None, None, axis, :]
        low = torch.floor(source)
        step = (source - low).expand(field.shape)
        below = torch.gather(field, 1 + axis, low.clamp(0, n - 1).long().expand(field.shape))
        above = torch.gather(field, 1 + axis, (low + 1).clamp(0, n - 1).long().expand(field.shape))
        field = below + step * (above - below)
    return field


def _soft_min_length(merit: torch.Tensor, lengths: list[float]) -> torch.Tensor:
    """The step length (B, z) of a line search whose merits at ``lengths`` are ``merit`` (n, B, z; ``lengths[0]`` is 0,
    no step): the lengths weighted by exp(-(merit - best) / t), t = (no step's - best) / (4 log n) plus a floor of
    1e-6 (|no step's| + 1). The weighted merit is at most best + t log n: a quarter of the way from the best to no
    step's."""
    best = merit.amin(dim=0)
    scale = (merit[0] - best) / (4 * math.log(len(lengths))) + 1e-6 * (merit[0].abs() + 1)
    weight = torch.softmax(-(merit - best) / scale, dim=0)
    grid = torch.tensor(lengths, dtype=merit.dtype, device=merit.device)[:, None, None]
    return (weight * grid).sum(dim=0)


def _solve_small(matrix: list[list[torch.Tensor]], rhs: torch.Tensor) -> torch.Tensor:
    """x with ``matrix`` x = ``rhs`` for a 2 x 2 or 3 x 3 system per element: ``matrix[i][j]`` (B, 2, z) and
    ``rhs`` (B, 2, n, z), the solution stacked as ``rhs`` (Cramer's rule, written out so that it exports)."""
    r = [rhs[:, :, i] for i in range(rhs.shape[2])]
    if len(r) == 2:
        (a, b), (c, d) = matrix
        det = (a * d - b * c).clamp_min(1e-9)
        return torch.stack([(d * r[0] - b * r[1]) / det, (a * r[1] - c * r[0]) / det], dim=2)
    (a, b, c), (d, e, f), (g, h, i) = matrix
    # the cofactors; the damped covariance is positive definite, so the determinant is positive
    co = [[e * i - f * h, c * h - b * i, b * f - c * e], [f * g - d * i, a * i - c * g, c * d - a * f]]
    co.append([d * h - e * g, b * g - a * h, a * e - b * d])
    det = (a * co[0][0] + b * co[1][0] + c * co[2][0]).clamp_min(1e-12)
    return torch.stack([(co[k][0] * r[0] + co[k][1] * r[1] + co[k][2] * r[2]) / det for k in range(3)], dim=2)


def _normalised(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weights`` (B, x*y, z) where ``mask``, 0 elsewhere, normalised per layer; even over ``mask`` where they sum
    to 0."""
    weights = torch.where(mask, weights, torch.zeros_like(weights))
    total = weights.sum(dim=1, keepdim=True)
    even = mask.float() / mask.sum(dim=1, keepdim=True).float().clamp_min(1)
    return torch.where(total > 1e-30, weights / total.clamp_min(1e-30), even)


def _exponent_for_sum(
    above: torch.Tensor, keep: torch.Tensor, target: torch.Tensor, iterations: int = 12
) -> torch.Tensor:
    """k >= 0 per layer with sum over kept cells of (exp(k a) - 1) = target (B, 1, z), by Newton's method from
    k = 1 (the sum is convex and increasing in k); bounded to [0, 10]."""
    k = torch.ones_like(target)
    for _ in range(iterations):
        e = torch.where(keep, torch.exp(k * above), torch.ones_like(above))
        value = (e - 1).sum(dim=1, keepdim=True) - target
        slope = (above * e).sum(dim=1, keepdim=True).clamp_min(1e-9)
        k = (k - value / slope).clamp(0.0, 10.0)
    return k


def flow_matching_loss(
    field: nn.Module, x1: torch.Tensor, condition: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Mean squared error of ``field`` against the straight path's velocity ``x1 - x0`` at a uniform time t."""
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
    t = torch.rand((len(x1),), generator=generator, device=x1.device)
    xt = x0 + t[:, None] * (x1 - x0)
    return (field(xt, t, condition) - (x1 - x0)).pow(2).mean()
