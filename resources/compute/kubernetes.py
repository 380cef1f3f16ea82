"""Kubernetes: the training runs in a pod that dagster-k8s's public :class:`dagster_k8s.PipesK8sClient`
creates, follows (its log carries the Pipes messages) and deletes. For interLink, select its virtual
node (``node_selector``, ``tolerations``). Untested against a live cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, field_validator

from dt_assets.model.job import JOB_ENV, TrainingJob

from .base import ComputeResource, EpochCallback, Trained
from .launched import _Launched
from .pipes import ENTRY_MODULE, _PipesReports

if TYPE_CHECKING:
    from .pod_client import PodNamingClient

#: The labels of every training pod (dagster-k8s adds its own)
POD_LABELS = {"app.kubernetes.io/part-of": "calotwin", "calotwin/role": "training"}
#: Environment variables the compute sets itself: the job, and Dagster Pipes' bootstrap variables
RESERVED_ENV_PREFIXES = (JOB_ENV, "DAGSTER_PIPES_")


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

    @field_validator("env")
    @classmethod
    def _own_env(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in value if k.startswith(RESERVED_ENV_PREFIXES))
        if reserved:
            raise ValueError(f"{reserved}: set by the compute itself (the job and Dagster Pipes)")
        return value

    def ranks(self) -> int:
        return self.nproc_per_node or self.gpus or 1

    def command(self) -> list[str]:
        ranks = f"--nproc_per_node={self.ranks()}"
        return ["python", "-m", "torch.distributed.run", "--standalone", ranks, "-m", ENTRY_MODULE]

    def pod_spec(self) -> dict[str, Any]:
        """The base pod spec (dagster-k8s adds the image, command and environment to its first container)."""
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

    def pipes_client(self) -> PodNamingClient:
        """The dagster-k8s Pipes client: the kubeconfig and context when set, else in-cluster or the default."""
        from .pod_client import PodNamingClient

        return PodNamingClient(kubeconfig_file=self.kubeconfig_file or None, kube_context=self.kube_context or None)

    def run_arguments(self, job: TrainingJob) -> dict[str, Any]:
        """What :meth:`PipesK8sClient.run` gets besides the context: the pod and the job in its environment."""
        return {
            "image": self.image,
            "command": self.command(),
            "namespace": self.namespace or None,
            "env": {**self.env, JOB_ENV: job.to_json()},
            "base_pod_meta": {"labels": dict(POD_LABELS)},
            "base_pod_spec": self.pod_spec(),
            "pod_wait_timeout": self.pod_wait_timeout_seconds,
        }

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

    def run_training(self, context: dg.AssetExecutionContext, job: TrainingJob, on_epoch: EpochCallback) -> Trained:
        if "://" not in job.checkpoint_dir:
            context.log.warning(
                f"checkpoints go to a local path ({job.checkpoint_dir}): the pod must mount it (volumes), "
                "or use object storage"
            )
        client = self.pipes_client()
        try:
            invocation = client.run(context=context, **self.run_arguments(job))
        except Exception as exc:  # dagster-k8s raises with the pod's status and its containers' messages
            pod = f"pod {client.pod}" if client.pod else f"the pod (namespace {self.namespace or 'current'})"
            raise dg.Failure(f"{pod} failed: {exc}") from exc
        reports = _PipesReports(on_epoch)
        reports.take(invocation.get_custom_messages())
        return reports.trained(job, f"pod {client.pod}" if client.pod else "kubernetes pod")
