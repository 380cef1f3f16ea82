"""Which compute the code location uses: ``$CALOTWIN_COMPUTE_CONFIG``, else ``$CALOTWIN_HOME/compute.yaml``,
else :class:`~.local.LocalCompute`; a setting's ``kind`` names the compute (:data:`COMPUTES`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dt_assets.home import calotwin_home

from .base import ComputeResource
from .kubernetes import KubernetesCompute
from .local import LocalCompute
from .slurm import SlurmCompute
from .torchrun import TorchrunCompute

COMPUTE_CONFIG_ENV = "CALOTWIN_COMPUTE_CONFIG"

COMPUTES: dict[str, type[ComputeResource]] = {
    "local": LocalCompute,
    "torchrun": TorchrunCompute,
    "slurm": SlurmCompute,
    "kubernetes": KubernetesCompute,
}


def compute_from_config(settings: Mapping[str, Any], source: str = "compute settings") -> ComputeResource:
    """A compute from ``{"kind": "slurm", "partition": ..., ...}``; bad values name ``source`` and the field."""
    if not isinstance(settings, Mapping):
        raise ValueError(f"{source}: expected a mapping with 'kind', got {type(settings).__name__}")
    fields = dict(settings)
    kind = fields.pop("kind", "local")
    if kind not in COMPUTES:
        raise ValueError(f"{source}: kind: unknown compute {kind!r}; one of {sorted(COMPUTES)}")
    cls = COMPUTES[kind]
    unknown = sorted(set(fields) - set(cls.model_fields))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) for kind {kind!r}: {unknown}; known: {sorted(cls.model_fields)}")
    missing = sorted(name for name, f in cls.model_fields.items() if f.is_required() and name not in fields)
    if missing:
        raise ValueError(f"{source}: missing field(s) for kind {kind!r}: {missing}")
    try:
        return cls(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{source}: {problems}") from None


def compute_from_env() -> ComputeResource:
    """The compute named by ``$CALOTWIN_COMPUTE_CONFIG`` or ``$CALOTWIN_HOME/compute.yaml``; else local."""
    path = os.environ.get(COMPUTE_CONFIG_ENV, "")
    file = Path(path) if path else calotwin_home() / "compute.yaml"
    if not file.exists():
        if path:
            raise ValueError(f"${COMPUTE_CONFIG_ENV}={path}: no such file")
        return LocalCompute()
    try:
        settings = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not valid YAML ({exc})") from None
    return compute_from_config(settings, str(file))
