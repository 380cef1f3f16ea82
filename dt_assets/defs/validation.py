"""Validation stage: MC reference, generated showers, the validation report with its blocking checks,
the promotion of the champion, and a generation-speed benchmark.

Samples are zarr stores under ``validation/``. Each asset records what it produced (URLs, keys, the
model) in its materialization's metadata, and the next asset reads the materialization of its own
run (:mod:`dt_assets.defs.upstream`): two validations launched at the same time each judge their own
model. Reports live under ``reports/<model>/v<version>/<reference>-<settings>/`` (HTML and JSON) and
are logged to the model version's MLflow training run.
"""

import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import torch
import xarray as xr

from resources import ModelRegistry, StorageResource

from ..fsio import atomic_file, sha256_json, url_to_fs
from ..model.generation import ShowerGenerator, generate, load_generator
from ..model.registry import alias_version, log_to_run, resolve_version, set_alias, tag_version, version_uri
from ..progress import Progress
from ..showers.store import read_showers, write_showers
from ..simulation import simulate
from ..validation.config import ValidationConfig
from ..validation.promotion import decide_promotion, gates
from ..validation.report import coverage_map_png, markdown_summary, profiles_png, summary_rows
from ..validation.result import ValidationResult
from ..validation.samples import generate_grid, simulate_grid
from ..validation.validate import validate
from .configs import (
    ChampionConfig,
    GeneratedShowersConfig,
    ReferenceConfig,
    SpeedBenchmarkConfig,
    ValidationReportConfig,
)
from .metadata import image
from .model import flow_model, gan_model, tuned_model
from .upstream import Materialization, upstream

CHAMPION = "champion"


@dg.asset(
    group_name="validation",
    kinds={"zarr"},
    description="MC showers at the validation grid's conditions (twice the events per cell: reference and the "
    "independent sample of the MC-vs-MC baseline). Simulated with its own seed, never part of the training set.",
)
def mc_reference(context: dg.AssetExecutionContext, config: ReferenceConfig, storage: StorageResource):
    cfg = config.validation_config()
    grid = cfg.conditions_grid()
    spec = {
        "grid": grid.to_dict(),
        "events_per_cell": cfg.events_per_cell,
        "geometry": config.geometry,
        "particle": config.particle,
        "seed": config.seed,
    }
    key = f"ref-{sha256_json(spec, 10)}"
    url = storage.validation_url("mc_reference", f"{key}.zarr")
    if storage.exists(url):
        context.log.info(f"{key} exists; reusing {url}")
    else:
        n_cells = len(grid.cells())
        context.log.info(f"simulating {2 * cfg.events_per_cell} events in each of {n_cells} cells ({key})")
        total = n_cells * 2 * cfg.events_per_cell
        with Progress(total, f"simulating {key}", log=context.log.info) as progress:
            showers = simulate_grid(
                grid, 2 * cfg.events_per_cell, config.geometry, config.particle, config.seed, progress.update
            )
        write_showers(showers, url, storage.options(), attrs={"run_key": key})
    return dg.MaterializeResult(
        metadata={
            "reference_key": key,
            "path": dg.MetadataValue.path(url),
            "cells": len(grid.cells()),
            "events_per_cell": 2 * cfg.events_per_cell,
            "grid": dg.MetadataValue.json(grid.to_dict()),
            "geometry": config.geometry,
            "particle": config.particle,
            "seed": config.seed,
            "validation_config": dg.MetadataValue.json(cfg.to_dict()),
        }
    )


