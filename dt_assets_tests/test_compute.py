"""The compute resource: gan_model trains in-process, under 2-process torchrun DDP and as a job on a real
Slurm, chosen by configuration alone, with the same metadata; external failures name their reason."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import dagster as dg
import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from conftest import SMALL
from dt_assets import generate, load_generator
from dt_assets.defs.model import gan_model
from dt_assets.defs.pipeline import QUIET, materialize_training_set
from dt_assets.model.job import EPOCH_MESSAGE, JOB_ENV, RESULT_MESSAGE, TrainingJob
from dt_assets.progress import EVERY_ENV
from resources import KubernetesCompute, LocalCompute, LocalStorage, SlurmCompute, TorchrunCompute, tracking_resource
from resources.compute import compute_from_config, compute_from_env
from resources.compute.launched import _Process
from resources.compute.slurm import _SlurmJob

TRAIN = {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def data_home(tmp_path_factory: pytest.TempPathFactory):
    """A data home with one small preprocessed run in the training set, and an instance. Progress lines
    come at every step ($CALOTWIN_PROGRESS_EVERY_S=0), so a training of two steps per epoch logs one."""
    home = tmp_path_factory.mktemp("compute") / "calotwin"
    with pytest.MonkeyPatch.context() as mp, dg.DagsterInstance.ephemeral() as instance:
        mp.setenv("CALOTWIN_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        mp.delenv("CALOTWIN_STORAGE_URL", raising=False)
        mp.delenv("CALOTWIN_COMPUTE_CONFIG", raising=False)
        mp.setenv(EVERY_ENV, "0")
        sims = [{"n_events": 400, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": SMALL, "seed": 4}]
        materialize_training_set(instance, {"storage": LocalStorage()}, sims)
        yield home, instance


def train_with(compute, data_home, seed: int, **overrides) -> dg.ExecuteInProcessResult:
    home, instance = data_home
    config = {**TRAIN, "seed": seed, **overrides}
    return dg.materialize(
        [gan_model],
        instance=instance,
        resources={"storage": LocalStorage(root=str(home)), "compute": compute, "mlflow": tracking_resource()},
        run_config={"ops": {"gan_model": {"config": config}}, **QUIET},
        raise_on_error=False,
    )


def metadata_of(result: dg.ExecuteInProcessResult) -> dict:
    assert result.success, failure_message(result)
    return {k: v.value for k, v in result.asset_materializations_for_node("gan_model")[0].metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return "\n".join(str(e.step_failure_data.error) for e in failures)


def assert_trained_and_reported(result: dg.ExecuteInProcessResult, data_home, metadata: dict) -> None:
    """Two epochs trained; per-epoch metrics in MLflow; step and epoch progress lines in the Dagster log."""
    home, instance = data_home
    assert metadata["epochs_trained"] == 2
    client = MlflowClient(f"sqlite:///{home}/mlflow/mlflow.db")
    history = client.get_metric_history(metadata["mlflow_run_id"], "g")
    assert [m.step for m in history] == [0, 1]
    assert client.get_metric_history(metadata["mlflow_run_id"], "val_esum_over_ep_gan")
    messages = [r.user_message for r in instance.all_logs(result.run_id)]
    for epoch in (1, 2):
        (step,) = [
            i for i, m in enumerate(messages) if re.fullmatch(rf"epoch {epoch}/2: step 1/2, .* samples/s, .*", m)
        ]
        (end,) = [i for i, m in enumerate(messages) if m.startswith(f"epoch {epoch}/2: d_real")]
        assert step < end, messages
    mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow/mlflow.db")
    showers = generate(load_generator(metadata["model_uri"]), 4, 50.0, 90.0, seed=1)
    assert showers.energy_deposit.shape[0] == 4


def slurm_compute(cluster, **fields) -> SlurmCompute:
    """A job on the test cluster's partition, its state polled every 0.5 s."""
    return SlurmCompute(partition=cluster.partition, time="10:00", poll_interval_seconds=0.5, **fields)


