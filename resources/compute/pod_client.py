"""The dagster-k8s Pipes client of :class:`~.kubernetes.KubernetesCompute`, imported on first use (dagster-k8s
loads the Kubernetes client library, a second or so that no other compute should pay)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster_k8s import PipesK8sClient


class PodNamingClient(PipesK8sClient):
    """A :class:`PipesK8sClient` that notes the pod its ``run`` created (``namespace/name``), so that the
    asset's metadata and failures name it; dagster-k8s chooses the name and the namespace."""

    pod = ""

    @contextmanager
    def consume_pod_logs(
        self,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        client: Any,
        namespace: str,
        pod_name: str,
        enable_multi_container_logs: bool = False,
        ignore_containers: set | None = None,
    ) -> Iterator[None]:
        self.pod = f"{namespace}/{pod_name}"
        context.log.info(f"created pod {self.pod}")
        with super().consume_pod_logs(
            context=context,
            client=client,
            namespace=namespace,
            pod_name=pod_name,
            enable_multi_container_logs=enable_multi_container_logs,
            ignore_containers=ignore_containers,
        ):
            yield
