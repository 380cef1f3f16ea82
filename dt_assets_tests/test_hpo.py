"""Hyper-parameter optimisation: the search space, pruning, a study shared by two worker processes
(no trial lost or run twice, one MLflow child run per trial), and gan_model trained with its best parameters."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import dagster as dg
import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from pydantic import ValidationError

from conftest import SMALL
from dt_assets import load_generator
from dt_assets.defs.configs import GanModelConfig, HpoSearchSpaceConfig
from dt_assets.defs.hpo import default_study_storage, hpo_study
from dt_assets.defs.model import gan_model
from dt_assets.defs.pipeline import QUIET, materialize_training_set
from dt_assets.model.hpo import HpoJob, claim_trial, enqueue_budget, open_study, run_worker
from dt_assets.model.registry import default_tracking_uri
from dt_assets.model.search_space import SearchSpace, apply_parameters
from dt_assets.model.step import TrainConfig
from resources import LocalCompute, LocalStorage, tracking_resource

#: a study small enough for CI: 4 trials of 2 epochs x 2 steps, scored on one cell of 50 events
STUDY = {
    "geometry": SMALL,
    "n_trials": 4,
    "n_workers": 2,
    "epochs": 2,
    "max_steps_per_epoch": 2,
    "energies_gev": [50.0],
    "angles_deg": [90.0],
    "events_per_cell": 50,
    "bootstrap": 2,
    "classifier_epochs": 2,
    "search_space": {"batch_size": [8, 16], "latent_size": [16, 32]},
}


def test_the_search_space_refuses_bad_ranges_naming_the_field():
    for bad, named in (
        ({"lr_generator": [1e-3, 1e-5]}, "search_space.lr_generator: low 0.001 must be below high 1e-05"),
        ({"weight_angle": [0.0, 10.0]}, "search_space.weight_angle: a log-scale range must be positive"),
        ({"label_flip": [0.0, 0.6]}, "search_space.label_flip: must lie in [0, 0.5)"),
        ({"batch_size": [1, 16]}, "search_space.batch_size: choices must be integers >= 2"),
        ({"lr_discriminator": [1e-4]}, "search_space.lr_discriminator: expected [low, high]"),
    ):
        with pytest.raises(ValidationError, match=named.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            HpoSearchSpaceConfig(**bad)
    assert SearchSpace(batch_size=(), label_flip=()).tuned() == (
        "lr_generator",
        "lr_discriminator",
        "weight_real_fake",
        "weight_energy",
        "weight_angle",
        "weight_total",
        "latent_size",
    )


def test_parameters_go_into_the_training_config_by_gan_model_field_name():
    params = {"weight_angle": 12.5, "batch_size": 16, "latent_size": 40, "lr_generator": 1e-4}
    config = apply_parameters(TrainConfig(), params)
    assert config.loss_weights == (3.0, 0.1, 12.5, 0.1) and config.batch_size == 16 and config.latent_size == 40
    assert config.lr_generator == 1e-4 and config.lr_discriminator == 1e-3
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        apply_parameters(TrainConfig(), {"momentum": 0.9})
    with pytest.raises(ValueError, match="latent_size must be an integer >= 3"):
        TrainConfig(latent_size=2)
    assert "latent_size" not in TrainConfig().to_dict()  # training keys of untuned trainings are unchanged
    tuned = GanModelConfig().with_hyperparameters({"latent_size": 40, "weight_total": 0.5})
    assert tuned.train_config().latent_size == 40 and tuned.train_config().loss_weights[3] == 0.5


def test_a_trial_worse_than_the_median_is_pruned(tmp_path):
    """The study's pruner (median over earlier trials, per epoch), with a plain objective in place of training."""
    job = HpoJob(
        study_name="pruning",
        storage_url=f"sqlite:///{tmp_path / 'optuna.db'}",
        data=["unused.zarr"],
        geometry=SMALL,
        reference_url="unused.zarr",
        trials_url=str(tmp_path / "trials"),
        pruner_startup_trials=2,
    )
    study = open_study(job)
    assert enqueue_budget(study, 3) == 3 and enqueue_budget(study, 3) == 0
    for final in (1.0, 2.0):  # two good trials
        trial = claim_trial(study)
        for epoch in range(3):
            trial.report(final + 1.0 - epoch * 0.5, epoch)
            assert not trial.should_prune()
        study.tell(trial, final)
    trial = claim_trial(study)
    trial.report(50.0, 0)  # far above the median of the earlier trials at epoch 0
    assert trial.should_prune()
    study.tell(trial, state=TrialState.PRUNED)
    assert claim_trial(study) is None  # the budget is spent: no trial is created
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]


CLAIMER = """
import sys
from dt_assets.model.hpo import HpoJob, claim_trial, open_study
job = HpoJob.from_json(open(sys.argv[1]).read())
study = open_study(job, int(sys.argv[2]))
while (trial := claim_trial(study)) is not None:
    study.tell(trial, float(trial.number))
    print(trial.number, flush=True)
"""


