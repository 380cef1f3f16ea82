"""Jobs users launch by name (the asset graph can also be materialized directly).

They run their steps one after the other in the run's own process (``in_process_executor``): the
steps of each job depend on each other anyway, and a process per step would import torch and load
the code location again for every step (about 10 s each on 2 cores).
"""

import dagster as dg

#: runs with the same value of this tag wait for each other in the run queue (limit 1 per value in the
#: default dagster.yaml): one training and one validation at a time, whoever launched them
QUEUE_TAG = "calotwin/queue"
TRAINING_QUEUE = {QUEUE_TAG: "training"}
VALIDATION_QUEUE = {QUEUE_TAG: "validation"}

register_runs_job = dg.define_asset_job(
    "register_runs",
    executor_def=dg.in_process_executor,
    selection=["simulation_runs"],
    description="Register Monte Carlo runs or external files.",
)
ingest_runs_job = dg.define_asset_job(
    "ingest_runs",
    executor_def=dg.in_process_executor,
    selection=dg.AssetSelection.assets("raw_showers", "preprocessed_showers"),
    description="Simulate or import the raw showers of registered runs (one partition per run), with their "
    "checks, and preprocess them.",
)


def _training_job(name: str, asset: str, what: str):
    """A job that rebuilds the training set, then trains, logs and registers ``what`` (the asset ``asset``)."""
    return dg.define_asset_job(
        name,
        executor_def=dg.in_process_executor,
        selection=dg.AssetSelection.assets("training_set", asset),
        tags=TRAINING_QUEUE,
        description=f"Rebuild the training set from the preprocessed runs and train, log and register {what}.",
    )


train_job = _training_job("train_gan", "gan_model", "a 3DGAN")
train_flow_job = _training_job("train_flow", "flow_model", "a flow-matching generator")
train_tuned_job = _training_job(
    "train_tuned",
    "tuned_model",
    "a generator with an hpo_study's best parameters (tuned_model: the latest study, or the one whose run its config "
    "names)",
)
#: the training job of each generator family
TRAINING_JOBS = {"3dgan": train_job, "flow": train_flow_job}
#: every job that trains (a busy one holds the loop's retraining; the loop validates what each registers)
ALL_TRAINING_JOBS = (*TRAINING_JOBS.values(), train_tuned_job)
validate_job = dg.define_asset_job(
    "validate_and_promote",
    executor_def=dg.in_process_executor,
    selection=dg.AssetSelection.assets("mc_reference", "generated_showers", "validation_report", "champion_model"),
    tags=VALIDATION_QUEUE,
    description="Validate the challenger against the MC reference (report, blocking checks) and promote it to "
    "champion if it passes and beats the current champion.",
)
validate_model_job = dg.define_asset_job(
    "validate_model",
    executor_def=dg.in_process_executor,
    selection=dg.AssetSelection.assets("mc_reference", "generated_showers", "validation_report"),
    tags=VALIDATION_QUEUE,
    description="Validate one registered version against the MC reference (report and blocking checks), without "
    "promoting it: the loop validates each retrained model with it, and the nightly schedule the champion.",
)
promote_job = dg.define_asset_job(
    "promote_champion",
    executor_def=dg.in_process_executor,
    selection=dg.AssetSelection.assets("champion_model"),
    tags=VALIDATION_QUEUE,
    description="Decide the promotion of a validated version (the latest validation, or the one whose run "
    "champion_model's config names), recorded with its reason even when its checks failed.",
)