@pytest.fixture(scope="module")
def local_training(data_home) -> dg.ExecuteInProcessResult:
    return train_with(LocalCompute(), data_home, seed=1)


@pytest.fixture(scope="module")
def local_metadata(local_training) -> dict:
    return metadata_of(local_training)


def test_in_process_training_reports_its_compute(local_training, local_metadata, data_home):
    assert local_metadata["compute"] == "local (cpu)" and local_metadata["world_size"] == 1
    assert local_metadata["model_version"] == 1
    assert_trained_and_reported(local_training, data_home, local_metadata)


@pytest.mark.slow
def test_two_process_torchrun_ddp_gives_the_same_metadata_through_pipes(local_metadata, data_home):
    result = train_with(TorchrunCompute(nproc_per_node=2), data_home, seed=2)
    metadata = metadata_of(result)
    assert set(metadata) == set(local_metadata)
    assert metadata["compute"] == "torchrun (2 processes)" and metadata["world_size"] == 2
    assert metadata["device"] == "cpu"
    assert_trained_and_reported(result, data_home, metadata)
    (job_folder,) = sorted((data_home[0] / "jobs").glob("*-torchrun"))
    train_log = (job_folder / "train.log").read_text()
    assert train_log.count("epoch 2/2: d_real") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_a_failing_torchrun_job_fails_the_asset_with_its_reason(data_home):
    result = train_with(TorchrunCompute(nproc_per_node=2), data_home, seed=3, batch_size=1000)
    assert not result.success
    message = failure_message(result)
    assert "torchrun (2 processes) failed: exit code 1: ValueError: " in message
    assert "fewer than one batch of 1000" in message  # the external traceback's tail


@pytest.mark.slow
def test_gan_model_trains_as_a_job_on_a_real_slurm(slurm, local_metadata, data_home):
    result = train_with(slurm_compute(slurm), data_home, seed=5)
    metadata = metadata_of(result)
    assert set(metadata) == set(local_metadata)
    assert metadata["compute"].startswith("Slurm job ") and metadata["world_size"] == 1
    assert_trained_and_reported(result, data_home, metadata)
    job_id = metadata["compute"].split()[2]
    assert slurm.job_state(job_id)["JobState"] == "COMPLETED"


@pytest.mark.slow
def test_a_failed_slurm_job_fails_the_asset_with_its_state(slurm, data_home):
    result = train_with(slurm_compute(slurm), data_home, seed=6, batch_size=1000)
    assert not result.success
    message = failure_message(result)
    assert "failed: FAILED (ExitCode=1:0" in message
    assert "fewer than one batch of 1000" in message


@pytest.mark.slow
def test_a_slurm_job_cancelled_with_scancel_fails_the_asset(slurm, data_home):
    cancelled: list[str] = []

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["squeue", "-h", "-t", "RUNNING", "-n", "calotwin-cancel", "-o", "%i"], capture_output=True, text=True
            )
            if out.stdout.strip():
                time.sleep(2)  # let it start training
                job_id = out.stdout.split()[0]
                subprocess.run(["scancel", job_id], check=True)
                cancelled.append(job_id)
                return
            time.sleep(0.3)

    canceller = threading.Thread(target=cancel_when_running, daemon=True)
    canceller.start()
    compute = slurm_compute(slurm, job_name="calotwin-cancel")
    result = train_with(compute, data_home, seed=7, epochs=500, max_steps_per_epoch=50)
    canceller.join(timeout=5)
    assert cancelled, "the job never ran"
    assert not result.success
    assert f"Slurm job {cancelled[0]} (partition {slurm.partition}) failed: CANCELLED" in failure_message(result)


