"""Running summaries of a stream of shower blocks (for metadata and plots, in bounded memory)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ..physics.particles import particle_name
from .schema import DEPOSIT

#: Primary-energy bins (GeV) of the summarised longitudinal profiles.
ENERGY_BINS_GEV = (1.0, 20.0, 50.0, 100.0, 200.0, 500.0)


@dataclass
class ShowerSummary:
    """Counts, ranges, visible-energy ratio and mean longitudinal profiles per energy bin."""

    n_events: int = 0
    cells_per_event: int = 0
    energy_range_gev: tuple[float, float] = (np.inf, -np.inf)
    theta_range_rad: tuple[float, float] = (np.inf, -np.inf)
    particles: Counter = field(default_factory=Counter)
    sampling_fraction: float = float("nan")
    visible_sum_mev: float = 0.0
    ratio_sum: float = 0.0  # sum over events of E_visible / (E_primary * sampling fraction)
    profile_sum_mev: np.ndarray | None = None  # (n_energy_bins, n_layers)
    profile_events: np.ndarray | None = None  # (n_energy_bins,)
    layer_depth_x0: np.ndarray | None = None

    def update(self, block: xr.Dataset) -> None:
        cells = np.asarray(block[DEPOSIT].values)
        energy = np.asarray(block["primary_energy"].values)
        theta = np.asarray(block["theta"].values)
        profile = cells.sum(axis=(1, 2))  # (n, n_layers)
        visible = profile.sum(axis=1)
        if self.profile_sum_mev is None:
            n_bins = len(ENERGY_BINS_GEV) - 1
            self.profile_sum_mev = np.zeros((n_bins, cells.shape[3]))
            self.profile_events = np.zeros(n_bins, dtype=np.int64)
            self.layer_depth_x0 = np.asarray(block["depth"].values) / float(block.attrs["x0_mm"])
        self.sampling_fraction = float(block.attrs["sampling_fraction"])
        self.cells_per_event = int(np.prod(cells.shape[1:]))
        self.n_events += len(energy)
        self.energy_range_gev = (
            min(self.energy_range_gev[0], energy.min()),
            max(self.energy_range_gev[1], energy.max()),
        )
        self.theta_range_rad = (min(self.theta_range_rad[0], theta.min()), max(self.theta_range_rad[1], theta.max()))
        self.particles.update(particle_name(int(c)) for c in block["particle"].values)
        self.visible_sum_mev += float(visible.sum())
        self.ratio_sum += float((visible / (energy * 1e3 * self.sampling_fraction)).sum())
        bins = np.clip(np.digitize(energy, ENERGY_BINS_GEV) - 1, 0, len(ENERGY_BINS_GEV) - 2)
        assert self.profile_sum_mev is not None and self.profile_events is not None  # made above
        np.add.at(self.profile_sum_mev, bins, profile)
        np.add.at(self.profile_events, bins, 1)

    @property
    def mean_visible_ratio(self) -> float:
        """Mean of E_visible / (E_primary x sampling fraction): the contained fraction."""
        return self.ratio_sum / max(self.n_events, 1)

    def mean_profiles(self) -> dict[str, np.ndarray]:
        """Mean visible energy per layer (MeV) for each populated energy bin, by bin label."""
        out: dict[str, np.ndarray] = {}
        if self.profile_sum_mev is None or self.profile_events is None:  # no events yet
            return out
        for i, count in enumerate(self.profile_events):
            if count:
                label = f"{ENERGY_BINS_GEV[i]:g}-{ENERGY_BINS_GEV[i + 1]:g} GeV ({count} events)"
                out[label] = self.profile_sum_mev[i] / count
        return out


def summarised(blocks: Iterable[xr.Dataset], summary: ShowerSummary) -> Iterator[xr.Dataset]:
    """Pass blocks through unchanged while adding each to ``summary``."""
    for block in blocks:
        summary.update(block)
        yield block
