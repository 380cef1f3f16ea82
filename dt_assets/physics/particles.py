"""Particle species the simulator knows, by PDG Monte Carlo code."""

from __future__ import annotations

ELECTRON = 11
PHOTON = 22

#: Accepted names for each PDG code (the first is the canonical name).
NAMES: dict[int, tuple[str, ...]] = {
    ELECTRON: ("e-", "electron", "e"),
    PHOTON: ("gamma", "photon", "g"),
}
_BY_NAME = {alias: code for code, aliases in NAMES.items() for alias in aliases}


def pdg_code(particle: str | int) -> int:
    """PDG code of a particle given by name (``"e-"``, ``"gamma"``, ...) or code (11, 22)."""
    if isinstance(particle, str):
        key = particle.strip().lower()
        if key in _BY_NAME:
            return _BY_NAME[key]
        if key.lstrip("-").isdigit():
            particle = int(key)
        else:
            raise ValueError(f"unknown particle {particle!r}; known: {sorted(_BY_NAME)}")
    if int(particle) not in NAMES:
        raise ValueError(f"unsupported particle code {particle!r}; supported PDG codes: {sorted(NAMES)}")
    return int(particle)


def particle_name(code: int) -> str:
    """Canonical name of a PDG code."""
    return NAMES[pdg_code(code)][0]
