"""The external training process: the domain training loop, reporting to Dagster through Pipes.

    CALOTWIN_TRAINING_JOB=job.json python -m dt_assets.pipes_training
    CALOTWIN_TRAINING_JOB=job.json torchrun --nproc_per_node 2 -m dt_assets.pipes_training

The torchrun, Slurm and Kubernetes computes (:mod:`resources.compute`) launch this with the Pipes
bootstrap variables in the environment. Every rank reads the job from ``$CALOTWIN_TRAINING_JOB``
(:class:`dt_assets.model.job.TrainingJob`) and trains; rank 0 alone opens Dagster Pipes and sends,
within each epoch, a step line at the job's cadence (``progress_every_s``) as a Dagster log
message; per epoch, the progress line as a Dagster log message and the epoch's report as a custom
message; then the result (device, world size, resumed epoch, checkpoint). The model itself travels
through the checkpoint in storage. Without Pipes variables (a plain ``torchrun`` by hand) it trains
and prints the same lines. It draws no progress bars: its output goes to a log file.

This module imports ``dagster_pipes`` (a small dependency-free package), not Dagster.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from dataclasses import asdict

import torch.distributed as dist
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

from dt_assets.model.job import EPOCH_MESSAGE, RESULT_MESSAGE, StepProgress, TrainingJob, epoch_line, run_job
from dt_assets.model.train import Distributed, EpochReport


def main() -> int:
    job = TrainingJob.from_env()
    ctx = Distributed.from_env()
    use_pipes = ctx.is_main and bool(os.environ.get(DAGSTER_PIPES_CONTEXT_ENV_VAR))
    with ExitStack() as stack:
        pipes = stack.enter_context(open_dagster_pipes()) if use_pipes else None

        def log(line: str) -> None:
            print(line, flush=True)
            if pipes is not None:
                pipes.log.info(line)

        def report(epoch: EpochReport) -> None:
            log(epoch_line(epoch))
            if pipes is not None:
                pipes.report_custom_message({"kind": EPOCH_MESSAGE, "report": asdict(epoch)})

        with StepProgress(log, job.progress_every_s, bars=False) as steps:
            result = run_job(job, [report], [steps])
        if pipes is not None:
            pipes.report_custom_message(
                {
                    "kind": RESULT_MESSAGE,
                    "device": result.device,
                    "world_size": ctx.world_size,
                    "resumed_from_epoch": result.resumed_from_epoch,
                    "checkpoint_url": result.checkpoint_url,
                }
            )
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
