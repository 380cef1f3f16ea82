"""The Monte Carlo against the GFlash parametrization it samples.

The reference numbers here are computed from the formulas of docs/design.md ("Physics: the GFlash
Monte Carlo") / Grindhammer & Peters, written out again below (not imported from the simulator), so a
wrong coefficient, a wrong correlation or a wrong binning in the simulator shows up as a disagreement.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import gammainc

from dt_assets import Geometry, get_geometry, simulate, simulate_blocks
from dt_assets.physics.materials import SILICON, TUNGSTEN

DEFAULT = get_geometry("clic_ecal_51x51x25")


# --- the parametrization, written out independently -------------------------------------------
def reference_parameters(energy_gev: float, geo: Geometry, n: int = 40000, seed: int = 99):
    """Draws of (T, alpha) of a sampling calorimeter at fixed energy (Cholesky construction)."""
    ln_y = np.log(energy_gev * 1e3 / geo.critical_energy_mev)
    fs = geo.x0_mm / (geo.absorber_mm + geo.active_mm)
    e_hat = 1 / (1 + 0.007 * (geo.absorber.z - geo.active.z))
    t_mean = (ln_y - 0.812) - 0.55 / fs - 0.69 * (1 - e_hat)
    a_mean = (0.81 + (0.458 + 2.26 / geo.z_eff) * ln_y) - 0.476 / fs
    s_t, s_a = 1 / (-2.5 + 1.25 * ln_y), 1 / (-0.82 + 0.79 * ln_y)
    rho = 0.784 - 0.023 * ln_y
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal((2, n))
    ln_t = np.log(t_mean) + s_t * z1
    ln_a = np.log(a_mean) + s_a * (rho * z1 + np.sqrt(1 - rho**2) * z2)
    return np.maximum(np.exp(ln_t), 1.0), np.maximum(np.exp(ln_a), 1.1), a_mean


def reference_layer_fractions(energy_gev: float, geo: Geometry) -> np.ndarray:
    """Expected fraction of an electron's energy deposited in each layer at normal incidence."""
    t_max, alpha, _ = reference_parameters(energy_gev, geo)
    edges = np.arange(geo.n_layers + 1) * geo.layer_pitch_mm / geo.x0_mm
    cdf = gammainc(alpha[:, None], (alpha - 1)[:, None] / t_max[:, None] * edges[None, :])
    return np.diff(cdf, axis=1).mean(axis=0)


def reference_radial_containment(energy_gev: float, geo: Geometry, radius_rm: float) -> float:
    """Expected fraction of the energy within ``radius_rm`` Molière radii of the axis (all layers)."""
    t_max, alpha, a_mean = reference_parameters(energy_gev, geo, n=4000)
    fs = geo.x0_mm / geo.layer_pitch_mm
    one_minus_e_hat = 1 - 1 / (1 + 0.007 * (geo.absorber.z - geo.active.z))
    z, ln_e = geo.z_eff, np.log(energy_gev)
    edges = np.arange(geo.n_layers + 1) * geo.layer_pitch_mm / geo.x0_mm
    weights = np.diff(gammainc(alpha[:, None], (alpha - 1)[:, None] / t_max[:, None] * edges[None, :]), axis=1)
    mid = (edges[:-1] + edges[1:]) / 2
    tau = mid[None, :] / t_max[:, None] * ((alpha - 1) / alpha)[:, None] * a_mean / (a_mean - 1)
    r_c = (
        0.0251 + 0.00319 * ln_e + (0.1162 - 0.000381 * z) * tau - 0.0203 * one_minus_e_hat + 0.0397 / fs * np.exp(-tau)
    )
    k4 = 0.3585 + 0.0421 * ln_e
    r_t = (0.659 - 0.00309 * z) * (np.exp(-2.59 * (tau - 0.645)) + np.exp(k4 * (tau - 0.645)))
    r_t = r_t - 0.14 * one_minus_e_hat - 0.495 / fs * np.exp(-tau)
    arg = (0.401 + 0.00187 * z - tau) / (1.313 - 0.0686 * ln_e)
    p = (2.632 - 0.00094 * z) * np.exp(arg - np.exp(arg))
    p = np.clip(p + one_minus_e_hat * (0.348 - 0.642 / fs * np.exp(-((tau - 1) ** 2))), 0, 1)
    r2 = radius_rm**2
    inside = p * r2 / (r2 + r_c**2) + (1 - p) * r2 / (r2 + r_t**2)
    return float((weights * inside).sum() / weights.sum())


