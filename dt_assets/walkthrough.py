"""The steps `make demo` and `make champion` share: runs registered and ingested, a model trained,
validated, judged and exported, each as Dagster materializations in ``$DAGSTER_HOME``.

Every step is skipped when its result is already recorded (a run ingested, a model trained with the same
settings, a version validated or judged), so running a command again does no work twice.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .progress import Progress, echo

GEOMETRY = "small_ecal_15x15x12"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
#: a failed blocking check is reported by the command itself, not as Dagster's error log with a stack trace
SILENT = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class Session:
    """The Dagster instance, the resources and the storage the steps use."""

    instance: Any
    resources: dict[str, Any]
    storage: Any

    @classmethod
    def open(cls) -> Session:
        import dagster as dg

        from resources import ModelRegistry, compute_from_env, storage_from_env, tracking_resource

        storage = storage_from_env()
        resources = {
            "storage": storage,
            "compute": compute_from_env(),
            "mlflow": tracking_resource(),
            "registry": ModelRegistry(),
        }
        return cls(dg.DagsterInstance.get(), resources, storage)

    def materialize(self, assets: list, run_config: Mapping[str, Any] | None = None, **kwargs):
        import dagster as dg

        return dg.materialize(
            assets, instance=self.instance, resources=self.resources, run_config=dict(run_config or QUIET), **kwargs
        )

    def metadata(self, key) -> dict | None:
        """The latest materialization's metadata values of an asset, or None."""
        event = self.instance.get_latest_materialization_event(key)
        if event is None:
            return None
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def ingest(session: Session, simulations: list[dict], files: list[str]) -> list[dict] | None:
    """Register the runs and files, materialize raw and preprocessed showers of each; the runs' table rows
    (None, after saying why, when a run's data checks failed)."""
    from .defs.data import raw_showers, simulation_runs
    from .defs.preprocess import preprocessed_showers

    config = {"simulations": simulations, "import_files": [{"path": f} for f in files]}
    result = session.materialize([simulation_runs], {"ops": {"simulation_runs": {"config": config}}, **QUIET})
    table = result.asset_materializations_for_node("simulation_runs")[0].metadata["runs"].value
    rows = [row.data for row in table.records]
    done = session.instance.get_materialized_partitions(preprocessed_showers.key)
    for key in Progress(len(rows), "raw + preprocessed showers", "runs").wrap([r["run"] for r in rows]):
        if key in done:
            continue
        result = session.materialize([raw_showers, preprocessed_showers], partition_key=key)
        failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
        if failed:
            echo(f"run {key}: checks failed: {failed}", file=sys.stderr)
            return None
    return rows


def train(session: Session, asset, config, announce: str = "") -> dict:
    """Materialize ``training_set`` and the training asset with ``config`` (its launchpad config), unless its
    latest materialization was trained with these settings (``announce`` is printed when it trains); the
    model's metadata."""
    from .defs.preprocess import training_set

    model = session.metadata(asset.key)
    if model is None or model.get("config_checksum") != config.checksum():
        if announce:
            print(announce)
        session.materialize([training_set])
        session.materialize([asset], {"ops": {asset.key.path[-1]: {"config": config.model_dump()}}, **QUIET})
        model = session.metadata(asset.key)
    assert model is not None
    return model


def validate_and_judge(session: Session, model: dict) -> tuple[dict, dict]:
    """Validate the model's version (report, blocking checks, speed) unless already done, then decide its
    promotion in a run of its own (so the decision and its reason are recorded even when a check failed).
    Returns the validation report's and the decision's metadata."""
    from .defs.validation import (
        champion_model,
        generated_showers,
        mc_reference,
        speed_benchmark,
        validation_checks,
        validation_report,
    )

    report = session.metadata(validation_report.key)
    if report is None or report["model_uri"] != model["model_uri"]:
        echo(f"\nvalidating {model['model_uri']} against an independent MC reference (grid of energy x angle cells)")
        session.materialize(
            [mc_reference, generated_showers, validation_report, *validation_checks, speed_benchmark],
            SILENT,
            raise_on_error=False,
        )
        report = session.metadata(validation_report.key)
    decision = session.metadata(champion_model.key)
    if decision is None or decision["candidate_version"] != model["model_version"]:
        session.materialize([champion_model])
        decision = session.metadata(champion_model.key)
    assert report is not None and decision is not None
    return report, decision


def print_verdict(session: Session, report: dict, decision: dict) -> None:
    """The validation summary, the blocking checks, the report's path, the speed and the decision."""
    from .defs.validation import read_result, speed_benchmark
    from .validation.promotion import gates

    result = read_result(session.storage, report["result_json"])
    print(f"validation: {result.summary()}")
    print("blocking checks: " + ", ".join(f"{g.name} {'passed' if g.passed else 'FAILED'}" for g in gates(result)))
    print(f"report:     {report['report']}")
    speed = session.metadata(speed_benchmark.key)
    if speed is not None:
        print(
            f"speed:      generator {speed['generator_showers_per_s']:.0f} showers/s, "
            f"MC {speed['mc_showers_per_s']:.0f} showers/s on {speed['device']} ({speed['geometry']}, 100 GeV, 90 deg)"
        )
    verb = "promoted to champion" if decision["promoted"] else "not promoted"
    print(f"promotion:  version {decision['candidate_version']} {verb}: {decision['reason']}")
