"""Compute resources: where ``gan_model`` trains, chosen by configuration alone.

The training asset calls ``compute.run_training(context, job, on_epoch)`` and never knows which one
it has:

- :class:`LocalCompute` (the default): in-process, CUDA when present.
- :class:`TorchrunCompute`: ``torchrun --standalone --nproc_per_node N`` on this machine (DDP; gloo
  on CPU, NCCL on GPUs).
- :class:`SlurmCompute`: an ``sbatch`` script whose ``srun`` starts ``torchrun`` on each node.
- :class:`KubernetesCompute`: a pod (through ``dagster-k8s``), e.g. on an interLink virtual node.

In-process, the epoch lines and, at the job's cadence (``progress_every_s``), the step lines within
each epoch go to the Dagster log (with bars when the process turned them on: ``make demo``). The
three out-of-process ones run :mod:`dt_assets.pipes_training` with Dagster Pipes: the same epoch
and step lines stream into the Dagster log, per-epoch reports arrive as custom messages (``on_epoch`` turns
them into MLflow metrics, as in-process) and the model comes back through the final checkpoint in
storage, so the asset's metadata is the same whatever ran it. A failed external job fails the asset
with the external reason (exit code, Slurm state, pod error) and the tail of its log.

The same resource starts ``hpo_study``'s workers (:meth:`ComputeResource.start_workers`): processes
on this machine for the local and torchrun computes, one array job for Slurm (a task per worker);
Kubernetes refuses, naming what to use.

Which compute the code location uses comes from ``$CALOTWIN_COMPUTE_CONFIG``, else
``$CALOTWIN_HOME/compute.yaml``, else :class:`LocalCompute` (see :func:`compute_from_env`).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import yaml
from dagster import ConfigurableResource
from pydantic import Field, ValidationError, field_validator

from dt_assets.home import calotwin_home
from dt_assets.model.job import (
    EPOCH_MESSAGE,
    JOB_ENV,
    RESULT_MESSAGE,
    StepProgress,
    TrainingJob,
    epoch_line,
    read_result,
    report_from_dict,
    run_job,
)
from dt_assets.model.train import EpochReport, TrainResult

COMPUTE_CONFIG_ENV = "CALOTWIN_COMPUTE_CONFIG"
ENTRY_MODULE = "dt_assets.pipes_training"
#: Slurm job states after which the job will not run again (``scontrol show job``'s JobState)
SLURM_FAILED_STATES = frozenset(
    {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)
SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$|^UNLIMITED$|^INFINITE$")

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


class _Launched:
    """An external job in flight: its state, cancellation, and its log file."""

    log_path: Path
    label: str

    def poll(self) -> str | None:
        """None while it runs; "" once it succeeded; the reason once it failed."""
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError


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

    def take(self, messages) -> None:
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


#: ``python -c`` program that runs ``argv[1:]`` with SIGINT and SIGTERM at their defaults. An ignored signal is
#: inherited across exec, and a Dagster process started in the background (SIGINT ignored) ignores SIGTERM
#: too after any in-process run: Dagster maps SIGTERM to SIGINT's handler. Without this, cancel's SIGTERM
#: would not stop the job, only the SIGKILL 15 s later.
DEFAULT_SIGNALS = (
    "import os, signal, sys\n"
    "for s in (signal.SIGINT, signal.SIGTERM):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class _Process(_Launched):
    """A local process in its own process group (its log: ``folder/log_name``), started with SIGINT and
    SIGTERM at their defaults whatever this process does with them (:data:`DEFAULT_SIGNALS`)."""

    def __init__(
        self, command: list[str], env: Mapping[str, str], folder: Path, label: str, log_name: str = "train.log"
    ) -> None:
        self.log_path = folder / log_name
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", DEFAULT_SIGNALS, *command],
                env={**os.environ, **env},
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cancel stops torchrun and its workers
            )
        self.label = label

    def poll(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return "" if code == 0 else f"exit code {code}"

    def cancel(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


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


class KubernetesCompute(ComputeResource):
    """A pod through ``dagster-k8s`` Pipes. For interLink, select its virtual node (node_selector,
    tolerations). The pod reaches the data through an object store (or volumes mounted at the
    storage paths). Untested against a live cluster."""

    image: str = Field(description="Container image with CaloTwin installed.")
    namespace: str = Field(default="", description="Namespace; empty: the current one, else 'default'.")
    gpus: int = Field(default=0, ge=0, description="GPUs requested (limit on gpu_resource).")
    gpu_resource: str = Field(default="nvidia.com/gpu", description="Extended resource name of a GPU.")
    nproc_per_node: int = Field(default=0, ge=0, description="DDP ranks in the pod; 0: one per GPU, or 1.")
    cpu: str = Field(default="", description="CPU request and limit, e.g. '8'; empty: none.")
    memory: str = Field(default="", description="Memory request and limit, e.g. '32Gi'; empty: none.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the container.")
    env_from_secrets: list[str] = Field(
        default_factory=list, description="Secrets whose keys become environment variables (e.g. S3 credentials)."
    )
    volumes: list[dict[str, Any]] = Field(default_factory=list, description="Pod volumes (Kubernetes volume specs).")
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list, description="Container volume mounts.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector (e.g. interLink's).")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")
    service_account: str = Field(default="", description="Service account of the pod; empty: the namespace's.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets for pulling the image.")
    kubeconfig_file: str = Field(default="", description="kubeconfig; empty: in-cluster config or ~/.kube/config.")
    kube_context: str = Field(default="", description="kubeconfig context; empty: the current one.")
    pod_wait_timeout_seconds: float = Field(default=86400.0, gt=0, description="Longest time a pod may run.")

    def ranks(self) -> int:
        return self.nproc_per_node or self.gpus or 1

    def command(self) -> list[str]:
        ranks = f"--nproc_per_node={self.ranks()}"
        return ["python", "-m", "torch.distributed.run", "--standalone", ranks, "-m", ENTRY_MODULE]

    def pod_spec(self) -> dict[str, Any]:
        """The base pod spec (dagster-k8s adds the image, command and Pipes variables)."""
        limits: dict[str, str] = {}
        if self.gpus:
            limits[self.gpu_resource] = str(self.gpus)
        if self.cpu:
            limits["cpu"] = self.cpu
        if self.memory:
            limits["memory"] = self.memory
        container: dict[str, Any] = {"name": "train"}
        if limits:
            container["resources"] = {"limits": limits, "requests": dict(limits)}
        if self.env_from_secrets:
            container["env_from"] = [{"secret_ref": {"name": name}} for name in self.env_from_secrets]
        if self.volume_mounts:
            container["volume_mounts"] = list(self.volume_mounts)
        spec: dict[str, Any] = {"containers": [container], "restart_policy": "Never"}
        if self.volumes:
            spec["volumes"] = list(self.volumes)
        if self.node_selector:
            spec["node_selector"] = dict(self.node_selector)
        if self.tolerations:
            spec["tolerations"] = list(self.tolerations)
        if self.service_account:
            spec["service_account_name"] = self.service_account
        if self.image_pull_secrets:
            spec["image_pull_secrets"] = [{"name": name} for name in self.image_pull_secrets]
        return spec

    def start_workers(
        self,
        context: dg.AssetExecutionContext,
        folder: Path,
        module: str,
        args: Sequence[str],
        n_workers: int,
        env: Mapping[str, str],
    ) -> list[_Launched]:
        raise dg.Failure(
            "workers do not run on the kubernetes compute yet: set the asset's launcher to 'processes' "
            "(workers on this machine), or use a local, torchrun or slurm compute"
        )

    def pod_body(self, pod_name: str, job: TrainingJob, pipes_env: Mapping[str, str]):
        """The pod dagster-k8s creates (a ``kubernetes.client.V1Pod``)."""
        from dagster_k8s.pipes import build_pod_body

        return build_pod_body(
            pod_name=pod_name,
            image=self.image,
            command=self.command(),
            env_vars={**self.env, **pipes_env, JOB_ENV: job.to_json()},
            base_pod_meta={"labels": {"app.kubernetes.io/part-of": "calotwin", "calotwin/role": "training"}},
            base_pod_spec=self.pod_spec(),
        )

    def run_training(self, context: dg.AssetExecutionContext, job: TrainingJob, on_epoch: EpochCallback) -> Trained:
        from dagster_k8s.client import DagsterKubernetesClient, WaitForPodState
        from dagster_k8s.pipes import PipesK8sClient, get_pod_name
        from dagster_k8s.utils import detect_current_namespace

        if "://" not in job.checkpoint_dir:
            context.log.warning(
                f"checkpoints go to a local path ({job.checkpoint_dir}): the pod must mount it (volumes), "
                "or use object storage"
            )
        pipes = PipesK8sClient(kubeconfig_file=self.kubeconfig_file or None, kube_context=self.kube_context or None)
        pipes._load_k8s_config()
        client = DagsterKubernetesClient.production_client()
        namespace = self.namespace or detect_current_namespace(self.kubeconfig_file or None) or "default"
        pod_name = get_pod_name(context.run_id, context.op.name)
        with dg.open_pipes_session(context, dg.PipesEnvContextInjector(), pipes.message_reader) as session:
            body = self.pod_body(pod_name, job, session.get_bootstrap_env_vars())
            client.core_api.create_namespaced_pod(namespace, body)
            context.log.info(f"created pod {namespace}/{pod_name}")
            try:
                with pipes.consume_pod_logs(context=context, client=client, namespace=namespace, pod_name=pod_name):
                    client.wait_for_pod(
                        pod_name,
                        namespace,
                        wait_for_state=WaitForPodState.Terminated,
                        wait_timeout=self.pod_wait_timeout_seconds,
                    )
            except Exception as exc:  # dagster-k8s raises with the pod's status and container message
                raise dg.Failure(f"pod {namespace}/{pod_name} failed: {exc}") from exc
            finally:
                client.core_api.delete_namespaced_pod(pod_name, namespace)
        reports = _PipesReports(on_epoch)
        reports.take(session.get_custom_messages())
        return reports.trained(job, f"pod {namespace}/{pod_name}")


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
