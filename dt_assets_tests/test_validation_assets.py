"""Validation and promotion through Dagster: report, blocking checks, MLflow logging, the champion alias."""

from __future__ import annotations

from types import SimpleNamespace

import dagster as dg
import mlflow
import pytest
import torch
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from mlflow import MlflowClient

from conftest import SMALL
from dt_assets import build_generator
from dt_assets.defs.landing import LOOP_TAG
from dt_assets.defs.loop import promotion_request
from dt_assets.defs.twin_settings import TwinSettings
from dt_assets.defs.upstream import in_run, upstream
from dt_assets.defs.validation import (
    champion_model,
    generated_showers,
    mc_reference,
    speed_benchmark,
    validation_checks,
    validation_report,
)
from dt_assets.model.registry import default_tracking_uri, ensure_experiment, log_generator, set_alias
from dt_assets.validation.config import DEFAULT_THRESHOLDS
from resources import LocalStorage, ModelRegistry

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
MODEL = "calotwin-generator"
REFERENCE = {"geometry": SMALL, "events_per_cell": 120, "n_energies": 2, "angles_deg": [62.0, 118.0]}
LIGHT = {"bootstrap": 10, "classifier_epochs": 2}
#: every check passes (a test of the promotion path, not of the model)
LENIENT = {**LIGHT, "thresholds": {key: 1e12 for key, value in DEFAULT_THRESHOLDS.items() if value is not None}}
#: the e_sum check alone fails any model whose mean energy is off by more than a millionth
STRICT = {**LENIENT, "thresholds": {**LENIENT["thresholds"], "e_sum.mean_error": 1e-6}}
#: the tags of a validation the loop requested (what promotion_request acts on)
LOOP_VALIDATION = {LOOP_TAG: "validate"}


def register(seed: int) -> str:
    """Register an (untrained, seeded) small generator as a new version with alias challenger."""
    uri = default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment("calotwin", uri))
    torch.manual_seed(seed)
    generator = build_generator(SMALL)
    with mlflow.start_run():
        version = log_generator(generator, MODEL)
    set_alias("challenger", version.version, MODEL)
    return version.version


def run_validation(instance, storage, report_config) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [mc_reference, generated_showers, validation_report, champion_model, *validation_checks],
        instance=instance,
        resources={"storage": storage, "registry": ModelRegistry()},
        run_config={
            "ops": {"mc_reference": {"config": REFERENCE}, "validation_report": {"config": report_config}},
            **QUIET,
        },
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


@pytest.fixture
def storage(home):
    return LocalStorage(root=str(home))


def champion_version() -> str | None:
    try:
        return MlflowClient().get_model_version_by_alias(MODEL, "champion").version
    except mlflow.exceptions.MlflowException:
        return None