@dg.asset(
    deps=[mc_reference, gan_model, flow_model, tuned_model],
    group_name="validation",
    kinds={"pytorch", "zarr"},
    description="Showers from a registered generator (default: the challenger) at the MC reference's conditions.",
)
def generated_showers(
    context: dg.AssetExecutionContext,
    config: GeneratedShowersConfig,
    storage: StorageResource,
    registry: ModelRegistry,
):
    registry.activate()
    reference = upstream(context, mc_reference.key)
    model_uri = config.resolved_uri()
    version = resolve_version(model_uri)
    generator = load_generator(version_uri(version))
    if generator.geometry.name != reference["geometry"]:
        raise dg.Failure(
            f"{model_uri} (version {version.version}) generates {generator.geometry.name} showers, but the MC "
            f"reference is on {reference['geometry']}: materialize mc_reference with geometry "
            f"{generator.geometry.name!r}"
        )
    cfg = ValidationConfig.from_dict(reference["validation_config"])
    url = storage.validation_url(
        "generated", f"{version.name}-v{version.version}-{reference['reference_key']}-s{config.seed}.zarr"
    )
    if not storage.exists(url):
        started = time.monotonic()
        showers = _generate(context, generator, cfg, reference["particle"], config.seed, f"v{version.version}")
        showers.attrs["model_uri"] = version_uri(version)
        write_showers(showers, url, storage.options())
        context.log.info(f"generated {showers.sizes['event']} showers in {time.monotonic() - started:.1f} s")
    return dg.MaterializeResult(
        metadata={
            "model_uri": version_uri(version),
            "registered_model": version.name,
            "model_version": int(version.version),
            "mlflow_run_id": version.run_id,
            "path": dg.MetadataValue.path(url),
            "reference_key": reference["reference_key"],
            "seed": config.seed,
        }
    )


def _publish(storage: StorageResource, result: ValidationResult, folder: str, run_id: str) -> tuple[str, str]:
    """Write report.html and result.json under ``reports/<folder>`` and log them, with the metrics (prefixed
    ``validation/``), to the model's MLflow run ``run_id``; returns the two URLs."""
    html_url, json_url = storage.report_url(folder, "report.html"), storage.report_url(folder, "result.json")
    metrics = {f"validation/{key}": m.value for key, m in result.metrics.items()}
    metrics |= {f"validation/{key}_baseline": m.baseline for key, m in result.global_metrics().items()}
    metrics["validation/passed"] = float(result.passed)
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            html_url: result.to_html(Path(tmp) / "report.html"),
            json_url: result.to_json(Path(tmp) / "result.json"),
        }
        for url, path in files.items():
            with atomic_file(url, storage.options()) as handle:
                handle.write(path.read_bytes())
        log_to_run(run_id, metrics, [str(p) for p in files.values()], "validation")
    return html_url, json_url


def _report_folder(name: str, version: str, reference_key: str, cfg: ValidationConfig) -> str:
    return f"{name}/v{version}/{reference_key}-{sha256_json(cfg.to_dict(), 10)}"


@dg.asset(
    deps=[generated_showers, mc_reference],
    group_name="validation",
    kinds={"html", "mlflow"},
    description="Physics validation of the generated showers against the MC reference: per-cell metrics with "
    "bootstrap CIs and the MC-vs-MC baseline, coverage of the grid, FPD/KPD and classifier AUC; an HTML report "
    "and a JSON of every number, logged to the model's MLflow run.",
)
def validation_report(
    context: dg.AssetExecutionContext,
    config: ValidationReportConfig,
    storage: StorageResource,
    registry: ModelRegistry,
):
    registry.activate()
    reference = upstream(context, mc_reference.key)
    generated = upstream(context, generated_showers.key)
    reference_key = reference["reference_key"]
    if generated["reference_key"] != reference_key:
        raise dg.Failure(
            f"generated_showers (run {generated.run_id}) was made for the MC reference {generated['reference_key']}, "
            f"not {reference_key} (run {reference.run_id}): materialize generated_showers again"
        )
    cfg = config.validation_config(ValidationConfig.from_dict(reference["validation_config"]))
    name, version = generated["registered_model"], str(generated["model_version"])
    context.log.info(
        f"validating {name} v{version} (generated_showers of run {generated.run_id}) against {reference_key}"
    )
    started = time.monotonic()
    result = validate(
        read_showers(reference["path"], storage.options(), validate=False),
        read_showers(generated["path"], storage.options(), validate=False),
        cfg,
    )
    seconds = time.monotonic() - started
    result.provenance["model_uri"] = generated["model_uri"]
    result.provenance["reference_key"] = reference_key
    folder = _report_folder(name, version, reference_key, cfg)
    html_url, json_url = _publish(storage, result, folder, generated["mlflow_run_id"])
    tag_version(
        resolve_version(generated["model_uri"]),
        {
            "validation_passed": result.passed,
            f"validation_{result.score_name}": result.score,
            "validation_report": html_url,
        },
    )
    context.log.info(f"{result.summary()} ({seconds:.0f} s); report {html_url}")
    failing = result.failing_checks()
    return dg.MaterializeResult(
        metadata={
            "passed": result.passed,
            "coverage": round(result.coverage, 4),
            **{name: float(m.value) for name, m in result.global_metrics().items() if name != "coverage"},
            "score": dg.MetadataValue.text(f"{result.score_name} = {result.score:.4g}"),
            "model_uri": generated["model_uri"],
            "registered_model": name,
            "model_version": int(version),
            "report": dg.MetadataValue.path(html_url),
            "result_json": dg.MetadataValue.path(json_url),
            # what champion_model needs to judge the champion on the same reference
            "reference_key": reference_key,
            "reference_path": dg.MetadataValue.path(reference["path"]),
            "particle": reference["particle"],
            "seed": int(generated["seed"]),
            "summary": dg.MetadataValue.md(markdown_summary(result)),
            "summary_table": _table(summary_rows(result)),
            "failing_checks": dg.MetadataValue.json(dict(list(failing.items())[:20])),
            "coverage_map": image(coverage_map_png(result), "coverage map"),
            "longitudinal_profiles": image(profiles_png(result, "longitudinal_profile"), "longitudinal profiles"),
            "validation_seconds": round(seconds, 1),
        }
    )


