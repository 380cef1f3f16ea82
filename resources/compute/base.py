"""What every compute is: :class:`ComputeResource` runs a training and returns :class:`Trained`, and
starts the hyper-parameter study's workers (processes on this machine unless a compute says otherwise)."""

from __future__ import annotations

import os
import sys
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster import ConfigurableResource

from dt_assets.model.job import TrainingJob
from dt_assets.model.train import EpochReport, TrainResult

from .launched import _Launched, _Process

EpochCallback = Callable[[EpochReport], None]


@dataclass
class Trained:
    """A finished training: the model and history, and where it ran."""

    result: TrainResult
    world_size: int
    compute: str


class ComputeResource(ConfigurableResource):
    """Where a training runs. Subclasses implement :meth:`run_training`; :meth:`start_workers` starts
    the hyper-parameter study's workers (processes on this machine unless a subclass says otherwise)."""

    @abstractmethod
    def run_training(self, context: dg.AssetExecutionContext, job: TrainingJob, on_epoch: EpochCallback) -> Trained:
        """Run ``job`` to its end; call ``on_epoch`` once per finished epoch (in this process)."""

    def python_executable(self) -> str:
        return sys.executable

    def start_workers(
        self,
        context: dg.AssetExecutionContext,
        folder: Path,
        module: str,
        args: Sequence[str],
        n_workers: int,
        env: Mapping[str, str],
    ) -> list[_Launched]:
        """Start ``python -m module *args --worker I`` for I = 0..n_workers-1, each logging to
        ``folder/worker-I.log``. Here: processes on this machine, sharing its cores (``OMP_NUM_THREADS``
        is each one's share unless set)."""
        share = str(max(1, (os.cpu_count() or 1) // n_workers))
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", share), **env}
        launched: list[_Launched] = []
        try:
            for i in range(n_workers):
                command = [self.python_executable(), "-m", module, *args, "--worker", str(i)]
                process = _Process(command, env, folder, f"worker {i}", log_name=f"worker-{i}.log")
                process.label = f"worker {i} (pid {process.process.pid})"
                launched.append(process)
        except BaseException:
            for started in launched:
                started.cancel()
            raise
        return launched
