"""Shower datasets: schema, zarr stores and external HDF5 formats."""