def layer_profile(ds) -> np.ndarray:
    """Per event, visible energy per layer (MeV)."""
    return ds.energy_deposit.sum(("x", "y")).values.astype(np.float64)


def streamed_layer_profiles(n: int, energy: float, theta: float, particle: str, seed: int) -> tuple[np.ndarray, float]:
    """Per event layer profiles of a default-geometry run, simulated block by block (bounded memory)."""
    blocks = simulate_blocks(n, energy, theta, particle, seed=seed)
    profiles = [layer_profile(block) for block in blocks]
    return np.concatenate(profiles), float(DEFAULT.sampling_fraction)


# --- longitudinal ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def electron_profiles_100gev() -> np.ndarray:
    profiles, _ = streamed_layer_profiles(2000, 100.0, 90.0, "e-", seed=1)
    return profiles


def test_longitudinal_profile_and_shower_maximum_follow_the_parametrization(electron_profiles_100gev):
    expected = reference_layer_fractions(100.0, DEFAULT)
    profiles = electron_profiles_100gev
    measured = profiles.sum(axis=0) / (len(profiles) * 100e3 * DEFAULT.sampling_fraction)
    assert np.argmax(measured) == np.argmax(expected)  # the layer of the shower maximum
    assert np.abs(measured - expected).max() < 0.004
    depth = (np.arange(25) + 0.5) * DEFAULT.layer_pitch_mm / DEFAULT.x0_mm
    cog = (measured * depth).sum() / measured.sum()
    assert cog == pytest.approx((expected * depth).sum() / expected.sum(), abs=0.1)
    # and, loosely, the textbook t_max = ln y - 0.5 (homogeneous) minus the sampling shift
    t_max_textbook = np.log(100e3 / DEFAULT.critical_energy_mev) - 0.5
    assert abs(depth[np.argmax(measured)] - t_max_textbook) < 1.5


def test_event_by_event_depth_fluctuates_like_the_correlated_lognormal(electron_profiles_100gev):
    profile = electron_profiles_100gev
    edges = np.arange(26) * DEFAULT.layer_pitch_mm / DEFAULT.x0_mm
    mid = (edges[:-1] + edges[1:]) / 2
    cog = (profile * mid).sum(axis=1) / profile.sum(axis=1)
    # per drawn (T, alpha), the centre of gravity of the Gamma profile inside the 25 layers
    t_max, alpha, _ = reference_parameters(100.0, DEFAULT)
    fractions = np.diff(gammainc(alpha[:, None], (alpha - 1)[:, None] / t_max[:, None] * edges[None, :]), axis=1)
    expected_cog = (fractions * mid).sum(axis=1) / fractions.sum(axis=1)
    assert cog.mean() == pytest.approx(expected_cog.mean(), abs=0.05)
    assert cog.std() == pytest.approx(expected_cog.std(), rel=0.06)
    assert cog.std() > 0.5  # a parametrization without event-by-event fluctuations would fail here


def test_photons_start_deeper_by_the_mean_conversion_length():
    depth = (np.arange(25) + 0.5) * DEFAULT.layer_pitch_mm / DEFAULT.x0_mm

    def mean_cog(particle):
        p, _ = streamed_layer_profiles(1500, 50.0, 90.0, particle, seed=2)
        return ((p * depth).sum(axis=1) / p.sum(axis=1)).mean()

    assert mean_cog("gamma") - mean_cog("e-") == pytest.approx(9 / 7, abs=0.2)
    assert (simulate(3, 50.0, 90.0, "gamma").particle.values == 22).all()


