"""The Kubernetes deployment files (deploy/Dockerfile, deploy/helm/), checked without Docker or a cluster:
they parse, agree with each other and with the code (module, compute.yaml, concurrency limits, CLI).
Nothing here proves they work on a live cluster."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from importlib.util import find_spec
from pathlib import Path

import yaml
from dagster._cli import create_dagster_cli

from dt_assets.home import CONCURRENCY_YAML
from resources import KubernetesCompute
from resources.compute import compute_from_config

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / "deploy" / "helm"
MODULE = "dt_assets.definitions"


def manifests(name: str) -> dict[str, dict]:
    """The documents of a manifest file by kind/name."""
    docs = [d for d in yaml.safe_load_all((HELM / name).read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def helm_values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def compute_yaml() -> str:
    return manifests("compute-configmap.yaml")["ConfigMap/calotwin-compute"]["data"]["compute.yaml"]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def code_server_params(argv: list[str]) -> dict:
    """``dagster code-server start`` options as Dagster's own CLI parses them (a bad flag raises)."""
    assert argv[:3] == ["dagster", "code-server", "start"], argv
    start = create_dagster_cli().get_command(None, "code-server").get_command(None, "start")
    return start.make_context("start", argv[3:]).params


def test_the_manifests_parse_and_live_in_one_namespace():
    for name in ("compute-configmap.yaml", "rbac.yaml"):
        for doc in manifests(name).values():
            assert doc["apiVersion"] and doc["metadata"]["namespace"] == "calotwin"
    assert helm_values()["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespace"] == "calotwin"


def test_the_helm_values_serve_the_code_location_and_launch_runs_on_kubernetes():
    values = helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    # the chart runs `dagster code-server start -h 0.0.0.0 -p <port> <codeServerArgs>`
    argv = ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", str(deployment["port"])]
    params = code_server_params(argv + deployment["codeServerArgs"])
    assert params["module_name"] == MODULE and find_spec(MODULE) is not None
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    postgresql = values["postgresql"]
    assert postgresql["enabled"] is False and postgresql["postgresqlScheme"] == "postgresql+psycopg2"

    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["CALOTWIN_STORAGE_URL"].startswith("s3://") and env["CALOTWIN_MLFLOW_URI"].startswith("http")
    # CALOTWIN_COMPUTE_CONFIG names the compute.yaml key of the ConfigMap the deployment mounts
    config = Path(env["CALOTWIN_COMPUTE_CONFIG"])
    (mount,) = [m for m in deployment["volumeMounts"] if Path(m["mountPath"]) == config.parent]
    (volume,) = [v for v in deployment["volumes"] if v["name"] == mount["name"]]
    configmap = manifests("compute-configmap.yaml")[f"ConfigMap/{volume['configMap']['name']}"]
    assert config.name in configmap["data"]
    # the training pods get the same S3 secret, and the service accounts rbac.yaml creates
    compute = yaml.safe_load(compute_yaml())
    assert set(compute["env_from_secrets"]) <= {s["name"] for s in deployment["envSecrets"]}
    rbac = manifests("rbac.yaml")
    assert f"ServiceAccount/{compute['service_account']}" in rbac
    assert f"ServiceAccount/{values['dagster-user-deployments']['serviceAccount']['name']}" in rbac


def test_the_helm_concurrency_is_calotwins_own():
    values = helm_values()
    concurrency = values["concurrency"]
    rendered = {  # what the chart's _concurrency.tpl writes into dagster.yaml
        "pools": {"default_limit": concurrency["pools"]["defaultLimit"]},
        "runs": {"tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"]},
    }
    assert concurrency["enabled"] is True
    assert rendered == yaml.safe_load(CONCURRENCY_YAML)["concurrency"]
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator" and "config" not in coordinator  # no second set of limits


def test_the_configmap_compute_yaml_is_a_one_gpu_kubernetes_compute():
    text = compute_yaml()
    compute = compute_from_config(yaml.safe_load(text), "compute-configmap.yaml")
    assert isinstance(compute, KubernetesCompute) and compute.gpus == 1 and compute.ranks() == 1
    assert compute.pod_spec()["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # the commented interLink variant is valid too once uncommented
    head, tail = text.split("# node_selector:")
    interlink = head + re.sub(r"(?m)^# ", "", "# node_selector:" + tail)
    variant = compute_from_config(yaml.safe_load(interlink), "interLink variant")
    assert "kubernetes.io/hostname" in variant.node_selector
    assert variant.tolerations[0]["key"] == "virtual-node.interlink/no-schedule"


def test_the_run_pods_may_manage_training_pods():
    rbac = manifests("rbac.yaml")
    (binding,) = [d for d in rbac.values() if d["kind"] == "RoleBinding"]
    role = rbac[f"Role/{binding['roleRef']['name']}"]
    verbs = {resource: set(rule["verbs"]) for rule in role["rules"] for resource in rule["resources"]}
    # what dagster-k8s's PipesK8sClient and DagsterKubernetesClient call
    assert {"create", "get", "list", "watch", "delete"} <= verbs["pods"]
    assert "get" in verbs["pods/log"]
    runs = helm_values()["dagster-user-deployments"]["serviceAccount"]["name"]
    assert {"kind": "ServiceAccount", "name": runs, "namespace": "calotwin"} in binding["subjects"]


def test_the_image_installs_torch_first_and_serves_the_code_location():
    steps = dockerfile()
    runs = [args for instruction, args in steps if instruction == "RUN"]
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in dependencies if re.match(r"torch\b", d))
    assert torch_pin == "torch==2.13.0"
    torch_step = next(i for i, args in enumerate(runs) if torch_pin in args.split())
    project_step = next(i for i, args in enumerate(runs) if re.search(r"pip install \.(\s|$)", args))
    assert torch_step < project_step
    assert not [args for instruction, args in steps if instruction == "ENTRYPOINT"]  # args replace the command
    (cmd,) = [json.loads(args) for instruction, args in steps if instruction == "CMD"]
    params = code_server_params(cmd)
    assert params["module_name"] == MODULE and params["host"] == "0.0.0.0"
    assert params["port"] == helm_values()["dagster-user-deployments"]["deployments"][0]["port"]
    assert find_spec("dt_assets.pipes_training") is not None  # the training pods' entry module


def test_the_image_copies_every_package_and_the_context_keeps_them():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = {s for instruction, args in dockerfile() if instruction == "COPY" for s in args.split()[:-1]}
    assert sources == packages | {"pyproject.toml", pyproject["project"]["readme"]}
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    for source in sources:
        kept = True
        for pattern in patterns:  # .dockerignore semantics: the last matching line decides
            if fnmatch.fnmatch(source, pattern.removeprefix("!")):
                kept = pattern.startswith("!")
        assert kept, f"{source} is excluded from the build context by .dockerignore"
