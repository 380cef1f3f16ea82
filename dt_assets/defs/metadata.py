"""Small helpers that turn domain results into Dagster metadata."""

import base64

import dagster as dg


def image(png: bytes, alt: str) -> dg.MetadataValue:
    """An inline PNG, shown in the asset's metadata in the UI."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