# --- lateral -----------------------------------------------------------------------------------
def test_radial_containment_in_moliere_radii_matches_the_radial_profile():
    fine = Geometry(name="fine_2mm", n_x=101, n_y=101, n_layers=25, cell_size_mm=2.0)
    ds = simulate(200, 50.0, 90.0, "e-", geometry=fine, seed=3)
    xy = ds.energy_deposit.sum(("event", "z")).values.astype(np.float64)
    x, y = np.meshgrid(ds.x.values, ds.y.values, indexing="ij")
    r = np.hypot(x, y) / fine.moliere_radius_mm
    total = xy.sum()
    for radius in (0.5, 1.0, 2.0):
        measured = xy[r <= radius].sum() / total
        assert measured == pytest.approx(reference_radial_containment(50.0, fine, radius), abs=0.02), radius
    # the textbook statement: about 90% of the energy lies within one Molière radius
    assert 0.85 < xy[r <= 1.0].sum() / total < 0.95
    assert xy[r <= 3.5].sum() / total > 0.97


# --- energy scale ------------------------------------------------------------------------------
def test_visible_energy_is_linear_in_the_primary_energy():
    energies = np.array([10.0, 50.0, 100.0, 250.0, 500.0])
    response = []
    for i, energy in enumerate(energies):
        profiles, sf = streamed_layer_profiles(300 if energy < 400 else 150, energy, 90.0, "e-", seed=10 + i)
        ratio = profiles.sum(axis=1).mean() / (energy * 1e3 * sf)
        # the response is the sampling fraction times the longitudinal containment of the parametrization
        assert ratio == pytest.approx(reference_layer_fractions(energy, DEFAULT).sum(), abs=0.01), energy
        response.append(ratio)
    # linear within 2% from 10 to 500 GeV (what departs is the growing leakage out of the back)
    assert (max(response) - min(response)) / np.mean(response) < 0.02
    assert response[0] > response[-1]


def test_resolution_has_the_sampling_term():
    spreads = {}
    for energy in (10.0, 100.0):
        visible = streamed_layer_profiles(1000, energy, 90.0, "e-", seed=4)[0].sum(axis=1)
        spreads[energy] = visible.std() / visible.mean()
    assert spreads[10.0] == pytest.approx(0.11 / np.sqrt(10.0), rel=0.15)
    assert 0.011 * 0.9 < spreads[100.0] < 0.011 * 1.4  # sampling term plus leakage fluctuations
    assert spreads[10.0] / spreads[100.0] > 2.3  # falls like 1/sqrt(E)


# --- angle -------------------------------------------------------------------------------------
@pytest.mark.parametrize("theta_deg", [62.0, 90.0, 118.0])
def test_shower_axis_follows_theta(theta_deg):
    """Energy centroids lie on the particle axis x = (z - pivot) cot(theta), whatever the shower depth.

    (Per-layer barycentres are biased towards the normal by the longitudinal gradient of a tilted
    shower; the centroid of the whole shower is not, so showers of different depth trace the axis.)
    """
    cot = 1 / np.tan(np.deg2rad(theta_deg))
    centroids = []
    for energy, particle in ((20.0, "e-"), (400.0, "gamma")):
        ds = simulate(300, energy, theta_deg, particle, seed=5)
        xz = ds.energy_deposit.sum(("event", "y")).values.astype(np.float64)  # (x, layer)
        z_mid = (np.arange(DEFAULT.n_layers) + 0.5) * DEFAULT.layer_pitch_mm
        x_bar = (xz * ds.x.values[:, None]).sum() / xz.sum()
        z_bar = (xz * z_mid[None, :]).sum() / xz.sum()
        assert x_bar == pytest.approx((z_bar - DEFAULT.pivot_mm) * cot, abs=0.6), energy
        centroids.append((x_bar, z_bar))
        assert np.allclose(ds.theta.values, np.deg2rad(theta_deg))
    (x1, z1), (x2, z2) = centroids
    assert z2 - z1 > 10.0  # high-energy photons shower deeper: two points on the axis
    assert (x2 - x1) / (z2 - z1) == pytest.approx(cot, abs=0.05)


