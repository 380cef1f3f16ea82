"""Hyper-parameter optimisation: the search space, pruning, a study shared by two worker processes
(no trial lost or run twice, one MLflow child run per trial), a killed worker's trial run again, workers
as a Slurm array job through the compute resource, and tuned_model trained with its best parameters."""

from __future__ import annotations

import json
import signal
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
from dt_assets.defs.configs import FlowModelConfig, GanModelConfig, HpoSearchSpaceConfig, HpoStudyConfig
from dt_assets.defs.hpo import default_study_storage, hpo_study
from dt_assets.defs.loop import MODEL_TAG, validation_request
from dt_assets.defs.model import gan_model, tuned_model
from dt_assets.defs.pipeline import QUIET, materialize_training_set
from dt_assets.defs.twin_settings import TwinSettings
from dt_assets.model.flow_training import FlowTrainConfig
from dt_assets.model.registry import default_tracking_uri
from dt_assets.model.step import TrainConfig
from dt_assets.tuning.claiming import claim_trial, enqueue_budget
from dt_assets.tuning.job import HpoJob
from dt_assets.tuning.search_space import SearchSpace, apply_parameters
from dt_assets.tuning.storage import open_study
from dt_assets.tuning.summary import summarise
from dt_assets.tuning.worker import run_worker
from resources import KubernetesCompute, LocalCompute, LocalStorage, SlurmCompute, tracking_resource

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


def plain_job(study_name: str, tmp_path, **fields) -> HpoJob:
    """A job whose study is driven by a plain objective (no data is read): sqlite under ``tmp_path``."""
    fields.setdefault("storage_url", f"sqlite:///{tmp_path / 'optuna.db'}")
    return HpoJob(
        study_name=study_name,
        data=["unused.zarr"],
        geometry=SMALL,
        reference_url="unused.zarr",
        trials_url=str(tmp_path / "trials"),
        **fields,
    )


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
    with pytest.raises(ValueError, match="unknown 3dgan hyper-parameter"):
        apply_parameters(TrainConfig(), {"momentum": 0.9})
    with pytest.raises(ValueError, match="latent_size must be an integer >= 3"):
        TrainConfig(latent_size=2)
    assert "latent_size" not in TrainConfig().to_dict()  # training keys of untuned trainings are unchanged
    tuned = GanModelConfig().with_hyperparameters({"latent_size": 40, "weight_total": 0.5})
    assert tuned.train_config().latent_size == 40 and tuned.train_config().loss_weights[3] == 0.5


def test_a_flow_study_tunes_the_flow_s_fields_only():
    space = HpoSearchSpaceConfig().search_space("flow")
    assert space.tuned() == ("lr", "ema_decay", "batch_size", "stage2_hidden")
    assert space.batch_size == (128, 256, 512)  # the flow's own default choices
    assert HpoSearchSpaceConfig().search_space("3dgan").batch_size == (16, 32, 64)
    study = optuna.create_study()
    params = space.suggest(study.ask())
    assert set(params) == set(space.tuned()) and 1e-4 <= params["lr"] <= 3e-3
    config = apply_parameters(FlowTrainConfig(), params)
    assert config.lr == params["lr"] and config.stage2_hidden == params["stage2_hidden"]
    with pytest.raises(ValueError, match="unknown flow hyper-parameter"):
        apply_parameters(FlowTrainConfig(), {"lr_generator": 1e-4})
    tuned = FlowModelConfig().with_hyperparameters({"lr": 5e-4, "stage2_hidden": 512})
    assert tuned.train_config().lr == 5e-4 and tuned.train_config().stage2_hidden == 512
    assert FlowModelConfig(layer_skewness=True).train_config().layer_skewness
    with pytest.raises(ValueError, match="unknown flow parameter"):
        FlowModelConfig().with_hyperparameters({"weight_angle": 3.0})
    with pytest.raises(ValidationError, match=r"search_space.ema_decay: must lie in \[0, 1\)"):
        HpoSearchSpaceConfig(ema_decay=[0.9, 1.5])


