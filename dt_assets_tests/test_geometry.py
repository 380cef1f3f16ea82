"""Geometry presets and the effective quantities of the W/Si sampling stack."""

from __future__ import annotations

import math

import pytest

from dt_assets.physics.geometry import GEOMETRIES, Geometry, geometry_for_shape, get_geometry
from dt_assets.physics.materials import SILICON, TUNGSTEN


def test_default_preset_is_the_3dgan_grid_of_a_25_x0_w_si_stack():
    g = get_geometry("clic_ecal_51x51x25")
    assert g.shape == (51, 51, 25)
    assert g.cell_size_mm == pytest.approx(5.1)
    assert (g.absorber.name, g.absorber_mm, g.active.name, g.active_mm) == ("W", 3.5, "Si", 0.3)
    # about 1 X0 per layer and 25 X0 deep: contains 500 GeV electron showers
    assert g.layer_pitch_mm / g.x0_mm == pytest.approx(1.0, abs=0.01)
    assert g.depth_x0 == pytest.approx(25.0, abs=0.2)


def test_presets_named_in_the_design_exist():
    assert {"clic_ecal_51x51x25", "clic_ecal_25x25x25", "small_ecal_15x15x12"} <= set(GEOMETRIES)
    assert get_geometry("clic_ecal_25x25x25").shape == (25, 25, 25)
    assert geometry_for_shape((51, 51, 25)).name == "clic_ecal_51x51x25"


def test_effective_quantities_follow_the_mass_weighted_rules():
    """Recompute Z_eff, X0_eff, R_M_eff, E_c_eff by hand from the PDG values of W and Si."""
    g = get_geometry("clic_ecal_51x51x25")
    m_w, m_si = 19.30 * 0.35, 2.329 * 0.03  # g/cm^2 per layer
    w_w, w_si = m_w / (m_w + m_si), m_si / (m_w + m_si)
    assert g.z_eff == pytest.approx(w_w * 74 + w_si * 14)
    x0_g = 1 / (w_w / 6.76 + w_si / 21.82)
    rho = (m_w + m_si) / 0.38
    assert g.x0_mm == pytest.approx(x0_g / rho * 10)
    # X0 as a length is also the thickness-weighted harmonic mean of the lengths
    assert g.x0_mm == pytest.approx(3.8 / (3.5 / TUNGSTEN.radiation_length_mm + 0.3 / SILICON.radiation_length_mm))
    ec_over_x0 = w_w * 7.97 / 6.76 + w_si * 40.19 / 21.82
    assert g.critical_energy_mev == pytest.approx(x0_g * ec_over_x0)
    assert g.moliere_radius_mm == pytest.approx(21.2052 / ec_over_x0 / rho * 10)
    # tungsten dominates: the stack's R_M lies a little above pure W's 9.33 mm
    assert 9.3 < g.moliere_radius_mm < 10.5
    assert 7.9 < g.critical_energy_mev < 8.5


def test_sampling_fraction_is_e_over_mip_times_the_mip_fraction():
    g = get_geometry("clic_ecal_51x51x25")
    mip_si = 1.664 * 2.329 * 0.03
    mip_w = 1.145 * 19.30 * 0.35
    e_hat = 1 / (1 + 0.007 * (74 - 14))
    assert g.mip_fraction == pytest.approx(mip_si / (mip_si + mip_w))
    assert g.sampling_fraction == pytest.approx(e_hat * mip_si / (mip_si + mip_w))
    assert 0.005 < g.sampling_fraction < 0.02


def test_geometry_round_trips_through_its_json():
    g = get_geometry("small_ecal_15x15x12")
    assert Geometry.from_dict(g.to_dict()) == g


def test_cell_centres_are_symmetric_and_layers_ordered():
    g = get_geometry("clic_ecal_51x51x25")
    x = g.x_centres_mm()
    assert x[25] == 0.0 and x[0] == -x[-1] == pytest.approx(-25 * 5.1)
    depths = g.layer_depths_mm()
    assert depths[0] == pytest.approx(3.5 + 0.15) and all(d > 0 for d in depths[1:] - depths[:-1])
    assert math.isclose(g.pivot_mm, g.depth_mm / 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_x": 0}, "n_x must be a positive integer"),
        ({"cell_size_mm": -1.0}, "cell_size_mm must be positive"),
        ({"pivot_depth_mm": 1e6}, "pivot_depth_mm must lie in"),
    ],
)
def test_bad_geometry_values_are_named(kwargs, message):
    base = {"name": "bad", "n_x": 5, "n_y": 5, "n_layers": 5, "cell_size_mm": 5.0}
    with pytest.raises(ValueError, match=message):
        Geometry(**{**base, **kwargs})


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="clic_ecal_51x51x25"):
        get_geometry("atlas_lar")
