"""The Dagster layer: assets, checks and jobs that call the domain code. Only this package imports Dagster."""