def test_the_sbatch_script_carries_the_config(tmp_path):
    compute = SlurmCompute(
        partition="gpu",
        nodes=2,
        gpus_per_node=4,
        cpus_per_task=32,
        time="1-00:00:00",
        account="calo",
        extra_directives=["#SBATCH --constraint=a100", "--qos=high"],
        setup=["module load cuda/12", "source /opt/calotwin/bin/activate"],
        python="/opt/calotwin/bin/python",
    )
    script = compute.script(tmp_path, {"DAGSTER_PIPES_CONTEXT": "abc=", JOB_ENV: "/shared/job 1.json"})
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")]
    assert directives == [
        "--job-name=calotwin-train",
        f"--output={tmp_path}/slurm-%j.log",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--time=1-00:00:00",
        "--partition=gpu",
        "--gpus-per-node=4",
        "--cpus-per-task=32",
        "--account=calo",
        "--constraint=a100",
        "--qos=high",
    ]
    assert lines.index("module load cuda/12") < lines.index(f"export {JOB_ENV}='/shared/job 1.json'")
    assert "export DAGSTER_PIPES_CONTEXT=abc=" in lines
    assert lines[-1] == (
        "srun --kill-on-bad-exit=1 /opt/calotwin/bin/python -m torch.distributed.run "
        '--nnodes="$SLURM_JOB_NUM_NODES" --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d '
        '--rdzv_endpoint="$head:29500" --nproc_per_node=4 -m dt_assets.pipes_training'
    )
    single = SlurmCompute().script(tmp_path, {})
    assert "--standalone --nproc_per_node=1 -m dt_assets.pipes_training" in single
    assert "--partition" not in single and "--gpus-per-node" not in single


class FakeCluster:
    """The Kubernetes API that ``PipesK8sClient.run`` talks to (``DagsterKubernetesClient`` and its
    ``core_api``): it keeps the pod it is given, serves ``log`` as the pod's log (Pipes messages included)
    and, when ``failure`` is set, fails the wait for the pod's end with it, as dagster-k8s does."""

    def __init__(self, log: list[str], failure: str = "") -> None:
        self.core_api = self
        self.log, self.failure = log, failure
        self.created: list[tuple[str, dict]] = []
        self.deleted: list[tuple[str, str]] = []
        self.waits: list[str] = []

    def create_namespaced_pod(self, namespace, body) -> None:
        self.created.append((namespace, body.to_dict()))

    def read_namespaced_pod_log(self, name, namespace, **kwargs) -> list[bytes]:
        return [f"2024-03-22T02:17:29.{i:06d}Z {line}\n".encode() for i, line in enumerate(self.log)]

    def wait_for_pod(self, pod_name, namespace, wait_for_state, **kwargs) -> None:
        self.waits.append(wait_for_state.name)
        if self.failure and wait_for_state.name == "Terminated":
            from dagster_k8s.client import DagsterK8sError

            raise DagsterK8sError(self.failure.format(pod=pod_name))

    def delete_namespaced_pod(self, name, namespace) -> None:
        self.deleted.append((namespace, name))


def pipes_line(method: str, params: dict) -> str:
    return json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})


def pod_log(world_size: int) -> list[str]:
    """What ``dt_assets.pipes_training`` writes in a pod: Pipes opened, two epochs' reports, the result."""
    epochs = [
        {"epoch": e, "epochs": 2, "seconds": 1.0, "samples_per_second": 8.0, "eta_seconds": 1.0, "metrics": {"g": e}}
        for e in (0, 1)
    ]
    result = {"kind": RESULT_MESSAGE, "device": "cuda", "world_size": world_size, "resumed_from_epoch": 0}
    return [
        pipes_line("opened", {}),
        "calotwin: a line that is not a Pipes message",
        *(pipes_line("report_custom_message", {"payload": {"kind": EPOCH_MESSAGE, "report": e}}) for e in epochs),
        pipes_line("report_custom_message", {"payload": result}),
        pipes_line("closed", {}),
    ]