def test_a_passing_model_is_promoted_a_tie_or_failure_is_not(home, instance, storage):
    first = register(seed=1)
    result = run_validation(instance, storage, LENIENT)
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"coverage_gate": True, "fpd_gate": True, "kpd_gate": True, "classifier_auc_gate": True}
    report = metadata(result, "validation_report")
    assert report["passed"] is True and report["model_uri"] == f"models:/{MODEL}/{first}"
    html = (home / report["report"].removeprefix(str(home) + "/")).read_text()
    assert ("data:image/png;base64" in html and "E15_T62" in html) or "15 GeV" in html
    assert report["summary"].startswith("**") or "fpd" in report["summary"]
    assert "coverage_map" in report and "data:image/png;base64" in report["coverage_map"]
    decision = metadata(result, "champion_model")
    assert decision["promoted"] is True and "no champion yet" in decision["reason"]
    assert champion_version() == first
    # the numbers and the report are in the model's own training run
    version = MlflowClient().get_model_version(MODEL, first)
    run = MlflowClient().get_run(version.run_id)
    assert run.data.metrics["validation/passed"] == 1.0
    assert "validation/fpd" in run.data.metrics and "validation/coverage" in run.data.metrics
    artifacts = {f.path for f in MlflowClient().list_artifacts(version.run_id, "validation")}
    assert artifacts == {"validation/report.html", "validation/result.json"}
    assert version.tags["validation_passed"] == "True"

    # the same weights again, judged with other settings: the champion is validated again with those
    # settings (a second report of version 1), and an equal score does not beat it
    # (and with no threshold for kpd, its gate is skipped, not passed)
    second = register(seed=1)
    no_kpd = {**LENIENT, "bootstrap": 11, "thresholds": {**LENIENT["thresholds"], "kpd": None}}
    result = run_validation(instance, storage, no_kpd)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"coverage_gate": True, "fpd_gate": True, "classifier_auc_gate": True}
    kpd = dg.AssetCheckKey(validation_report.key, "kpd_gate")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([kpd])[kpd]
    assert record.run_id == result.run_id and record.status == AssetCheckExecutionRecordStatus.PLANNED  # no result
    assert instance.get_run_by_id(result.run_id).is_finished  # planned in a finished run: Dagster shows SKIPPED
    decision = metadata(result, "champion_model")
    assert decision["promoted"] is False and "does not beat the champion" in decision["reason"]
    assert decision["champion_score"] == pytest.approx(decision["candidate_score"])
    assert champion_version() == first
    assert len(list((home / "reports" / MODEL / f"v{first}").glob("ref-*/result.json"))) == 2

    # a model failing a blocking check: champion_model does not run after the failed check ...
    third = register(seed=3)
    result = run_validation(instance, storage, STRICT)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["coverage_gate"] is False
    assert not result.asset_materializations_for_node("champion_model")
    assert champion_version() == first
    # ... and materialized on its own it records why it keeps the champion
    alone = dg.materialize(
        [champion_model],
        instance=instance,
        resources={"storage": storage, "registry": ModelRegistry()},
        run_config=QUIET,
    )
    decision = metadata(alone, "champion_model")
    assert decision["promoted"] is False and decision["candidate_version"] == int(third)
    assert "failed checks: coverage" in decision["reason"] and "e_sum.mean_error" in decision["reason"]
    assert champion_version() == first
    assert int(second) == int(first) + 1


def test_speed_benchmark_records_rates_with_the_model_version(home, instance, storage):
    version = register(seed=2)
    result = dg.materialize(
        [speed_benchmark],
        instance=instance,
        resources={"registry": ModelRegistry()},
        run_config={"ops": {"speed_benchmark": {"config": {"n_events": 64, "batch_size": 32}}}, **QUIET},
    )
    numbers = metadata(result, "speed_benchmark")
    assert numbers["generator_showers_per_s"] > 0 and numbers["mc_showers_per_s"] > 0
    assert numbers["speedup_over_mc"] == pytest.approx(
        numbers["generator_showers_per_s"] / numbers["mc_showers_per_s"], rel=1e-2
    )
    tags = MlflowClient().get_model_version(MODEL, version).tags
    assert float(tags["generator_showers_per_s"]) == pytest.approx(numbers["generator_showers_per_s"], rel=1e-3)