def read_result(storage: StorageResource, url: str) -> ValidationResult:
    fs, path = url_to_fs(url, storage.options())
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "result.json"
        fs.get(path, str(local))
        return ValidationResult.from_json(local)


def _table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    """Global metrics as a Dagster table (value, interval, MC-vs-MC baseline, threshold, verdict); blanks as "-"."""
    text = ("name", "threshold", "passed")
    columns = [dg.TableColumn(name, "string" if name in text else "float") for name in rows[0]]
    records = [
        dg.TableRecord(
            {
                k: ("-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)) if k in text else v
                for k, v in row.items()
            }
        )
        for row in rows
    ]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=columns))


GATES = ("coverage", "fpd", "kpd", "classifier_auc")


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            f"{name}_gate",
            asset=validation_report,
            blocking=True,
            description=f"Blocking: the validated model's {name} is within its threshold. With no threshold "
            "configured (null) the check is skipped, not passed.",
        )
        for name in GATES
    ],
    can_subset=True,
    required_resource_keys={"storage"},
)
def validation_gates(context: dg.AssetCheckExecutionContext):
    """The four blocking gates of the validation report of this run (or the latest, checked on its own); a gate
    without a threshold yields no result, so Dagster shows it skipped."""
    report = upstream(context, validation_report.key)
    result = read_result(context.resources.storage, report["result_json"])
    found = {g.name: g for g in gates(result)}
    for name in GATES:
        if f"{name}_gate" not in {key.name for key in context.selected_asset_check_keys}:
            continue
        gate = found.get(name)
        if gate is None:
            context.log.info(f"{name}_gate skipped: no threshold configured for {name}")
            continue
        yield dg.AssetCheckResult(
            check_name=f"{name}_gate",
            asset_key=validation_report.key,
            passed=gate.passed,
            metadata={"model_uri": report["model_uri"], "reason": gate.reason},
        )


validation_checks = [validation_gates]


def _generate(
    context: dg.AssetExecutionContext,
    generator: ShowerGenerator,
    cfg: ValidationConfig,
    particle: str,
    seed: int,
    label: str,
) -> xr.Dataset:
    """The generator's showers in every cell of the validation grid, logging progress as they come."""
    grid = cfg.conditions_grid()
    total = len(grid.cells()) * cfg.events_per_cell
    with Progress(total, f"generating with {label}", log=context.log.info) as progress:
        return generate_grid(generator, grid, cfg.events_per_cell, particle, seed, progress.update)


def _champion_result(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    champion,
    report: Materialization,
    candidate: ValidationResult,
) -> ValidationResult:
    """The champion judged against the same reference with the same settings (validated now if never)."""
    cfg = ValidationConfig.from_dict(candidate.config)
    folder = _report_folder(champion.name, champion.version, report["reference_key"], cfg)
    json_url = storage.report_url(folder, "result.json")
    if storage.exists(json_url):
        return read_result(storage, json_url)
    context.log.info(f"validating the champion (version {champion.version}) on the same reference and settings")
    generator = load_generator(version_uri(champion))
    showers = _generate(
        context, generator, cfg, report["particle"], int(report["seed"]), f"the champion v{champion.version}"
    )
    result = validate(read_showers(report["reference_path"], storage.options(), validate=False), showers, cfg)
    _publish(storage, result, folder, champion.run_id)
    return result


