"""The MLflow model registry for generators: log, register, tag, alias and load back without pickle.

A generator is logged with ``mlflow.pytorch.log_model`` (the MLflow model, for MLflow's own tools)
and carries CaloTwin's generator file as an extra file;
:func:`~dt_assets.model.generation.download_generator` reads only that file, with
``torch.load(weights_only=True)``. The embedded default is a sqlite tracking store under
the data home (MLflow 3 refuses a plain file store); any tracking server works by URI.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion

from ..home import calotwin_home
from .generation import GENERATOR_FILE, ShowerGenerator, save_generator

#: the registered model both generator families register their versions in (before the flow family, CaloTwin
#: registered 3DGANs as "calotwin-3dgan": :func:`rename_registered_model` carries such a store over)
DEFAULT_MODEL_NAME = "calotwin-generator"
LEGACY_MODEL_NAME = "calotwin-3dgan"
DEFAULT_EXPERIMENT = "calotwin"
TRACKING_URI_ENV = "CALOTWIN_MLFLOW_URI"
#: What a logged generator needs to run (MLflow would otherwise spend ~10 s inferring it).
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy"]


def default_tracking_uri() -> str:
    """``$CALOTWIN_MLFLOW_URI``, else the sqlite store ``$CALOTWIN_HOME/mlflow/mlflow.db``."""
    uri = os.environ.get(TRACKING_URI_ENV)
    if uri:
        return uri
    path = calotwin_home() / "mlflow" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def default_artifact_location() -> str:
    return str(calotwin_home() / "mlflow" / "artifacts")


def ensure_experiment(name: str, tracking_uri: str, artifact_location: str | None = None) -> str:
    """Create the experiment if it does not exist; return its id.

    With the embedded sqlite store its artifacts go to ``$CALOTWIN_HOME/mlflow/artifacts`` (MLflow would
    otherwise use ``./mlruns``). With a tracking server (``http://...``) the location is left to the server:
    ``mlflow-artifacts:/<id>`` when it serves artifacts (``deploy/mlflow.sh``: they land in its
    ``--artifacts-destination``, e.g. ``s3://bucket/mlflow``, and clients need no object-store access).
    """
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_location is None and tracking_uri.startswith("sqlite:"):
        artifact_location = default_artifact_location()
    return client.create_experiment(name, artifact_location=artifact_location)


def log_generator(
    generator: ShowerGenerator,
    registered_model_name: str = DEFAULT_MODEL_NAME,
    tags: Mapping[str, str] | None = None,
) -> ModelVersion:
    """Log ``generator`` to the active MLflow run, register a new version and tag it (``family`` always);
    return the version.

    The MLflow flavour exports the model with an input example (the latent ``[E_p/100, theta, noise]``)
    on the CPU, so ``generator`` is moved to the CPU and put in eval mode. It is saved in MLflow's "pt2" format
    (``torch.export``: a graph that loads with torch alone, without CaloTwin's code). MLflow's check that reloads the
    saved graph and runs the example is skipped (``validate_serving_input=False``): it took 34 s of the 93 that
    logging a 3DGAN and a flow version took on one core; the tests load the graph and compare its showers with the
    generator's instead (``test_model_registry.py``).
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_generator needs an active MLflow run (mlflow.start_run())")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / GENERATOR_FILE
        save_generator(generator.cpu().eval(), str(path))
        info = mlflow.pytorch.log_model(
            generator,
            name="generator",
            input_example=np.concatenate([[[1.0, 1.5]], np.zeros((1, generator.noise_size))], axis=1, dtype=np.float32),
            pip_requirements=PIP_REQUIREMENTS,
            extra_files=[str(path)],
            registered_model_name=registered_model_name,
            validate_serving_input=False,
        )
    client = MlflowClient()
    version = client.get_model_version(registered_model_name, str(info.registered_model_version))
    tag_version(version, {"family": generator.family, **(tags or {})})
    return client.get_model_version(registered_model_name, version.version)


def run_params(version: ModelVersion) -> dict[str, str]:
    """The parameters the training run of ``version`` logged (as MLflow keeps them, strings; {} without a run)."""
    if not version.run_id:
        return {}
    return dict(MlflowClient().get_run(version.run_id).data.params)


def rename_registered_model(old: str = LEGACY_MODEL_NAME, new: str = DEFAULT_MODEL_NAME) -> int:
    """Rename a registered model, its versions, aliases and tags with it; returns its number of versions.

    How a tracking store from before the flow family carries over: versions registered as
    ``calotwin-3dgan`` become versions of ``calotwin-generator`` with the same numbers and aliases.
    Raises LookupError when ``old`` does not exist and ValueError when ``new`` already does.
    """
    client = MlflowClient()
    try:
        client.get_registered_model(old)
    except mlflow.exceptions.MlflowException:
        raise LookupError(f"no registered model named {old!r}") from None
    try:
        client.get_registered_model(new)
    except mlflow.exceptions.MlflowException:
        pass
    else:
        raise ValueError(f"a registered model named {new!r} exists already; rename or delete it first")
    client.rename_registered_model(old, new)
    return len(client.search_model_versions(f"name='{new}'"))


def set_alias(alias: str, version: str | int, registered_model_name: str = DEFAULT_MODEL_NAME) -> None:
    MlflowClient().set_registered_model_alias(registered_model_name, alias, str(version))


def resolve_version(model_uri: str) -> ModelVersion:
    """The registered version a ``models:/name@alias`` or ``models:/name/N`` URI points to."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri!r} is not a registry URI (models:/name@alias or models:/name/N)")
    path = model_uri.removeprefix("models:/")
    client = MlflowClient()
    try:
        if "@" in path:
            name, alias = path.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = path.rpartition("/")
        return client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        raise LookupError(f"{model_uri}: no such registered model version ({exc.message})") from None


def alias_version(alias: str, registered_model_name: str = DEFAULT_MODEL_NAME) -> ModelVersion | None:
    """The version holding ``alias``, or None when no version holds it (or the model does not exist)."""
    try:
        return resolve_version(f"models:/{registered_model_name}@{alias}")
    except LookupError:
        return None


def version_uri(version: ModelVersion) -> str:
    """``models:/name/N``: the registry URI of exactly this version."""
    return f"models:/{version.name}/{version.version}"


def tag_version(version: ModelVersion, tags: Mapping[str, object]) -> None:
    """Set each tag (its value as text) on a registered version."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, str(value))


def log_to_run(run_id: str, metrics: Mapping[str, float], files: list[str], artifact_path: str) -> None:
    """Log finite ``metrics`` and ``files`` to an existing (finished) run, e.g. a model's training run."""
    client = MlflowClient()
    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])
    for path in files:
        client.log_artifact(run_id, path, artifact_path)
