"""The 3DGAN's layers against the reference, the scaled-down variants, the physics heads and the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dt_assets import build_generator, get_geometry, simulate
from dt_assets.model.gan3d import (
    COUNT_EDGES_MEV,
    REFERENCE,
    AngleEstimator,
    Discriminator,
    DiscriminatorOutput,
    Generator,
    architecture_for,
    cell_counts,
    gan_losses,
    mape,
    parameter_count,
)

DEFAULT = get_geometry("clic_ecal_51x51x25")


def shapes_after(module: nn.Module, kind: type, x: torch.Tensor) -> list[tuple[int, ...]]:
    seen = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: seen.append(tuple(o.shape[1:])))
        for m in module.modules()
        if isinstance(m, kind)
    ]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return seen


def test_reference_generator_layers_and_parameter_count():
    generator = build_generator()  # the default preset
    assert generator.arch == REFERENCE
    net = generator.net
    assert (net.linear.in_features, net.linear.out_features) == (256, 5184)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [8, 6, 6, 6, 6, 6, 1]
    assert [c.kernel_size for c in convs] == [
        (6, 6, 8),
        (4, 4, 6),
        (4, 4, 6),
        (4, 4, 6),
        (3, 3, 5),
        (3, 3, 3),
        (2, 2, 2),
    ]
    assert sum(isinstance(m, nn.BatchNorm3d) for m in net.modules()) == 5
    assert shapes_after(net, nn.Upsample, torch.randn(2, 256)) == [(8, 54, 54, 48)]
    assert shapes_after(net, nn.Conv3d, torch.randn(2, 256)) == [
        (8, 49, 49, 41),
        (6, 50, 50, 38),
        (6, 51, 51, 35),
        (6, 52, 52, 32),
        (6, 52, 52, 28),
        (6, 52, 52, 26),
        (1, 51, 51, 25),
    ]
    assert parameter_count(generator) == 1_364_983  # "1.36 M parameters"


def test_reference_discriminator_layers_and_parameter_count():
    discriminator = Discriminator(REFERENCE, DEFAULT)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [16, 8, 8, 8]
    assert all(c.kernel_size == (5, 6, 6) for c in convs)
    assert discriminator.real_fake.in_features == 19152 == discriminator.energy.in_features
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.2 for m in discriminator.modules()) == 4
    assert parameter_count(discriminator) == 87_354
    out = discriminator(torch.rand(3, 1, 51, 51, 25))
    assert all(t.shape == (3,) for t in (out.logit, out.energy, out.angle, out.total))


def test_real_fake_head_is_a_logit_and_the_bce_is_applied_once():
    discriminator = Discriminator(REFERENCE, DEFAULT)
    assert not any(isinstance(m, nn.Sigmoid) for m in discriminator.modules())
    with torch.no_grad():
        discriminator.real_fake.bias.fill_(5.0)  # a confident logit, far outside [0, 1]
        out = discriminator(torch.rand(2, 1, 51, 51, 25))
    assert (out.logit > 1).all()
    labels = torch.tensor([1.0, 0.0])
    _, terms = gan_losses(out, labels, torch.ones(2), torch.ones(2), torch.ones(2))
    expected = -(labels * F.logsigmoid(out.logit) + (1 - labels) * F.logsigmoid(-out.logit)).mean()
    assert terms["real_fake"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_combines_five_weighted_terms():
    counts = torch.tensor([[9.0, 3.0]] * 4)
    out = DiscriminatorOutput(
        logit=torch.zeros(4),
        energy=torch.full((4,), 0.5),
        angle=torch.full((4,), 1.5),
        total=torch.full((4,), 2.0),
        counts=counts,
    )
    args = (out, torch.ones(4), torch.ones(4), torch.full((4,), 1.0), torch.full((4,), 1.0))
    total, terms = gan_losses(*args, weights=(3.0, 0.1, 25.0, 0.1, 0.1), counts=torch.tensor([[4.0, 3.0]] * 4))
    assert terms["energy"].item() == pytest.approx(50.0)  # MAPE in percent
    assert terms["angle"].item() == pytest.approx(0.5)
    assert terms["total"].item() == pytest.approx(100.0)
    assert terms["counts"].item() == pytest.approx((100 * 5 / 5 + 0) / 2)  # |9 - 4| / (4 + 1), 0 in the second bin
    assert total.item() == pytest.approx(3 * math.log(2) + 0.1 * 50 + 25 * 0.5 + 0.1 * 100 + 0.1 * 50, rel=1e-5)
    four, _ = gan_losses(*args)  # the four terms of the reference's combined loss without the histogram
    assert four.item() == pytest.approx(3 * math.log(2) + 0.1 * 50 + 25 * 0.5 + 0.1 * 100, rel=1e-5)
    assert mape(torch.tensor([1.1]), torch.tensor([1.0])).item() == pytest.approx(10.0, rel=1e-5)


def test_cell_counts_histogram_cell_energies_with_gradients():
    cells = torch.zeros(1, 2, 2, 2)
    cells[0, 0, 0, 0], cells[0, 1, 0, 0], cells[0, 1, 1, 0], cells[0, 1, 1, 1] = 0.2, 0.5, 5.0, 50.0  # MeV
    cells.requires_grad_(True)
    counts = cell_counts(cells)
    assert counts.shape == (1, len(COUNT_EDGES_MEV) - 1)
    torch.testing.assert_close(counts[0], torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]), atol=0.05, rtol=0)
    counts[0, 0].backward()  # the soft edges pass a gradient to the cells near them
    assert torch.isfinite(cells.grad).all() and cells.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["clic_ecal_25x25x25", "small_ecal_15x15x12"])
def test_scaled_down_variants_make_the_grid_of_their_geometry(preset):
    geometry = get_geometry(preset)
    arch = architecture_for(geometry)
    generator, discriminator = Generator(arch), Discriminator(arch, geometry)
    cells = generator(torch.randn(3, 256))
    assert cells.shape == (3, 1, *geometry.shape)
    assert parameter_count(generator) < parameter_count(Generator(REFERENCE))
    conditions = torch.tensor([[0.5, 1.5]] * 3)
    assert discriminator(cells, conditions).logit.shape == (3,)
    with pytest.raises(ValueError, match="real/fake head is conditioned"):
        discriminator(cells)
    assert arch.noise_times_energy and not REFERENCE.noise_times_energy
    assert arch.conditioned_discriminator and not REFERENCE.conditioned_discriminator


def test_the_conditioned_real_fake_head_responds_to_the_conditions():
    geometry = get_geometry("small_ecal_15x15x12")
    discriminator = Discriminator(architecture_for(geometry), geometry).eval()
    cells = torch.rand(2, 1, *geometry.shape)
    with torch.no_grad():
        low = discriminator(cells, torch.tensor([[0.2, 1.5]] * 2)).logit
        high = discriminator(cells, torch.tensor([[1.8, 1.5]] * 2)).logit
    assert not torch.allclose(low, high)  # the same showers judged differently at another energy


def test_angle_estimator_measures_theta_from_barycentres():
    geometry = get_geometry("small_ecal_15x15x12")
    estimator = AngleEstimator(geometry)
    measured = {}
    for theta in (62.0, 90.0, 118.0):
        ds = simulate(200, 50.0, theta, geometry=geometry, seed=3)
        measured[theta] = estimator(torch.from_numpy(ds.energy_deposit.values)).numpy()
    assert measured[62.0].mean() < measured[90.0].mean() < measured[118.0].mean()
    assert measured[90.0].mean() == pytest.approx(np.pi / 2, abs=0.02)
    for theta, values in measured.items():  # barycentre slopes are biased toward the normal, by < 10 deg here
        assert abs(np.rad2deg(values.mean()) - theta) < 10, theta


def test_angle_estimator_has_finite_gradients_on_empty_layers():
    estimator = AngleEstimator(get_geometry("small_ecal_15x15x12"))
    cells = torch.zeros(2, 15, 15, 12)
    cells[0, 7, 7, :3] = 1.0  # later layers empty
    cells.requires_grad_(True)
    angle = estimator(cells)
    angle.sum().backward()
    assert torch.isfinite(cells.grad).all()
    assert angle[1].item() == pytest.approx(np.pi / 2)  # an empty shower


def test_discriminator_total_is_the_sum_of_the_unscaled_cells():
    geometry = get_geometry("small_ecal_15x15x12")
    discriminator = Discriminator(architecture_for(geometry), geometry, power=0.85)
    unscaled = torch.rand(2, 1, *geometry.shape)
    out = discriminator(unscaled.pow(0.85), torch.ones(2, 2))
    torch.testing.assert_close(out.total, unscaled.sum(dim=(1, 2, 3, 4)), rtol=1e-4, atol=1e-4)
