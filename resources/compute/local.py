"""The default compute: the training runs in the Dagster step's own process."""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
from pydantic import Field

from dt_assets.model.job import StepProgress, TrainingJob, epoch_line, run_job
from dt_assets.model.train import EpochReport

from .base import ComputeResource, EpochCallback, Trained


class LocalCompute(ComputeResource):
    """Train in the Dagster step's own process (CUDA when present)."""

    device: str = Field(default="", description="Torch device; empty: this machine's GPU when present, else CPU.")

    def run_training(self, context: dg.AssetExecutionContext, job: TrainingJob, on_epoch: EpochCallback) -> Trained:
        def log(report: EpochReport) -> None:
            context.log.info(epoch_line(report))
            on_epoch(report)

        with StepProgress(context.log.info, job.progress_every_s) as steps:
            result = run_job(replace(job, device=self.device or job.device), [log], [steps])
        return Trained(result=result, world_size=1, compute=f"local ({result.device})")
