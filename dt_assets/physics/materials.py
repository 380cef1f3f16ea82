"""Materials of calorimeter layers, with their electromagnetic shower constants.

Values are those of the Particle Data Group's *Atomic and Nuclear Properties of Materials*
(https://pdg.lbl.gov/AtomicNuclearProperties/, tables for W, Si and Pb; also Review of Particle
Physics, S. Navas et al., Phys. Rev. D 110, 030001 (2024), section 34 "Passage of particles through
matter"). Units are fixed per field and named in its name: lengths in mm, densities in g/cm^3,
mass thicknesses in g/cm^2, energies in MeV.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Scale energy of multiple scattering, E_s = m_e c^2 sqrt(4 pi / alpha), in MeV (PDG eq. 34.36).
SCALE_ENERGY_MEV = 21.2052


@dataclass(frozen=True)
class Material:
    """A homogeneous material with the constants a parametrized EM shower needs.

    ``critical_energy_mev`` is the PDG (Rossi-definition) critical energy for electrons,
    ``moliere_radius_mm`` the PDG Molière radius, ``dedx_min_mev_cm2_g`` the minimum-ionizing
    mass stopping power used to compute sampling fractions.
    """

    name: str
    z: float
    a: float
    density_g_cm3: float
    radiation_length_g_cm2: float
    moliere_radius_mm: float
    critical_energy_mev: float
    dedx_min_mev_cm2_g: float

    def __post_init__(self) -> None:
        for field in (
            "z",
            "a",
            "density_g_cm3",
            "radiation_length_g_cm2",
            "moliere_radius_mm",
            "critical_energy_mev",
            "dedx_min_mev_cm2_g",
        ):
            value = getattr(self, field)
            if not value > 0:
                raise ValueError(f"material {self.name!r}: {field} must be positive, got {value}")

    @property
    def radiation_length_mm(self) -> float:
        """Radiation length X0 as a length, in mm."""
        return self.radiation_length_g_cm2 / self.density_g_cm3 * 10.0

    @property
    def dedx_min_mev_mm(self) -> float:
        """Minimum-ionizing energy loss per mm of material, in MeV/mm."""
        return self.dedx_min_mev_cm2_g * self.density_g_cm3 / 10.0


#: Tungsten (PDG: X0 = 6.76 g/cm^2 = 0.3504 cm, R_M = 0.9327 cm, E_c(e-) = 7.97 MeV,
#: <dE/dx>_min = 1.145 MeV cm^2/g).
TUNGSTEN = Material(
    name="W",
    z=74.0,
    a=183.84,
    density_g_cm3=19.30,
    radiation_length_g_cm2=6.76,
    moliere_radius_mm=9.327,
    critical_energy_mev=7.97,
    dedx_min_mev_cm2_g=1.145,
)

#: Silicon (PDG: X0 = 21.82 g/cm^2 = 9.370 cm, R_M = 4.944 cm, E_c(e-) = 40.19 MeV,
#: <dE/dx>_min = 1.664 MeV cm^2/g).
SILICON = Material(
    name="Si",
    z=14.0,
    a=28.0855,
    density_g_cm3=2.329,
    radiation_length_g_cm2=21.82,
    moliere_radius_mm=49.44,
    critical_energy_mev=40.19,
    dedx_min_mev_cm2_g=1.664,
)

#: Lead (PDG: X0 = 6.37 g/cm^2 = 0.5612 cm, R_M = 1.602 cm, E_c(e-) = 7.43 MeV,
#: <dE/dx>_min = 1.122 MeV cm^2/g).
LEAD = Material(
    name="Pb",
    z=82.0,
    a=207.2,
    density_g_cm3=11.35,
    radiation_length_g_cm2=6.37,
    moliere_radius_mm=16.02,
    critical_energy_mev=7.43,
    dedx_min_mev_cm2_g=1.122,
)

MATERIALS: dict[str, Material] = {m.name: m for m in (TUNGSTEN, SILICON, LEAD)}


def material(name: str) -> Material:
    """Return the named material (``"W"``, ``"Si"``, ``"Pb"``)."""
    try:
        return MATERIALS[name]
    except KeyError:
        raise ValueError(f"unknown material {name!r}; known: {sorted(MATERIALS)}") from None