def test_a_trial_worse_than_the_median_is_pruned(tmp_path):
    """The study's pruner (median over earlier trials, per epoch), with a plain objective in place of training."""
    job = plain_job("pruning", tmp_path, pruner_startup_trials=2)
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
from dt_assets.tuning.claiming import claim_trial
from dt_assets.tuning.job import HpoJob
from dt_assets.tuning.storage import open_study
job = HpoJob.from_json(open(sys.argv[1]).read())
study = open_study(job, int(sys.argv[2]))
while (trial := claim_trial(study)) is not None:
    study.tell(trial, float(trial.number))
    print(trial.number, flush=True)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_racing_workers_claim_every_trial_exactly_once(backend, tmp_path, request):
    """Four processes claim 60 trials of one study as fast as they can, in sqlite (BEGIN IMMEDIATE) and in a
    real PostgreSQL (SELECT ... FOR UPDATE): each trial goes to one of them."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'optuna.db'}"
    else:
        pg = request.getfixturevalue("postgres")
        url = pg.url(pg.create_database("optuna_race"))
    job = plain_job("race", tmp_path, storage_url=url)
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


def test_two_workers_share_a_study_and_its_best_parameters_feed_tuned_model(home, instance):
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
    study = optuna.load_study(study_name="calotwin-hpo", storage=default_study_storage())
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
    assert metadata["launcher"].value == "LocalCompute" and metadata["retried"].value == []
    trials_folder = home / "hpo" / "calotwin-hpo" / "trials"
    assert [p.name for p in trials_folder.iterdir()] == [f"trial-{best.number:04d}"]  # the others' are removed
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
    (job_file,) = (home / "hpo" / "calotwin-hpo").glob("*/job.json")
    assert run_worker(HpoJob.from_json(job_file.read_text()), worker=7) == []
    assert len(study.get_trials()) == 4
    stored = json.loads((home / "hpo" / "calotwin-hpo" / "best.json").read_text())
    assert stored["params"] == best.params and stored["geometry"] == SMALL
    assert metadata["geometry"].value == SMALL and metadata["family"].value == "3dgan"
    assert not (home / "hpo" / "hpo_study.json").exists()  # no "latest study" file: tuned_model reads the metadata

    # the best parameters feed tuned_model (gan_model and flow_model do not depend on hpo_study)
    assert hpo_study.key in tuned_model.asset_deps[tuned_model.key]
    assert hpo_study.key not in gan_model.asset_deps[gan_model.key]
    trained = dg.materialize(
        [tuned_model],
        instance=instance,
        resources=resources,
        run_config={
            "ops": {"tuned_model": {"config": {"gan_model": {"epochs": 1, "max_steps_per_epoch": 2}}}},
            **QUIET,
        },
    )
    model = trained.asset_materializations_for_node("tuned_model")[0].metadata
    assert model["hpo_study_run"].value == result.run_id and model["family"].value == "3dgan"
    run = client.get_run(model["mlflow_run_id"].value)
    assert run.data.tags["hyperparameters_source"].endswith("hpo/calotwin-hpo/best.json")
    for name, value in best.params.items():
        assert float(run.data.params[name]) == pytest.approx(value), name
    generator = load_generator(model["model_uri"].value)
    assert generator.arch.latent_size == best.params["latent_size"]
    assert mlflow.active_run() is None
    # the loop validates the version a tuned training registered, as it does a gan_model's or flow_model's
    request = validation_request(instance, instance.get_run_by_id(trained.run_id), TwinSettings())
    assert isinstance(request, dg.RunRequest) and request.tags[MODEL_TAG] == model["model_uri"].value


def study_stub(geometry: str, family: str, params: dict) -> dg.AssetsDefinition:
    """A stand-in for hpo_study that records a study's outcome without running one."""

    @dg.asset(name="hpo_study")
    def stub() -> dg.MaterializeResult:
        metadata = {"study_name": "stub", "geometry": geometry, "family": family, "best_params": params}
        return dg.MaterializeResult(metadata={**metadata, "best_params_path": dg.MetadataValue.path("stub.json")})

    return stub


