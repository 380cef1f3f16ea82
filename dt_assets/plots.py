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
            assert summary.layer_depth_x0 is not None  # set with the profiles
            ax.plot(summary.layer_depth_x0, profile, marker="o", markersize=3, label=label)
        ax.set_xlabel("depth of the sensor layer [X0]")
        ax.set_ylabel("mean visible energy per layer [MeV]")
        ax.set_yscale("log")
        ax.set_title(title or "mean longitudinal profile", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def loss_curves_png(history: list[dict[str, float]], title: str = "3DGAN losses") -> bytes:
    """Per-epoch losses (discriminator on real and fake, generator, validation) on a log scale."""
    fig, (losses, energy) = plt.subplots(1, 2, figsize=(9.0, 3.4), dpi=100)
    try:
        series = (("d_real", "D real"), ("d_fake", "D fake"), ("g", "G"), ("val_g", "G validation"))
        _epoch_panel(losses, history, series, "weighted loss")
        _epoch_panel(
            energy,
            history,
            (("val_esum_over_ep_mc", "MC"), ("val_esum_over_ep_gan", "GAN")),
            "E_sum / E_p (validation)",
        )
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return _png(fig)
    finally:
        plt.close(fig)


def _epoch_panel(ax, history: list[dict[str, float]], series, ylabel: str) -> None:
    """One log-scale panel of per-epoch values; a series missing in any epoch is left out."""
    epochs = [h["epoch"] + 1 for h in history]
    for key, label in series:
        values = [h.get(key) for h in history]
        if all(v is not None for v in values):
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
