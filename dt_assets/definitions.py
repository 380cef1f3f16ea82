"""The one Dagster ``Definitions`` object of CaloTwin (loaded by workspace.yaml and `dagster dev`)."""

import dagster as dg

from resources import ModelRegistry, compute_from_env, storage_from_env, tracking_resource

from .defs.data import raw_showers, simulation_runs
from .defs.export import exported_generator
from .defs.hpo import hpo_study
from .defs.jobs import (
    ingest_runs_job,
    promote_job,
    register_runs_job,
    train_flow_job,
    train_job,
    train_tuned_job,
    validate_job,
    validate_model_job,
)
from .defs.landing import land_files_job, quarantined_files
from .defs.loop import loop_schedules, loop_sensors
from .defs.model import flow_model, gan_model, tuned_model
from .defs.preprocess import preprocessed_showers, training_set
from .defs.validation import (
    champion_model,
    generated_showers,
    mc_reference,
    speed_benchmark,
    validation_checks,
    validation_report,
)

defs = dg.Definitions(
    assets=[
        simulation_runs,
        raw_showers,
        preprocessed_showers,
        training_set,
        hpo_study,
        gan_model,
        flow_model,
        tuned_model,
        mc_reference,
        generated_showers,
        validation_report,
        champion_model,
        speed_benchmark,
        exported_generator,
        quarantined_files,
    ],
    asset_checks=validation_checks,
    jobs=[
        register_runs_job,
        land_files_job,
        ingest_runs_job,
        train_job,
        train_flow_job,
        train_tuned_job,
        validate_job,
        validate_model_job,
        promote_job,
    ],
    sensors=loop_sensors,
    schedules=loop_schedules,
    resources={
        "storage": storage_from_env(),
        "compute": compute_from_env(),
        "mlflow": tracking_resource(),
        "registry": ModelRegistry(),
    },
)
