"""Calorimeter physics: materials, geometry, particles and the GFlash parametrization.

The Monte Carlo that samples the parametrization into shower datasets is :mod:`dt_assets.simulation`.
"""
