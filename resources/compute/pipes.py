"""Dagster Pipes for the computes that run :mod:`dt_assets.pipes_training` out of process.

:class:`PipesCompute` is the base of the computes whose job shares a file system with this process
(torchrun, Slurm): the job file, the Pipes context and messages and the job's log lie in a job
folder; the state is polled until the job ends. :class:`_PipesReports` turns the custom messages
into ``on_epoch`` calls and the final :class:`~.base.Trained` (the Kubernetes compute uses it too).
:func:`log_tail` and :func:`first_exception` read a failed job's log for the asset's failure.
"""

from __future__ import annotations

import os
import re
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field

from dt_assets.home import calotwin_home
from dt_assets.model.job import EPOCH_MESSAGE, JOB_ENV, RESULT_MESSAGE, TrainingJob, read_result, report_from_dict

from .base import ComputeResource, EpochCallback, Trained
from .launched import _Launched

ENTRY_MODULE = "dt_assets.pipes_training"


class PipesCompute(ComputeResource):
    """Shared by the computes that run the training as an external process on a shared file system."""

    workdir: str = Field(
        default="",
        description="Folder for job files, Pipes messages and logs, visible to the compute nodes; "
        "empty: $CALOTWIN_HOME/jobs.",
    )
    python: str = Field(default="", description="Python of the external process; empty: this interpreter.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the job.")
    poll_interval_seconds: float = Field(default=1.0, gt=0, description="How often the job's state is checked.")
    log_tail_lines: int = Field(default=40, ge=0, description="Lines of the job's log copied to the Dagster log.")

    kind: ClassVar[str] = "external"

    @abstractmethod
    def launch(self, context: dg.AssetExecutionContext, folder: Path, env: Mapping[str, str]) -> _Launched:
        """Start the job (its environment: the Pipes bootstrap variables and the job path)."""

    def python_executable(self) -> str:
        return self.python or super().python_executable()

    def job_folder(self, context: dg.AssetExecutionContext) -> Path:
        root = Path(self.workdir) if self.workdir else calotwin_home() / "jobs"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        folder = root / f"{stamp}-{context.run_id[:8]}-{self.kind}"
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    def run_training(self, context: dg.AssetExecutionContext, job: TrainingJob, on_epoch: EpochCallback) -> Trained:
        folder = self.job_folder(context)
        job_file = folder / "job.json"
        job_file.write_text(job.to_json())
        reports = _PipesReports(on_epoch)
        injector = dg.PipesFileContextInjector(str(folder / "pipes-context.json"))
        reader = dg.PipesFileMessageReader(str(folder / "pipes-messages.jsonl"), cleanup_file=False)
        with dg.open_pipes_session(context, injector, reader) as session:
            env = {**self.env, **session.get_bootstrap_env_vars(), JOB_ENV: str(job_file)}
            launched = self.launch(context, folder, env)
            context.log.info(f"launched {launched.label}; job files and log in {folder}")
            try:
                while (outcome := launched.poll()) is None:
                    reports.take(session.get_custom_messages())
                    time.sleep(self.poll_interval_seconds)
            except BaseException:  # the run was cancelled or the step interrupted: stop the job too
                context.log.warning(f"stopping {launched.label}")
                launched.cancel()
                raise
        reports.take(session.get_custom_messages())  # the reader thread has read everything by now
        tail = log_tail(launched.log_path, self.log_tail_lines)
        if tail:
            context.log.info(f"{launched.label}: last lines of {launched.log_path}:\n{tail}")
        if outcome:
            cause = first_exception(launched.log_path)
            outcome = f"{outcome}: {cause}" if cause else outcome
            raise dg.Failure(
                description=f"{launched.label} failed: {outcome}\n--- last lines of {launched.log_path}:\n{tail}",
                metadata={"log": dg.MetadataValue.path(str(launched.log_path)), "reason": outcome},
            )
        return reports.trained(
            job, launched.label, f"(did {ENTRY_MODULE} run?)\n--- last lines of {launched.log_path}:\n{tail}"
        )


class _PipesReports:
    """The custom messages of :mod:`dt_assets.pipes_training`: each epoch's report goes to ``on_epoch``
    as it arrives (:meth:`take` may see the same growing list many times); the result is kept."""

    def __init__(self, on_epoch: EpochCallback) -> None:
        self.on_epoch = on_epoch
        self.seen = 0
        self.result: dict[str, Any] | None = None

    def take(self, messages: Sequence[Any]) -> None:
        for message in messages[self.seen :]:
            if isinstance(message, dict) and message.get("kind") == EPOCH_MESSAGE:
                self.on_epoch(report_from_dict(message["report"]))
            elif isinstance(message, dict) and message.get("kind") == RESULT_MESSAGE:
                self.result = message
        self.seen = len(messages)

    def trained(self, job: TrainingJob, label: str, hint: str = "") -> Trained:
        """The model from the job's final checkpoint, once the result message came."""
        if self.result is None:
            raise dg.Failure(f"{label} finished but reported no result through Dagster Pipes {hint}".rstrip())
        result = read_result(job, self.result["device"], int(self.result["resumed_from_epoch"]))
        return Trained(result=result, world_size=int(self.result["world_size"]), compute=label)


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    if lines <= 0 or not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 200 * lines))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:\w+\.)*\w*(?:Error|Exception|Interrupt|Exit)\b:?.*)$")


def first_exception(path: Path, scan_bytes: int = 1 << 20) -> str:
    """The first exception line in a log ("ValueError: ..."), skipping the launchers' own wrappers."""
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - scan_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    for line in text.splitlines():
        match = EXCEPTION_LINE.match(line.strip())
        if match and "ChildFailedError" not in match.group(1) and ":" in match.group(1):
            return match.group(1).strip()
    return ""
