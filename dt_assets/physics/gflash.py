"""The GFlash parametrization of electromagnetic showers (formulas only, no sampling).

Reference: G. Grindhammer and S. Peters, "The parameterized simulation of electromagnetic showers
in homogeneous and sampling calorimeters", hep-ex/0001020 (GFlash); coefficients as in Geant4's
``GVFlashHomoShowerTuning`` and ``GFlashSamplingShowerTuning``. Depths ``t`` are in radiation
lengths along the shower axis, radii in Molière radii, ``y = E / E_c``, and energies that enter
``ln E`` are in GeV.

Deviation from Geant4, on purpose: Geant4's sampling parametrization integrates the energy and
spot profiles with the *homogeneous* ``T`` and ``alpha`` and uses the sampling values only for
``tau``. Here the sampling-corrected values describe the energy profile of the sampling
calorimeter, as the paper intends, and the spot profile is derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Geometry


@dataclass(frozen=True)
class GFlashTuning:
    """Coefficients of the parametrization (defaults: the paper / Geant4 values)."""

    # homogeneous media: <ln T> = ln(ln y + t1); <ln alpha> = ln(a1 + (a2 + a3/Z) ln y)
    ave_t1: float = -0.812
    ave_a1: float = 0.81
    ave_a2: float = 0.458
    ave_a3: float = 2.26
    # sampling corrections: T_sam = T_hom + t1/F_s + t2 (1 - e_hat); alpha_sam = alpha_hom + a1/F_s
    sam_t1: float = -0.55
    sam_t2: float = -0.69
    sam_a1: float = -0.476
    # fluctuations of a sampling calorimeter: sigma = 1/(s1 + s2 ln y), rho = r1 + r2 ln y
    sig_log_t1: float = -2.5
    sig_log_t2: float = 1.25
    sig_log_a1: float = -0.82
    sig_log_a2: float = 0.79
    rho1: float = 0.784
    rho2: float = -0.023
    # radial core R_C = z1 + z2 tau; z1 = c1 + c2 ln E; z2 = c3 + c4 Z
    rc1: float = 0.0251
    rc2: float = 0.00319
    rc3: float = 0.1162
    rc4: float = -0.000381
    # radial tail R_T = k1 [exp(k3 (tau - k2)) + exp(k4 (tau - k2))]; k1 = t1 + t2 Z; k4 = t5 + t6 ln E
    rt1: float = 0.659
    rt2: float = -0.00309
    rt3: float = 0.645
    rt4: float = -2.59
    rt5: float = 0.3585
    rt6: float = 0.0421  # the paper's value; Geant4's tuning class has 0.0412
    # core weight p = p1 exp((p2 - tau)/p3 - exp((p2 - tau)/p3)); p1 = c1 + c2 Z; p2 = c3 + c4 Z; p3 = c5 + c6 ln E
    wc1: float = 2.632
    wc2: float = -0.00094
    wc3: float = 0.401
    wc4: float = 0.00187
    wc5: float = 1.313
    wc6: float = -0.0686
    # sampling corrections of the radial profile
    sam_rc1: float = -0.0203
    sam_rc2: float = 0.0397
    sam_rt1: float = -0.14
    sam_rt2: float = -0.495
    sam_wc1: float = 0.348
    sam_wc2: float = -0.642
    # spots: N = n1 / sampling_resolution * E^n2; T_spot = T (t1 + t2 Z); alpha_spot = alpha (a1 + a2 Z)
    spot_n1: float = 10.3
    spot_n2: float = 0.959
    spot_t1: float = 0.813
    spot_t2: float = 0.0019
    spot_a1: float = 0.844
    spot_a2: float = 0.0026
    #: Sampling resolution: sigma(dE)/dE = resolution / sqrt(dE / GeV) for each longitudinal step.
    sampling_resolution: float = 0.11
    #: Mean depth (X0) of a photon's first conversion: 9/7 X0.
    photon_conversion_x0: float = 9.0 / 7.0


DEFAULT_TUNING = GFlashTuning()


@dataclass(frozen=True)
class LongitudinalMoments:
    """Mean, width and correlation of (ln T, ln alpha) at given energies, sampling-corrected."""

    mean_log_t: np.ndarray
    mean_log_alpha: np.ndarray
    sigma_log_t: np.ndarray
    sigma_log_alpha: np.ndarray
    rho: np.ndarray


def longitudinal_moments(
    energy_mev: np.ndarray | float, geometry: Geometry, tuning: GFlashTuning = DEFAULT_TUNING
) -> LongitudinalMoments:
    """Distribution of the per-event longitudinal parameters (ln T, ln alpha) of a sampling calorimeter."""
    ln_y = np.log(np.asarray(energy_mev, dtype=np.float64) / geometry.critical_energy_mev)
    t_hom = np.maximum(ln_y + tuning.ave_t1, 0.1)
    alpha_hom = np.maximum(tuning.ave_a1 + (tuning.ave_a2 + tuning.ave_a3 / geometry.z_eff) * ln_y, 0.1)
    fs, e_hat = geometry.sampling_frequency, geometry.e_hat
    t_sam = t_hom + tuning.sam_t1 / fs + tuning.sam_t2 * (1.0 - e_hat)
    alpha_sam = alpha_hom + tuning.sam_a1 / fs
    return LongitudinalMoments(
        mean_log_t=np.log(np.maximum(t_sam, np.exp(0.1))),
        mean_log_alpha=np.log(np.maximum(alpha_sam, np.exp(0.1))),
        sigma_log_t=np.minimum(0.5, 1.0 / (tuning.sig_log_t1 + tuning.sig_log_t2 * ln_y)),
        sigma_log_alpha=np.minimum(0.5, 1.0 / (tuning.sig_log_a1 + tuning.sig_log_a2 * ln_y)),
        rho=tuning.rho1 + tuning.rho2 * ln_y,
    )


def correlated_log_parameters(
    moments: LongitudinalMoments, z1: np.ndarray, z2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-event T and alpha from two independent standard normals ``z1``, ``z2``.

    ln T and ln alpha are normal with correlation rho (GFlash eq. 10): with
    c± = sqrt((1 ± rho)/2), ln T = mu_T + sigma_T (c+ z1 + c- z2), ln alpha = mu_a + sigma_a (c+ z1 - c- z2).
    T is floored at 1 X0 and alpha at 1.1, as in GFlash.
    """
    c_plus = np.sqrt((1.0 + moments.rho) / 2.0)
    c_minus = np.sqrt((1.0 - moments.rho) / 2.0)
    t_max = np.exp(moments.mean_log_t + moments.sigma_log_t * (c_plus * z1 + c_minus * z2))
    alpha = np.exp(moments.mean_log_alpha + moments.sigma_log_alpha * (c_plus * z1 - c_minus * z2))
    return np.maximum(t_max, 1.0), np.maximum(alpha, 1.1)


