"""Jobs users launch by name (the asset graph can also be materialized directly)."""

import dagster as dg

register_runs_job = dg.define_asset_job(
    "register_runs", selection=["simulation_runs"], description="Register Monte Carlo runs or external files."
)
ingest_runs_job = dg.define_asset_job(
    "ingest_runs",
    selection=dg.AssetSelection.assets("raw_showers", "preprocessed_showers"),
    description="Simulate or import the raw showers of registered runs (one partition per run), with their "
    "checks, and preprocess them.",
)
train_job = dg.define_asset_job(
    "train_gan",
    selection=dg.AssetSelection.assets("training_set", "gan_model"),
    description="Rebuild the training set from the preprocessed runs and train, log and register a 3DGAN.",
)
validate_job = dg.define_asset_job(
    "validate_and_promote",
    selection=dg.AssetSelection.assets("mc_reference", "generated_showers", "validation_report", "champion_model"),
    description="Validate the challenger against the MC reference (report, blocking checks) and promote it to "
    "champion if it passes and beats the current champion.",
)
