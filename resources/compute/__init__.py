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

The package holds one module per compute (``local``, ``torchrun``, ``slurm``, ``kubernetes``), their
base (``base``), the Pipes plumbing of the external ones (``pipes``), the processes they start
(``launched``) and the choice from configuration (``registry``); this module re-exports their names.
"""

from .base import ComputeResource, EpochCallback, Trained
from .kubernetes import KubernetesCompute
from .launched import DEFAULT_SIGNALS
from .local import LocalCompute
from .pipes import ENTRY_MODULE, EXCEPTION_LINE, PipesCompute, first_exception, log_tail
from .registry import COMPUTE_CONFIG_ENV, COMPUTES, compute_from_config, compute_from_env
from .slurm import SLURM_FAILED_STATES, SLURM_TIME, SlurmCompute, SlurmQueryError, slurm_job_info
from .torchrun import TorchrunCompute

__all__ = [
    "COMPUTES",
    "COMPUTE_CONFIG_ENV",
    "DEFAULT_SIGNALS",
    "ENTRY_MODULE",
    "EXCEPTION_LINE",
    "SLURM_FAILED_STATES",
    "SLURM_TIME",
    "ComputeResource",
    "EpochCallback",
    "KubernetesCompute",
    "LocalCompute",
    "PipesCompute",
    "SlurmCompute",
    "SlurmQueryError",
    "TorchrunCompute",
    "Trained",
    "compute_from_config",
    "compute_from_env",
    "first_exception",
    "log_tail",
    "slurm_job_info",
]