def spot_profile(
    t_max: np.ndarray, alpha: np.ndarray, geometry: Geometry, tuning: GFlashTuning = DEFAULT_TUNING
) -> tuple[np.ndarray, np.ndarray]:
    """(T, alpha) of the Gamma distribution of spot depths, from the energy profile's."""
    t_spot = np.maximum(0.5, t_max * (tuning.spot_t1 + tuning.spot_t2 * geometry.z_eff))
    alpha_spot = np.maximum(1.1, alpha * (tuning.spot_a1 + tuning.spot_a2 * geometry.z_eff))
    return t_spot, alpha_spot


def n_spots(energy_gev: np.ndarray | float, tuning: GFlashTuning = DEFAULT_TUNING) -> np.ndarray:
    """Mean number of energy spots of a shower in a sampling calorimeter, n1/res * E^n2."""
    return (
        tuning.spot_n1 / tuning.sampling_resolution * np.power(np.asarray(energy_gev, dtype=np.float64), tuning.spot_n2)
    )


def tau(t: np.ndarray, t_max: np.ndarray, alpha: np.ndarray, mean_alpha: np.ndarray) -> np.ndarray:
    """Shower age tau = t / T, corrected for the event's fluctuation of alpha (as Geant4's ComputeTau)."""
    return t / t_max * (alpha - 1.0) / alpha * mean_alpha / (mean_alpha - 1.0)


@dataclass(frozen=True)
class RadialParameters:
    """Core radius, tail radius (both in Molière radii) and core weight at given (E, tau)."""

    core_radius: np.ndarray
    tail_radius: np.ndarray
    core_weight: np.ndarray


def radial_parameters(
    energy_gev: np.ndarray, tau_: np.ndarray, geometry: Geometry, tuning: GFlashTuning = DEFAULT_TUNING
) -> RadialParameters:
    """R_C, R_T and p of the two-component radial profile, with the sampling corrections."""
    z = geometry.z_eff
    ln_e = np.log(energy_gev)
    fs, one_minus_e_hat = geometry.sampling_frequency, 1.0 - geometry.e_hat
    core = (tuning.rc1 + tuning.rc2 * ln_e) + (tuning.rc3 + tuning.rc4 * z) * tau_
    core = core + tuning.sam_rc1 * one_minus_e_hat + tuning.sam_rc2 / fs * np.exp(-tau_)
    k1, k2, k3 = tuning.rt1 + tuning.rt2 * z, tuning.rt3, tuning.rt4
    k4 = tuning.rt5 + tuning.rt6 * ln_e
    tail = k1 * (np.exp(k3 * (tau_ - k2)) + np.exp(k4 * (tau_ - k2)))
    tail = tail + tuning.sam_rt1 * one_minus_e_hat + tuning.sam_rt2 / fs * np.exp(-tau_)
    p1, p2 = tuning.wc1 + tuning.wc2 * z, tuning.wc3 + tuning.wc4 * z
    p3 = tuning.wc5 + tuning.wc6 * ln_e
    arg = (p2 - tau_) / p3
    weight = p1 * np.exp(arg - np.exp(arg))
    weight = weight + one_minus_e_hat * (tuning.sam_wc1 + tuning.sam_wc2 / fs * np.exp(-((tau_ - 1.0) ** 2)))
    return RadialParameters(
        core_radius=np.maximum(core, 1e-3),
        tail_radius=np.maximum(tail, 1e-3),
        core_weight=np.clip(weight, 0.0, 1.0),
    )


def radial_containment(radius_rm: np.ndarray | float, params: RadialParameters) -> np.ndarray:
    """Fraction of a step's energy within ``radius_rm`` Molière radii of the axis (CDF of f(r))."""
    r2 = np.asarray(radius_rm, dtype=np.float64) ** 2
    core = r2 / (r2 + params.core_radius**2)
    tail = r2 / (r2 + params.tail_radius**2)
    return params.core_weight * core + (1.0 - params.core_weight) * tail