# --- reproducibility ---------------------------------------------------------------------------
def test_same_seed_gives_bit_identical_showers(small_showers):
    again = simulate(300, (10.0, 100.0), (60.0, 120.0), "e-", geometry="small_ecal_15x15x12", seed=11)
    for name in ("energy_deposit", "primary_energy", "theta", "particle"):
        assert np.array_equal(again[name].values, small_showers[name].values), name
    other = simulate(300, (10.0, 100.0), (60.0, 120.0), "e-", geometry="small_ecal_15x15x12", seed=12)
    assert not np.array_equal(other.energy_deposit.values, small_showers.energy_deposit.values)


def test_complete_blocks_do_not_change_when_a_run_grows(small_showers):
    longer = simulate(600, (10.0, 100.0), (60.0, 120.0), "e-", geometry="small_ecal_15x15x12", seed=11)
    assert np.array_equal(longer.energy_deposit.values[:256], small_showers.energy_deposit.values[:256])


def test_conditions_are_sampled_in_their_ranges(small_showers):
    energy, theta = small_showers.primary_energy.values, np.rad2deg(small_showers.theta.values)
    assert energy.min() >= 10 and energy.max() <= 100 and energy.std() > 20
    assert theta.min() >= 60 and theta.max() <= 120 and theta.std() > 10
    assert small_showers.energy_deposit.dtype == np.float32


def test_dataset_carries_units_geometry_and_provenance(small_showers):
    ds = small_showers
    assert ds.energy_deposit.dims == ("event", "x", "y", "z")
    assert ds.energy_deposit.attrs["units"] == "MeV"
    assert ds.primary_energy.attrs["units"] == "GeV" and ds.theta.attrs["units"] == "rad"
    assert ds.x.attrs["units"] == "mm" and ds.depth.attrs["units"] == "mm"
    geo = get_geometry("small_ecal_15x15x12")
    for key in ("x0_mm", "moliere_radius_mm", "critical_energy_mev", "z_eff", "sampling_fraction"):
        assert ds.attrs[key] == pytest.approx(getattr(geo, key)), key
    assert ds.attrs["geometry"] == "small_ecal_15x15x12"
    assert ds.attrs["simulator"] == "calotwin-gflash" and ds.attrs["seed"] == 11
    assert {"created", "code_version", "simulator_version"} <= set(ds.attrs)


def test_materials_cite_their_pdg_constants():
    assert TUNGSTEN.radiation_length_mm == pytest.approx(3.504, abs=0.002)
    assert SILICON.radiation_length_mm == pytest.approx(93.69, abs=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_events": 0}, "n_events must be a positive integer"),
        ({"energy_gev": (200.0, 100.0)}, "energy_gev range is reversed"),
        ({"energy_gev": 1000.0}, r"energy_gev must lie within \[1.0, 500.0\]"),
        ({"theta_deg": 10.0}, "theta_deg must lie within"),
        ({"particle": "proton"}, "unknown particle"),
        ({"geometry": "nope"}, "unknown geometry"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"energy_gev": float("nan")}, "energy_gev must be finite"),
    ],
)
def test_bad_simulation_arguments_are_named(kwargs, message):
    args = {"n_events": 10, "energy_gev": 50.0, "theta_deg": 90.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        simulate(**args)


def test_streaming_form_checks_arguments_before_the_first_block():
    with pytest.raises(ValueError, match="theta_deg must lie within"):
        simulate_blocks(10, 50.0, (30.0, 90.0))  # no iteration needed to see the error