@pytest.fixture
def run_in_fake_cluster(tmp_path, monkeypatch):
    """Runs ``compute.run_training`` in an asset against a :class:`FakeCluster`, through the real
    ``PipesK8sClient.run`` (its kubeconfig: a file naming namespace 'from-kubeconfig'); returns the run's
    result, what ``on_epoch`` got, the :class:`~resources.compute.Trained` and the run's log messages. The
    checkpoint is not read: the result is a stand-in string."""
    from dagster_k8s.client import DagsterKubernetesClient

    kubeconfig = tmp_path / "kubeconfig"
    context = {"cluster": "fake", "user": "fake", "namespace": "from-kubeconfig"}
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "fake", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": context}],
                "current-context": "fake",
            }
        )
    )
    monkeypatch.setattr("resources.compute.pipes.read_result", lambda job, device, resumed: f"model on {device}")

    def run(compute: KubernetesCompute, cluster: FakeCluster, job: TrainingJob):
        monkeypatch.setattr(DagsterKubernetesClient, "production_client", staticmethod(lambda *a, **k: cluster))
        compute = compute.model_copy(update={"kubeconfig_file": str(kubeconfig)})
        epochs: list = []
        trained: list = []

        @dg.asset
        def trained_in_a_pod(context) -> dg.MaterializeResult:
            trained.append(compute.run_training(context, job, epochs.append))
            return dg.MaterializeResult()

        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize([trained_in_a_pod], instance=instance, raise_on_error=False)
            logs = [r.user_message for r in instance.all_logs(result.run_id)]
        return result, epochs, trained, logs

    return run


def test_the_kubernetes_pod_is_built_from_config_and_run_by_pipes_k8s_client(run_in_fake_cluster):
    compute = KubernetesCompute(
        image="registry.example/calotwin:0.1",
        namespace="calo",
        gpus=2,
        memory="32Gi",
        env={"AWS_ENDPOINT_URL": "http://minio:9000"},
        env_from_secrets=["s3-credentials"],
        volumes=[{"name": "scratch", "emptyDir": {}}],
        volume_mounts=[{"name": "scratch", "mountPath": "/scratch"}],
        node_selector={"kubernetes.io/role": "agent", "type": "virtual-kubelet"},
        tolerations=[{"key": "virtual-node.interlink/no-schedule", "operator": "Exists"}],
        service_account="calotwin",
    )
    job = TrainingJob(data=["s3://b/p.zarr"], checkpoint_dir="s3://b/ckpt", geometry=SMALL, config={"epochs": 3})
    cluster = FakeCluster(pod_log(world_size=2))
    result, epochs, trained, logs = run_in_fake_cluster(compute, cluster, job)
    assert result.success, failure_message(result)

    ((namespace, body),) = cluster.created
    assert namespace == "calo"
    pod_name = body["metadata"]["name"]
    assert pod_name.startswith("dagster-") and cluster.deleted == [("calo", pod_name)]
    assert cluster.waits == ["Ready", "Terminated"]
    assert body["metadata"]["labels"]["calotwin/role"] == "training"
    assert body["metadata"]["labels"]["app.kubernetes.io/part-of"] == "calotwin"
    spec = body["spec"]
    assert spec["restart_policy"] == "Never" and spec["service_account_name"] == "calotwin"
    assert spec["node_selector"] == {"kubernetes.io/role": "agent", "type": "virtual-kubelet"}
    assert spec["tolerations"][0]["key"] == "virtual-node.interlink/no-schedule"
    assert spec["volumes"][0]["name"] == "scratch" and spec["volumes"][0]["empty_dir"] is not None
    (container,) = spec["containers"]
    assert container["name"] == "train" and container["image"] == "registry.example/calotwin:0.1"
    assert container["command"] == [
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dt_assets.pipes_training",
    ]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2", "memory": "32Gi"}
    assert container["resources"]["requests"] == {"nvidia.com/gpu": "2", "memory": "32Gi"}
    assert container["volume_mounts"][0]["mount_path"] == "/scratch"
    assert container["env_from"][0]["secret_ref"]["name"] == "s3-credentials"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DAGSTER_PIPES_CONTEXT"] and env["DAGSTER_PIPES_MESSAGES"]
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert TrainingJob.from_json(env[JOB_ENV]) == job

    # the Pipes messages of the pod's log: each epoch's report to on_epoch, then the result
    assert [(e.epoch, e.metrics) for e in epochs] == [(0, {"g": 0.0}), (1, {"g": 1.0})]
    (done,) = trained
    assert done.result == "model on cuda" and done.world_size == 2 and done.compute == f"pod calo/{pod_name}"
    assert f"created pod calo/{pod_name}" in logs


