"""DDP on this machine: ``torchrun --standalone`` runs :mod:`dt_assets.pipes_training`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import dagster as dg
from pydantic import Field

from .launched import _Launched, _Process
from .pipes import ENTRY_MODULE, PipesCompute


class TorchrunCompute(PipesCompute):
    """DDP on this machine: ``torchrun --standalone --nproc_per_node N`` (gloo on CPU, NCCL on GPUs)."""

    nproc_per_node: int = Field(default=2, ge=1, description="Processes (DDP ranks) on this machine.")
    torchrun_args: list[str] = Field(default_factory=list, description="Extra torchrun arguments.")

    kind: ClassVar[str] = "torchrun"

    def command(self) -> list[str]:
        return [
            self.python_executable(),
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.nproc_per_node}",
            *self.torchrun_args,
            "-m",
            ENTRY_MODULE,
        ]

    def launch(self, context: dg.AssetExecutionContext, folder: Path, env: Mapping[str, str]) -> _Launched:
        # one machine: keep gloo's sockets on the loopback interface unless told otherwise
        env = {"GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"), **env}
        return _Process(self.command(), env, folder, f"torchrun ({self.nproc_per_node} processes)")