def test_tuned_model_refuses_a_study_it_cannot_train_with_naming_why(home, instance):
    resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
    materialize_training_set(instance, resources, [{"n_events": 300, "geometry": SMALL, "seed": 5}])

    def failure(assets: list, config: dict) -> str:
        result = dg.materialize(
            assets,
            instance=instance,
            resources=resources,
            run_config={"ops": {"tuned_model": {"config": config}}, **QUIET},
            raise_on_error=False,
        )
        return result.get_step_failure_events()[0].event_specific_data.error.message

    assert "no hpo_study yet: materialize hpo_study first" in failure([tuned_model], {})
    assert "study: no run 'nope'" in failure([tuned_model], {"study": "nope"})
    other = study_stub("clic_ecal_51x51x25", "3dgan", {"lr_generator": 1e-4})
    message = failure([other, tuned_model], {})  # this run's study
    assert "the study tuned geometry 'clic_ecal_51x51x25', gan_model.geometry is 'small_ecal_15x15x12'" in message
    assert "unknown 3dgan parameter(s) ['lr']" in failure([study_stub(SMALL, "3dgan", {"lr": 1e-4}), tuned_model], {})
    flow = failure([study_stub(SMALL, "flow", {"lr": -1.0}), tuned_model], {})  # the flow section, a bad value
    assert "lr" in flow and "greater than 0" in flow


DYING_WORKER = """
import sys, time
from mlflow import MlflowClient
from dt_assets.tuning.job import HpoJob
from dt_assets.tuning.worker import run_worker
job = HpoJob.from_json(open(sys.argv[1]).read())
def objective(trial):
    trial.suggest_float("x", 0.0, 1.0)
    client = MlflowClient(job.tracking_uri)
    trial.set_user_attr("mlflow_run_id", client.create_run(job.experiment_id).info.run_id)
    print("claimed", trial.number, flush=True)
    time.sleep(600)  # killed meanwhile
run_worker(job, worker=9, objective=objective)
"""