def test_a_failed_pod_fails_the_asset_naming_the_pod_and_its_error(run_in_fake_cluster):
    """No namespace configured: dagster-k8s takes the kubeconfig's, and the failure names the pod in it."""
    job = TrainingJob(data=["s3://b/p.zarr"], checkpoint_dir="s3://b/ckpt", geometry=SMALL, config={"epochs": 3})
    failure = "Pod {pod} terminated but some containers exited with errors:\nValueError: no such file s3://b/p.zarr"
    cluster = FakeCluster(pod_log(world_size=1)[:1], failure=failure)
    result, _, trained, _ = run_in_fake_cluster(KubernetesCompute(image="calotwin"), cluster, job)
    assert not result.success and not trained
    ((namespace, body),) = cluster.created
    pod_name = body["metadata"]["name"]
    assert namespace == "from-kubeconfig" and cluster.deleted == [("from-kubeconfig", pod_name)]
    message = failure_message(result)
    assert f"pod from-kubeconfig/{pod_name} failed: Pod {pod_name} terminated" in message
    assert "ValueError: no such file s3://b/p.zarr" in message


def test_the_kubernetes_compute_uses_only_the_public_dagster_k8s_api():
    """What resources/compute imports from dagster-k8s is a public name of the package itself (the Pipes
    client), and no private attribute (``x._name``) is touched: the pod is run by ``PipesK8sClient.run``."""
    import ast
    import types
    from pathlib import Path

    import dagster_k8s

    import resources.compute

    imported: set[str] = set()
    users = []  # the modules that import dagster-k8s
    for path in sorted(Path(resources.compute.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("dagster_k8s") for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster_k8s"):
                assert node.module == "dagster_k8s", f"{path.name} imports from {node.module}"
                imported.update(alias.name for alias in node.names)
                users.append(path)
    assert imported == {"PipesK8sClient"}
    for path in [*users, Path(resources.compute.__file__).parent / "kubernetes.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                assert not private, f"{path.name}:{node.lineno} uses the private attribute {node.attr}"
    for name in imported:
        assert not name.startswith("_") and not isinstance(getattr(dagster_k8s, name), types.ModuleType)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "pbs"}, "kind: unknown compute 'pbs'"),
        ({"kind": "slurm", "nodes": 0}, "nodes: Input should be greater than or equal to 1"),
        ({"kind": "slurm", "time": "two hours"}, "time: Value error, not a Slurm time limit: 'two hours'"),
        ({"kind": "slurm", "extra_directives": ["constraint=a100"]}, "not an sbatch option: 'constraint=a100'"),
        ({"kind": "slurm", "gpus": 4}, "unknown field(s) for kind 'slurm': ['gpus']"),
        ({"kind": "torchrun", "nproc_per_node": -1}, "nproc_per_node: Input should be greater than or equal to 1"),
        ({"kind": "kubernetes"}, "missing field(s) for kind 'kubernetes': ['image']"),
        ({"kind": "kubernetes", "image": "x", "gpus": -2}, "gpus: Input should be greater than or equal to 0"),
        ({"kind": "kubernetes", "image": "x", "env": {"DAGSTER_PIPES_CONTEXT": "x"}}, "set by the compute itself"),
    ],
)
def test_bad_compute_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=r"compute\.yaml") as excinfo:
        compute_from_config(settings, "compute.yaml")
    assert message in str(excinfo.value)


