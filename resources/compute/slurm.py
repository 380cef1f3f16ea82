"""Slurm: the training is an ``sbatch`` script whose ``srun`` starts ``torchrun`` on every node; the
hyper-parameter study's workers are one array job. The job's state comes from ``scontrol`` (``squeue``
once Slurm forgot the job)."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import dagster as dg
from pydantic import Field, field_validator

from .launched import _Launched
from .pipes import ENTRY_MODULE, PipesCompute

#: Slurm job states after which the job will not run again (``scontrol show job``'s JobState)
SLURM_FAILED_STATES = frozenset(
    {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)
SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$|^UNLIMITED$|^INFINITE$")


class _SlurmJob(_Launched):
    #: consecutive failed state queries (slurmctld restarting, say) tolerated before giving up on the job
    MAX_QUERY_ERRORS = 30

    def __init__(
        self,
        job_id: str,
        folder: Path,
        compute: SlurmCompute,
        context: dg.AssetExecutionContext,
        log_path: Path | None = None,
        what: str = "",
    ) -> None:
        self.job_id = job_id
        self.log_path = log_path or folder / f"slurm-{job_id}.log"
        self.label = f"{what}Slurm job {job_id}" + (f" (partition {compute.partition})" if compute.partition else "")
        self.context = context
        self.state = ""
        self.query_errors = 0

    def poll(self) -> str | None:
        try:
            info = slurm_job_info(self.job_id)
        except SlurmQueryError as exc:
            self.query_errors += 1
            if self.query_errors == 1:
                self.context.log.warning(f"{self.label}: {exc}; trying again")
            if self.query_errors >= self.MAX_QUERY_ERRORS:
                raise dg.Failure(f"{self.label}: lost track of the job after {self.query_errors} tries: {exc}") from exc
            return None
        self.query_errors = 0
        state = info.get("JobState", "")
        if state != self.state:
            self.context.log.info(f"{self.label}: {state} (reason {info.get('Reason', 'None')})")
            self.state = state
        if state == "COMPLETED":
            return ""
        if state in SLURM_FAILED_STATES:
            return f"{state} (ExitCode={info.get('ExitCode', '?')}, Reason={info.get('Reason', 'None')})"
        return None

    def cancel(self) -> None:
        subprocess.run(["scancel", self.job_id], capture_output=True, text=True, check=False)


class SlurmQueryError(RuntimeError):
    """Neither ``scontrol`` nor ``squeue`` could tell the state of a job."""


def slurm_job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``'s fields of one job (``JobState``, ``ExitCode``, ``Reason``, ...)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        # finished jobs are forgotten after MinJobAge: squeue -t all may still know the state
        queued = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False
        )
        state = queued.stdout.strip()
        if queued.returncode == 0 and state:
            return {"JobState": state}
        raise SlurmQueryError(f"scontrol show job {job_id} failed: {out.stderr.strip() or out.stdout.strip()}")
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


class SlurmCompute(PipesCompute):
    """A batch job: ``sbatch`` a script whose ``srun`` starts ``torchrun`` on every node."""

    partition: str = Field(default="", description="Partition (-p); empty: the cluster's default.")
    nodes: int = Field(default=1, ge=1, description="Nodes (-N); more than one uses torchrun's c10d rendezvous.")
    gpus_per_node: int = Field(default=0, ge=0, description="GPUs per node (--gpus-per-node); 0: CPU only.")
    nproc_per_node: int = Field(
        default=0, ge=0, description="DDP ranks per node; 0: one per GPU, or 1 on a CPU-only job."
    )
    cpus_per_task: int = Field(default=0, ge=0, description="CPUs per node's task (--cpus-per-task); 0: default.")
    time: str = Field(default="01:00:00", description="Time limit (--time), e.g. 30, 02:00:00 or 1-00:00:00.")
    account: str = Field(default="", description="Account to charge (--account); empty: the user's default.")
    extra_directives: list[str] = Field(
        default_factory=list, description="More sbatch options, one per item, e.g. '--constraint=a100' or '--qos=high'."
    )
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run before the launch, e.g. 'module load cuda' or 'source /path/venv/bin/activate'.",
    )
    rendezvous_port: int = Field(default=29500, ge=1, le=65535, description="torchrun rendezvous port (multi-node).")
    job_name: str = Field(default="calotwin-train", description="Slurm job name.")
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often scontrol is asked for the job's state (the log streams anyway)."
    )

    kind: ClassVar[str] = "slurm"

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: str) -> str:
        if not SLURM_TIME.match(value):
            raise ValueError(f"not a Slurm time limit: {value!r} (use minutes, HH:MM:SS or D-HH:MM:SS)")
        return value

    @field_validator("extra_directives")
    @classmethod
    def _directives(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip().removeprefix("#SBATCH").strip() for v in value]
        for v in cleaned:
            if not v.startswith("-") or "\n" in v:
                raise ValueError(f"not an sbatch option: {v!r} (write e.g. '--constraint=a100')")
        return cleaned

    def ranks_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1

    def batch_script(
        self, first: Sequence[str], env: Mapping[str, str], body: Sequence[str], defaults: Sequence[str] = ()
    ) -> str:
        """An sbatch script: the directives (``first``, then this compute's), ``set -euo pipefail``, the setup
        lines, ``defaults`` (exports ``env`` may override), ``env`` exported, then ``body``."""
        lines = [
            "#!/bin/bash",
            *(f"#SBATCH {d}" for d in self.directives(first)),
            "set -euo pipefail",
            *self.setup,
            *defaults,
            *(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())),
            *body,
            "",
        ]
        return "\n".join(lines)

    def submit(self, script: Path, text: str, what: str) -> str:
        """Write ``script`` and ``sbatch`` it; returns the job id (a refusal fails naming ``what``)."""
        script.write_text(text)
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise dg.Failure(f"sbatch refused {what} ({script}): {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout.strip().split(";")[0]

    def directives(self, first: Sequence[str]) -> list[str]:
        """``first``, then the time limit and this compute's partition, GPUs, CPUs, account and extras."""
        directives = [*first, f"--time={self.time}"]
        if self.partition:
            directives.append(f"--partition={self.partition}")
        if self.gpus_per_node:
            directives.append(f"--gpus-per-node={self.gpus_per_node}")
        if self.cpus_per_task:
            directives.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.account:
            directives.append(f"--account={self.account}")
        return directives + self.extra_directives

    def script(self, folder: Path, env: Mapping[str, str]) -> str:
        """The sbatch script: directives, setup, the job's environment, then srun + torchrun."""
        first = [f"--job-name={self.job_name}", f"--output={folder}/slurm-%j.log", f"--nodes={self.nodes}"]
        if self.nodes == 1:
            rendezvous = "--standalone"
        else:
            rendezvous = (
                '--nnodes="$SLURM_JOB_NUM_NODES" --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d '
                f'--rdzv_endpoint="$head:{self.rendezvous_port}"'
            )
        torchrun = (
            f"{shlex.quote(self.python_executable())} -m torch.distributed.run {rendezvous} "
            f"--nproc_per_node={self.ranks_per_node()} -m {ENTRY_MODULE}"
        )
        body = [
            'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            'echo "calotwin: Slurm job $SLURM_JOB_ID on $SLURM_JOB_NODELIST (rendezvous on $head)"',
            f"srun --kill-on-bad-exit=1 {torchrun}",
        ]
        return self.batch_script([*first, "--ntasks-per-node=1"], env, body)

    def launch(self, context: dg.AssetExecutionContext, folder: Path, env: Mapping[str, str]) -> _Launched:
        script = folder / "train.sbatch"
        job_id = self.submit(script, self.script(folder, env), "the training job")
        context.log.info(f"submitted {script} as Slurm job {job_id}")
        return _SlurmJob(job_id, folder, self, context)

    def worker_script(
        self, folder: Path, module: str, args: Sequence[str], n_workers: int, env: Mapping[str, str]
    ) -> str:
        """An array job of ``n_workers`` tasks on one node each; task I runs ``python -m module *args --worker I``
        with this compute's GPUs and CPUs, and torch on its CPUs (``OMP_NUM_THREADS``, unless ``env`` sets it)."""
        first = [
            f"--job-name={self.job_name}-workers",
            f"--output={folder}/worker-%a.log",
            f"--array=0-{n_workers - 1}",
            "--nodes=1",
            "--ntasks=1",
        ]
        command = " ".join(shlex.quote(a) for a in [self.python_executable(), "-m", module, *args])
        body = [
            'echo "calotwin: worker $SLURM_ARRAY_TASK_ID, Slurm job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} '
            'on $SLURM_JOB_NODELIST"',
            f'srun {command} --worker "$SLURM_ARRAY_TASK_ID"',
        ]
        return self.batch_script(first, env, body, defaults=['export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"'])

    def start_workers(
        self,
        context: dg.AssetExecutionContext,
        folder: Path,
        module: str,
        args: Sequence[str],
        n_workers: int,
        env: Mapping[str, str],
    ) -> list[_Launched]:
        """One Slurm array job; worker I is array task I (``<job>_I``, log ``folder/worker-I.log``)."""
        script = folder / "workers.sbatch"
        job_id = self.submit(script, self.worker_script(folder, module, args, n_workers, env), "the workers' array job")
        context.log.info(f"submitted {script} as Slurm array job {job_id} ({n_workers} task(s))")
        return [
            _SlurmJob(f"{job_id}_{i}", folder, self, context, folder / f"worker-{i}.log", f"worker {i}: ")
            for i in range(n_workers)
        ]
