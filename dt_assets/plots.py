"""Figures as PNG bytes (matplotlib, headless), for reports and asset metadata."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .showers.summary import ShowerSummary


def longitudinal_profile_png(summary: ShowerSummary, title: str = "") -> bytes:
    """Mean visible energy per layer against depth (X0), one curve per primary-energy bin."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=100)
    try:
        for label, profile in summary.mean_profiles().items():
            ax.plot(summary.layer_depth_x0, profile, marker="o", markersize=3, label=label)
        ax.set_xlabel("depth of the sensor layer [X0]")
        ax.set_ylabel("mean visible energy per layer [MeV]")
        ax.set_yscale("log")
        ax.set_title(title or "mean longitudinal profile", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)