def test_the_compute_comes_from_compute_yaml(home, monkeypatch):
    assert isinstance(compute_from_env(), LocalCompute)
    (home).mkdir(parents=True, exist_ok=True)
    (home / "compute.yaml").write_text(yaml.safe_dump({"kind": "slurm", "partition": "gpu", "gpus_per_node": 4}))
    compute = compute_from_env()
    assert isinstance(compute, SlurmCompute) and compute.partition == "gpu" and compute.ranks_per_node() == 4
    other = home / "other.yaml"
    other.write_text("kind: torchrun\nnproc_per_node: [\n")
    monkeypatch.setenv("CALOTWIN_COMPUTE_CONFIG", str(other))
    with pytest.raises(ValueError, match=r"other\.yaml: not valid YAML"):
        compute_from_env()
    monkeypatch.setenv("CALOTWIN_COMPUTE_CONFIG", str(home / "missing.yaml"))
    with pytest.raises(ValueError, match=r"CALOTWIN_COMPUTE_CONFIG=.*missing\.yaml: no such file"):
        compute_from_env()


def test_a_training_job_travels_as_json_and_bad_ones_are_named(tmp_path):
    job = TrainingJob(data=["a.zarr"], checkpoint_dir="ckpt", geometry=SMALL, config={"epochs": 2, "seed": 3})
    assert TrainingJob.from_json(job.to_json()) == job
    path = tmp_path / "job.json"
    path.write_text(job.to_json())
    assert TrainingJob.from_env({JOB_ENV: str(path)}) == job
    assert TrainingJob.from_env({JOB_ENV: job.to_json()}) == job
    with pytest.raises(ValueError, match="CALOTWIN_TRAINING_JOB is not set"):
        TrainingJob.from_env({})
    with pytest.raises(ValueError, match="not JSON"):
        TrainingJob.from_json("{nope")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['checkpoint_dir'\]"):
        TrainingJob.from_json(json.dumps({"data": ["a"], "geometry": SMALL, "config": {}}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nodes'\]"):
        TrainingJob.from_json(json.dumps({**json.loads(job.to_json()), "nodes": 2}))
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        TrainingJob(data=["a"], checkpoint_dir="c", geometry=SMALL, config={"epochs": 0})
    with pytest.raises(ValueError, match="unknown geometry"):
        TrainingJob(data=["a"], checkpoint_dir="c", geometry="atlas", config={})


@pytest.mark.parametrize("ignored", [False, True], ids=["signals-default", "signals-ignored"])
def test_cancelling_a_torchrun_job_stops_its_whole_process_group(tmp_path, ignored):
    """SIGTERM stops the job and its children, also from a process that ignores SIGINT and SIGTERM (started in
    the background, after Dagster mapped SIGTERM to the ignored SIGINT): an ignored signal is inherited."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if ignored:
        for s in saved:
            signal.signal(s, signal.SIG_IGN)
    try:
        _cancel_a_job_with_a_child(tmp_path)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _cancel_a_job_with_a_child(tmp_path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; echo started; wait"
    launched = _Process(["bash", "-c", script], {}, tmp_path, "a job")
    deadline = time.monotonic() + 10
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pids.read_text())
    assert launched.poll() is None
    launched.cancel()
    assert launched.poll() == "exit code -15"
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # the grandchild goes with its group
            os.kill(child, 0)
            time.sleep(0.05)


def test_a_job_slurm_cannot_report_on_is_given_up_after_repeated_queries(slurm, tmp_path):
    job = _SlurmJob("99999999", tmp_path, slurm_compute(slurm), dg.build_asset_context())
    job.MAX_QUERY_ERRORS = 3
    assert job.poll() is None and job.poll() is None  # a restarting slurmctld is given time
    with pytest.raises(dg.Failure, match="lost track of the job after 3 tries: scontrol show job 99999999 failed"):
        job.poll()
