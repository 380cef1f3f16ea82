"""The tracking / registry resource: dagster-mlflow's ``mlflow_tracking``, with embedded defaults.

``calotwin_mlflow`` is dagster-mlflow's legacy (function-style) resource with two additions: an
empty ``mlflow_tracking_uri`` means ``$CALOTWIN_MLFLOW_URI`` or the sqlite store under the data
home, and the experiment is created with an explicit artifact location before the resource starts
its run (otherwise MLflow would put artifacts in ``./mlruns``). Assets use it with
``required_resource_keys={"mlflow"}`` and end the MLflow run themselves.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import mlflow
from dagster import BetaWarning, ConfigurableResource, Field, Noneable, StringSource, resource
from dagster_mlflow.resources import CONFIG_SCHEMA, MlFlow
from pydantic import Field as PydanticField

from dt_assets.model.registry import DEFAULT_EXPERIMENT, default_tracking_uri, ensure_experiment

TRACKING_CONFIG = {
    **CONFIG_SCHEMA,
    "experiment_name": Field(StringSource, default_value=DEFAULT_EXPERIMENT, description="MLflow experiment name."),
    "artifact_location": Field(
        Noneable(StringSource),
        default_value=None,
        is_required=False,
        description="Artifact location of a new experiment; empty means $CALOTWIN_HOME/mlflow/artifacts for sqlite.",
    ),
}


@resource(config_schema=TRACKING_CONFIG, description="MLflow tracking and model registry (dagster-mlflow).")
def calotwin_mlflow(context) -> MlFlow:
    config = dict(context.resource_config)
    config["mlflow_tracking_uri"] = config.get("mlflow_tracking_uri") or default_tracking_uri()
    ensure_experiment(config["experiment_name"], config["mlflow_tracking_uri"], config.pop("artifact_location", None))
    shim = SimpleNamespace(
        log=context.log, dagster_run=context.dagster_run, run_id=context.run_id, resource_config=config
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)  # dagster-mlflow marks its class beta
        return MlFlow(shim)


def tracking_resource(experiment_name: str = DEFAULT_EXPERIMENT):
    """The configured resource the Definitions use (tracking URI from the environment at run time)."""
    return calotwin_mlflow.configured({"experiment_name": experiment_name})


class ModelRegistry(ConfigurableResource):
    """The MLflow tracking server and model registry the validation and promotion assets use.

    It starts no MLflow run of its own (unlike ``mlflow``): validation results are logged to the
    training run of the model version they judge.
    """

    tracking_uri: str = PydanticField(
        default="", description="MLflow tracking URI; empty: $CALOTWIN_MLFLOW_URI or the sqlite store in the data home."
    )

    def activate(self) -> str:
        """Point MLflow at this registry; returns the URI."""
        uri = self.tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(uri)
        return uri