def test_racing_workers_claim_every_trial_exactly_once(tmp_path):
    """Four processes claim 60 trials of one sqlite study as fast as they can: each trial goes to one of them."""
    job = HpoJob(
        study_name="race",
        storage_url=f"sqlite:///{tmp_path / 'optuna.db'}",
        data=["unused.zarr"],
        geometry=SMALL,
        reference_url="unused.zarr",
        trials_url=str(tmp_path / "trials"),
    )
    (tmp_path / "job.json").write_text(job.to_json())
    enqueue_budget(open_study(job), 60)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(tmp_path / "job.json"), str(i)], stdout=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    claimed = []
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0
        claimed += [int(line) for line in out.split()]
    assert sorted(claimed) == list(range(60))  # none lost, none twice
    study = optuna.load_study(study_name="race", storage=job.storage_url)
    assert len(study.get_trials()) == 60 and {t.state for t in study.get_trials()} == {TrialState.COMPLETE}


def test_two_workers_share_a_study_and_its_best_parameters_feed_gan_model(home, instance):
    resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
    sims = [{"n_events": 600, "energy_min_gev": 10.0, "energy_max_gev": 100.0, "geometry": SMALL, "seed": 4}]
    materialize_training_set(instance, resources, sims)
    started = time.monotonic()
    result = dg.materialize(
        [hpo_study],
        instance=instance,
        resources=resources,
        run_config={"ops": {"hpo_study": {"config": STUDY}}, **QUIET},
    )
    seconds = time.monotonic() - started
    metadata = result.asset_materializations_for_node("hpo_study")[0].metadata
    print(f"hpo_study: 4 trials, 2 workers, {seconds:.1f} s (study {metadata['seconds'].value} s)")

    # every trial 0..3 once, finished (none lost, none run twice), in the default sqlite under the data home
    assert default_study_storage() == f"sqlite:///{home}/hpo/optuna.db"
    study = optuna.load_study(study_name="calotwin-3dgan-hpo", storage=default_study_storage())
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert metadata["complete"].value + metadata["pruned"].value == 4 and metadata["failed"].value == 0
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}
    for t in trials:
        assert set(t.params) == {
            "lr_generator",
            "lr_discriminator",
            "weight_real_fake",
            "weight_energy",
            "weight_angle",
            "weight_total",
            "batch_size",
            "latent_size",
            "label_flip",
        }
        assert t.intermediate_values, t.number  # the score was reported after each epoch it ran
    best = study.best_trial
    assert metadata["best_trial"].value == best.number and metadata["best_value"].value == pytest.approx(best.value)
    assert metadata["best_params"].value == best.params
    for plot in ("optimization_history", "param_importances"):
        assert metadata[plot].value.startswith(f"![{plot.replace('_', ' ')}](data:image/png;base64,"), plot

    # one MLflow child run per trial under the study's run
    client = MlflowClient(default_tracking_uri())
    parent = metadata["mlflow_run_id"].value
    assert client.get_run(parent).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("calotwin").experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3]
    by_number = {t.number: t for t in trials}
    for run in children:
        trial = by_number[int(run.data.tags["optuna.trial"])]
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial.state.name]
        assert float(run.data.params["hpo/lr_generator"]) == pytest.approx(trial.params["lr_generator"])
        scores = client.get_metric_history(run.info.run_id, "validation/fpd")
        assert [m.step for m in scores] == sorted(trial.intermediate_values)

    # a worker started on the finished study finds nothing to do: no trial runs twice
    (job_file,) = (home / "hpo" / "calotwin-3dgan-hpo").glob("*/job.json")
    assert run_worker(HpoJob.from_json(job_file.read_text()), worker=7) == []
    assert len(study.get_trials()) == 4
    stored = json.loads((home / "hpo" / "hpo_study.json").read_text())
    assert stored["params"] == best.params and stored["geometry"] == SMALL

    # the best parameters feed the training
    trained = dg.materialize(
        [gan_model],
        instance=instance,
        resources=resources,
        run_config={
            "ops": {
                "gan_model": {"config": {"epochs": 1, "max_steps_per_epoch": 2, "hyperparameters_from": "hpo_study"}}
            },
            **QUIET,
        },
    )
    model = trained.asset_materializations_for_node("gan_model")[0].metadata
    run = client.get_run(model["mlflow_run_id"].value)
    assert run.data.tags["hyperparameters_source"].endswith("hpo/calotwin-3dgan-hpo/best.json")
    for name, value in best.params.items():
        assert float(run.data.params[name]) == pytest.approx(value), name
    generator = load_generator(model["model_uri"].value)
    assert generator.arch.latent_size == best.params["latent_size"]
    assert mlflow.active_run() is None


def test_gan_model_refuses_hyperparameters_of_another_geometry(home, instance, tmp_path):
    resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
    sims = [{"n_events": 300, "geometry": SMALL, "seed": 5}]
    materialize_training_set(instance, resources, sims)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"geometry": "clic_ecal_51x51x25", "params": {"lr_generator": 1e-4}}))
    result = dg.materialize(
        [gan_model],
        instance=instance,
        resources=resources,
        run_config={"ops": {"gan_model": {"config": {"hyperparameters_from": str(best)}}}, **QUIET},
        raise_on_error=False,
    )
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "the study tuned geometry 'clic_ecal_51x51x25', this training is on 'small_ecal_15x15x12'" in message