def test_a_killed_worker_s_trial_fails_and_runs_again_with_its_parameters(tmp_path):
    """SIGKILL a worker in its trial: after the grace period without heartbeats, the worker still alive fails
    the trial (and its MLflow run) and runs its parameters again; the budget stays 3 trials that finished."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = MlflowClient(tracking).create_experiment("hpo", artifact_location=str(tmp_path / "artifacts"))
    job = plain_job(
        "lost",
        tmp_path,
        tracking_uri=tracking,
        experiment_id=experiment,
        heartbeat_interval_s=1,
        grace_period_s=3,
        max_retries=1,
    )
    (tmp_path / "job.json").write_text(job.to_json())
    study = open_study(job)
    enqueue_budget(study, 3)
    dying = subprocess.Popen(
        [sys.executable, "-c", DYING_WORKER, str(tmp_path / "job.json")], stdout=subprocess.PIPE, text=True
    )
    assert dying.stdout.readline().split() == ["claimed", "0"]
    time.sleep(1.5)  # it has beaten at least once
    dying.send_signal(signal.SIGKILL)
    dying.wait(timeout=30)

    started = time.monotonic()
    ran = run_worker(job, worker=1, objective=lambda trial: trial.suggest_float("x", 0.0, 1.0))
    assert ran == [1, 2, 3] and time.monotonic() - started >= 2  # it waited for trial 0 to go stale
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[3].params == trials[0].params and trials[3].system_attrs["failed_trial"] == 0
    assert trials[3].value == trials[0].params["x"]
    summary = summarise(study)
    assert summary.retried == [0] and summary.finished == 3 and summary.unfinished == 0 and summary.n_trials == 4
    assert enqueue_budget(study, 3) == 0  # the retry counts for the lost trial: the budget is spent
    lost_run = MlflowClient(tracking).get_run(trials[0].user_attrs["mlflow_run_id"])
    assert lost_run.info.status == "FAILED" and lost_run.data.tags["optuna.state"] == "FAIL"
    assert lost_run.data.tags["optuna.lost"] == "no heartbeat from worker ? for 3 s"


def test_heartbeats_and_launchers_are_checked_and_kubernetes_names_what_to_use(tmp_path):
    with pytest.raises(ValidationError, match="grace_period_s=30 must be above heartbeat_interval_s=30"):
        HpoStudyConfig(heartbeat_interval_s=30, grace_period_s=30)
    with pytest.raises(ValueError, match="need heartbeat_interval_s >= 1 and grace_period_s above it, got 5 and 5"):
        HpoJob("s", "sqlite://", ["d"], SMALL, "r", "t", heartbeat_interval_s=5, grace_period_s=5)
    with pytest.raises(dg.Failure, match="set the asset's launcher to 'processes'"):
        KubernetesCompute(image="calotwin").start_workers(
            dg.build_asset_context(), tmp_path, "dt_assets.tuning.hpo", ["worker", "job.json"], 2, {}
        )


def test_the_workers_array_job_script(tmp_path):
    compute = SlurmCompute(
        partition="gpu",
        gpus_per_node=1,
        cpus_per_task=8,
        time="02:00:00",
        setup=["module load cuda"],
        extra_directives=["--qos=high"],
    )
    script = compute.worker_script(tmp_path, "dt_assets.tuning.hpo", ["worker", "/j/job.json"], 4, {"A": "b c"})
    lines = script.splitlines()
    directives = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH ")]
    assert directives == [
        "--job-name=calotwin-train-workers",
        f"--output={tmp_path}/worker-%a.log",
        "--array=0-3",
        "--nodes=1",
        "--ntasks=1",
        "--time=02:00:00",
        "--partition=gpu",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--qos=high",
    ]
    body = lines[len(directives) + 1 :]
    assert body[:4] == [
        "set -euo pipefail",
        "module load cuda",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        "export A='b c'",
    ]
    assert (
        body[-1] == f'srun {sys.executable} -m dt_assets.tuning.hpo worker /j/job.json --worker "$SLURM_ARRAY_TASK_ID"'
    )


@pytest.mark.slow
def test_workers_run_as_a_slurm_array_job_through_the_compute_resource(slurm, home, instance):
    compute = SlurmCompute(partition=slurm.partition, time="10:00", poll_interval_seconds=0.5)
    resources = {"storage": LocalStorage(), "compute": compute, "mlflow": tracking_resource()}
    materialize_training_set(instance, resources, [{"n_events": 300, "geometry": SMALL, "seed": 6}])
    config = {**STUDY, "n_trials": 2, "epochs": 1, "study_name": "on-slurm"}
    result = dg.materialize(
        [hpo_study],
        instance=instance,
        resources=resources,
        run_config={"ops": {"hpo_study": {"config": config}}, **QUIET},
    )
    metadata = result.asset_materializations_for_node("hpo_study")[0].metadata
    assert metadata["launcher"].value == "SlurmCompute" and metadata["complete"].value + metadata["pruned"].value == 2
    study = optuna.load_study(study_name="on-slurm", storage=default_study_storage())
    assert sorted(t.number for t in study.get_trials()) == [0, 1]
    (folder,) = (home / "hpo" / "on-slurm").glob("*/job.json")
    for i in (0, 1):
        log = (folder.parent / f"worker-{i}.log").read_text()
        job_id = log.split("Slurm job ", 1)[1].split()[0]
        assert job_id.endswith(f"_{i}") and slurm.job_state(job_id)["JobState"] == "COMPLETED", log
    # only the best trial's checkpoints are kept
    assert [p.name for p in (home / "hpo" / "on-slurm" / "trials").iterdir()] == [
        f"trial-{study.best_trial.number:04d}"
    ]


def test_a_study_without_a_training_set_names_what_to_materialize(home, instance):
    resources = {"storage": LocalStorage(), "compute": LocalCompute(), "mlflow": tracking_resource()}
    result = dg.materialize(
        [hpo_study],
        instance=instance,
        resources=resources,
        run_config={"ops": {"hpo_study": {"config": STUDY}}, **QUIET},
        raise_on_error=False,
    )
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "no training set yet: materialize preprocessed_showers and training_set first" in message
    assert not (home / "hpo" / "optuna.db").exists()  # nothing was started