def test_a_reference_on_another_geometry_is_refused_by_name(home, instance, storage):
    register(seed=1)
    result = dg.materialize(
        [mc_reference, generated_showers],
        instance=instance,
        resources={"storage": storage, "registry": ModelRegistry()},
        run_config={"ops": {"mc_reference": {"config": {**REFERENCE, "geometry": "clic_ecal_25x25x25"}}}, **QUIET},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "the MC reference is on clic_ecal_25x25x25" in failure.step_failure_data.error.message


def test_two_validations_at_the_same_time_each_judge_their_own_model(home, instance, storage, monkeypatch):
    """Two runs of the validation chain for two models, interleaved as two launches from the UI can be: the
    second run writes its generated showers (and its report) while the first is between its generated_showers
    and its validation_report. Each report, its gates and the promotion judge the run's own model."""
    first, second = register(seed=1), register(seed=2)
    one_cell = {**REFERENCE, "n_energies": 1, "angles_deg": [90.0]}
    activate, calls, others = ModelRegistry.activate, [], []

    def materialize(version: str, assets: list, tags: dict | None = None) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [*assets, *validation_checks],
            instance=instance,
            resources={"storage": storage, "registry": ModelRegistry()},
            run_config={
                "ops": {
                    "mc_reference": {"config": one_cell},
                    "generated_showers": {"config": {"model_uri": f"models:/{MODEL}/{version}"}},
                    "validation_report": {"config": LENIENT},
                },
                **QUIET,
            },
            tags=tags,
        )

    def interleaving(registry: ModelRegistry) -> str:
        calls.append(registry)
        if len(calls) == 2:  # the first run's validation_report starts (generated_showers was call 1): the other run
            others.append(materialize(second, [mc_reference, generated_showers, validation_report], LOOP_VALIDATION))
        return activate(registry)

    monkeypatch.setattr(ModelRegistry, "activate", interleaving)
    result = materialize(first, [mc_reference, generated_showers, validation_report, champion_model])
    (other,) = others
    assert metadata(other, "validation_report")["model_uri"] == f"models:/{MODEL}/{second}"
    assert metadata(result, "validation_report")["model_uri"] == f"models:/{MODEL}/{first}"
    for run in (result, other):
        report = metadata(run, "validation_report")
        assert {c.metadata["model_uri"].value for c in run.get_asset_check_evaluations()} == {report["model_uri"]}
    assert metadata(result, "champion_model")["candidate_version"] == int(first)

    # the loop's promotion of the other validation names its run, and promote_champion judges that one, not the
    # latest; a bad name is named
    request = promotion_request(instance, instance.get_run_by_id(other.run_id), TwinSettings())
    assert request.run_config["ops"]["champion_model"]["config"]["validation"] == other.run_id

    def promote(validation: str) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [champion_model],
            instance=instance,
            resources={"storage": storage, "registry": ModelRegistry()},
            run_config={"ops": {"champion_model": {"config": {"validation": validation}}}, **QUIET},
            raise_on_error=False,
        )

    decision = metadata(promote(other.run_id), "champion_model")
    assert decision["candidate_version"] == int(second) and decision["validation_run"] == other.run_id
    for bad, message in (
        ("no-such-run", "validation: no run 'no-such-run'"),
        (promote(result.run_id).run_id, "materialized no validation_report"),  # a promotion run: no report in it
    ):
        (failure,) = [e for e in promote(bad).all_events if e.is_step_failure]
        assert message in failure.step_failure_data.error.message


def test_a_dependent_reads_its_run_then_the_run_it_re_executes_then_the_latest(instance):
    @dg.asset
    def source(context) -> dg.MaterializeResult:  # unannotated: a string annotation does not resolve here
        return dg.MaterializeResult(metadata={"made_by": context.run.run_id})

    def read(run: SimpleNamespace) -> str:
        return upstream(SimpleNamespace(instance=instance, run=run), source.key)["made_by"]

    with pytest.raises(dg.Failure, match="no source yet: materialize source first"):
        read(SimpleNamespace(run_id="fresh", parent_run_id=None))
    first, latest = (dg.materialize([source], instance=instance, run_config=QUIET).run_id for _ in range(2))
    assert read(SimpleNamespace(run_id="fresh", parent_run_id=None)) == latest  # not in the run: the latest
    assert read(instance.get_run_by_id(first)) == first  # in the run: its own
    assert read(SimpleNamespace(run_id="re-execution", parent_run_id=first)) == first  # re-executing first
    with pytest.raises(dg.Failure, match=r"validation: run \S+ \(__ephemeral_asset_job__, SUCCESS\) materialized no"):
        in_run(instance, first, validation_report.key, "validation")