@dg.asset(
    deps=[validation_report],
    group_name="validation",
    kinds={"mlflow"},
    description="Moves the MLflow alias 'champion' to the validated model version only when every blocking check "
    "passes and it beats the current champion on the configured score; otherwise records why not.",
)
def champion_model(
    context: dg.AssetExecutionContext, config: ChampionConfig, storage: StorageResource, registry: ModelRegistry
):
    registry.activate()
    report = upstream(context, validation_report.key, config.validation, "validation")
    candidate = read_result(storage, report["result_json"])
    if report["registered_model"] != config.registered_model_name:
        raise dg.Failure(
            f"the validation of run {report.run_id} judged {report['registered_model']}, "
            f"not {config.registered_model_name}"
        )
    context.log.info(f"judging {report['model_uri']}, validated in run {report.run_id}")
    candidate_version = resolve_version(report["model_uri"])
    champion = alias_version(CHAMPION, config.registered_model_name)
    if champion is not None and champion.version == candidate_version.version:
        promote, reason = False, f"version {champion.version} is already the champion"
        champion_score = candidate.score
    else:
        champion_result = None if champion is None else _champion_result(context, storage, champion, report, candidate)
        decision = decide_promotion(candidate, champion_result)
        promote, reason = decision.promote, decision.reason
        champion_score = float("nan") if champion_result is None else champion_result.score
    previous = None if champion is None else str(champion.version)
    if promote:
        set_alias(CHAMPION, candidate_version.version, config.registered_model_name)
        tag_version(candidate_version, {"promoted_over": previous or "none", "promotion_reason": reason})
        context.log.info(f"promoted version {candidate_version.version} to champion: {reason}")
    else:
        context.log.info(f"champion stays {previous or 'unset'}: {reason}")
    return dg.MaterializeResult(
        metadata={
            "promoted": promote,
            "reason": dg.MetadataValue.text(reason),
            "candidate_version": int(candidate_version.version),
            "validation_run": dg.MetadataValue.dagster_run(report.run_id),
            "champion_version": dg.MetadataValue.text(
                str(candidate_version.version) if promote else (previous or "none")
            ),
            "previous_champion": dg.MetadataValue.text(previous or "none"),
            "score_name": candidate.score_name,
            "candidate_score": float(candidate.score),
            "champion_score": float(champion_score),
        }
    )


@dg.asset(
    deps=[gan_model, flow_model, tuned_model],
    group_name="validation",
    kinds={"pytorch"},
    description="Showers per second of a registered generator against the MC on this machine, at one condition; "
    "recorded with the model version (tags and its MLflow run).",
)
def speed_benchmark(
    context: dg.AssetExecutionContext, config: SpeedBenchmarkConfig, registry: ModelRegistry
) -> dg.MaterializeResult:
    registry.activate()
    version = resolve_version(config.resolved_uri())
    generator = load_generator(version_uri(version))
    geometry = generator.geometry
    generate(generator, min(config.batch_size, config.n_events), config.energy_gev, config.theta_deg)  # warm-up
    started = time.perf_counter()
    generate(generator, config.n_events, config.energy_gev, config.theta_deg, batch_size=config.batch_size, seed=1)
    gan_rate = config.n_events / (time.perf_counter() - started)
    started = time.perf_counter()
    simulate(config.n_events, config.energy_gev, config.theta_deg, "e-", geometry, seed=1)
    mc_rate = config.n_events / (time.perf_counter() - started)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = torch.get_num_threads()
    numbers = {"generator_showers_per_s": gan_rate, "mc_showers_per_s": mc_rate, "speedup_over_mc": gan_rate / mc_rate}
    tag_version(
        version, {k: f"{v:.4g}" for k, v in numbers.items()} | {"speed_device": f"{device} ({threads} threads)"}
    )
    log_to_run(version.run_id, {f"speed/{k}": v for k, v in numbers.items()}, [], "")
    context.log.info(
        f"version {version.version}: generator {gan_rate:.1f} showers/s, MC {mc_rate:.1f} showers/s on {device}"
    )
    return dg.MaterializeResult(
        metadata={
            "model_uri": version_uri(version),
            **{k: float(f"{v:.4g}") for k, v in numbers.items()},  # four significant figures (a speedup can be < 0.01)
            "device": f"{device} ({threads} threads)",
            "geometry": geometry.name,
            "n_events": config.n_events,
            "batch_size": config.batch_size,
        }
    )
