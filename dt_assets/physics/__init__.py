"""Calorimeter physics: materials, geometry, the GFlash parametrization and the Monte Carlo."""
