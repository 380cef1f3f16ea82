"""``validate(reference, candidate, config)``: compare candidate showers with MC, cell by cell, with CIs.

For each cell of the conditions grid the events of both samples that fall in it are compared with
every chosen metric on every chosen observable; the MC-vs-MC baseline compares two independent MC
samples the same way (by default the reference's events in each cell are split alternately into
two halves: one is the reference, the other the baseline; pass ``baseline=`` to use a separate MC
sample instead). All three samples are cut to the same number of events per cell, so the baseline
is the statistical floor at exactly the sample size the candidate is judged at. Confidence
intervals are percentile bootstraps over events. Globally, FPD, KPD and a classifier AUC compare the
pooled high-level features (the scalar observables with E_p and theta).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..physics.geometry import Geometry
from ..showers.errors import ShowerDataError
from ..showers.schema import dataset_geometry, validate_showers
from .classifier import ClassifierSettings, classifier_scores, roc_auc
from .config import ValidationConfig
from .distances import fpd, kpd
from .grid import Cell
from .metrics import Sample, get_metric
from .observables import compute_observables, get_observable
from .result import CellResult, Failure, MetricValue, ValidationResult

Observed = dict[str, np.ndarray]


def validate(
    reference: xr.Dataset,
    candidate: xr.Dataset,
    config: ValidationConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    baseline: xr.Dataset | None = None,
) -> ValidationResult:
    """Judge ``candidate`` showers against MC ``reference`` showers (both of the ``simulate`` schema).

    ``config`` is a :class:`ValidationConfig`, a mapping, a YAML path or None (defaults). Raises
    :class:`~dt_assets.ShowerDataError` naming the input for a bad dataset (missing variables, NaN,
    negative deposits, a geometry that differs from the reference's).
    """
    cfg = ValidationConfig.coerce(config)
    inputs = {"reference": reference, "candidate": candidate}
    if baseline is not None:
        inputs["baseline"] = baseline
    geometry = _common_geometry(inputs)
    names = tuple(dict.fromkeys([*cfg.observables, *cfg.scalar_features()]))
    observed = {role: compute_observables(ds, names, cfg.threshold_mev, role) for role, ds in inputs.items()}
    ref = observed["reference"]
    cand = observed["candidate"]
    base = observed.get("baseline", ref)

    metrics: dict[str, MetricValue] = {}
    failures: list[Failure] = []
    cells: list[CellResult] = []
    distributions: dict[str, dict[str, dict[str, list[float]]]] = {}
    pooled: dict[str, list[np.ndarray]] = {"reference": [], "candidate": [], "baseline": []}
    coverage_replicas = np.zeros(cfg.bootstrap)
    baseline_coverage_replicas = np.zeros(cfg.bootstrap)
    baseline_cells_passed = 0  # cells where the MC-vs-MC baseline passes every check
    cell_list = cfg.conditions_grid().cells()
    for index, cell in enumerate(cell_list):
        r_idx, b_idx, c_idx = _cell_events(cell, ref, base, cand, separate_baseline=baseline is not None)
        n = min(len(r_idx), len(b_idx), len(c_idx))
        if n < cfg.min_events_per_cell:
            reason = (
                f"too few events in the cell (reference {len(r_idx)}, baseline {len(b_idx)}, candidate {len(c_idx)}; "
                f"at least {cfg.min_events_per_cell} needed)"
            )
            failures.append(Failure(check="events_per_cell", reason=reason, cell=cell.id))
            cells.append(CellResult(cell.id, cell.label, cell.energy_gev, cell.theta_deg, n, False, 1, 1))
            continue
        r_idx, b_idx, c_idx = r_idx[:n], b_idx[:n], c_idx[:n]
        pooled["reference"].append(r_idx)
        pooled["candidate"].append(c_idx)
        pooled["baseline"].append(b_idx)
        outcome = _compare_cell(cell, index, cfg, geometry, ref, base, cand, (r_idx, b_idx, c_idx))
        metrics.update(outcome.metrics)
        distributions[cell.id] = outcome.distributions
        cell_failures = [_failure(m) for m in outcome.metrics.values() if m.passed is False]
        failures.extend(cell_failures)
        n_checks = sum(m.threshold is not None for m in outcome.metrics.values())
        cells.append(
            CellResult(
                cell.id, cell.label, cell.energy_gev, cell.theta_deg, n, not cell_failures, n_checks, len(cell_failures)
            )
        )
        coverage_replicas += outcome.replica_passed
        baseline_coverage_replicas += outcome.baseline_replica_passed
        baseline_cells_passed += outcome.baseline_passed and n_checks > 0
    n_cells = len(cell_list)
    coverage = sum(c.passed for c in cells) / n_cells
    baseline_coverage = baseline_cells_passed / n_cells
    alpha = (1 - cfg.confidence) / 2
    metrics["coverage"] = MetricValue(
        value=coverage,
        ci=_interval(coverage_replicas / n_cells, alpha),
        baseline=baseline_coverage,
        baseline_ci=_interval(baseline_coverage_replicas / n_cells, alpha),
        threshold=None,
        metric="coverage",
    )
    if coverage < cfg.min_coverage:
        failures.append(
            Failure(check="coverage", reason=f"coverage {coverage:.1%} is below the required {cfg.min_coverage:.1%}")
        )
    if pooled["reference"]:
        parts = {role: np.concatenate(idx) for role, idx in pooled.items()}
        for name, value in _global_metrics(cfg, ref, base, cand, parts).items():
            metrics[name] = value
            if value.passed is False:
                failures.append(_failure(value))
    else:
        failures.append(Failure(check="global", reason="no cell had enough events for the global metrics"))
    score = metrics[cfg.score].value if cfg.score in metrics else float("nan")
    return ValidationResult(
        passed=not failures,
        coverage=coverage,
        metrics=metrics,
        failures=failures,
        cells=cells,
        config=cfg.to_dict(),
        score_name=cfg.score,
        score=float(score),
        provenance={role: _provenance(ds) for role, ds in inputs.items()} | {"geometry": geometry.name},
        distributions=distributions,
    )


def _failure(m: MetricValue) -> Failure:
    """The failure of a metric's check: ``observable.metric`` in a cell, or a global metric by name."""
    check = f"{m.observable}.{m.metric}" if m.observable else str(m.metric)
    reason = f"|{m.value:.4g}| > {m.threshold:g} (MC-vs-MC baseline {m.baseline:.4g})"
    return Failure(check=check, reason=reason, cell=m.cell, observable=m.observable, metric=m.metric)


def _common_geometry(inputs: dict[str, xr.Dataset]) -> Geometry:
    geometries = {}
    for role, ds in inputs.items():
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"{role} must be an xarray.Dataset of showers, got {type(ds).__name__}")
        validate_showers(ds, role, deposits=False)
        geometries[role] = dataset_geometry(ds)
    reference = geometries["reference"]
    for role, geometry in geometries.items():
        if geometry.to_dict() != reference.to_dict():
            raise ShowerDataError(role, f"geometry {geometry.name} differs from the reference's ({reference.name})")
    return reference


def _cell_events(
    cell: Cell, ref: Observed, base: Observed, cand: Observed, separate_baseline: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r_all = np.flatnonzero(cell.contains(ref["primary_energy"], ref["theta"]))
    c_idx = np.flatnonzero(cell.contains(cand["primary_energy"], cand["theta"]))
    if separate_baseline:
        return r_all, np.flatnonzero(cell.contains(base["primary_energy"], base["theta"])), c_idx
    return r_all[0::2], r_all[1::2], c_idx


class _CellOutcome:
    def __init__(self, bootstrap: int):
        self.metrics: dict[str, MetricValue] = {}
        self.distributions: dict[str, dict[str, list[float]]] = {}
        self.replica_passed = np.ones(bootstrap, dtype=bool)
        self.baseline_replica_passed = np.ones(bootstrap, dtype=bool)
        self.baseline_passed = True  # the point values of the MC-vs-MC baseline pass every check


def _compare_cell(
    cell: Cell,
    index: int,
    cfg: ValidationConfig,
    geometry: Geometry,
    ref: Observed,
    base: Observed,
    cand: Observed,
    events: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> _CellOutcome:
    r_idx, b_idx, c_idx = events
    n = len(r_idx)
    rng = np.random.default_rng([cfg.seed, index])
    draws = {role: rng.integers(0, n, (cfg.bootstrap, n)) for role in ("reference", "candidate", "baseline")}
    alpha = (1 - cfg.confidence) / 2
    outcome = _CellOutcome(cfg.bootstrap)
    chosen_metrics = [get_metric(m) for m in cfg.metrics]
    for name in cfg.observables:
        o = get_observable(name)
        per_event = {"reference": ref[name][r_idx], "candidate": cand[name][c_idx], "baseline": base[name][b_idx]}
        if o.bins is not None:  # o.binned
            centres = o.bins(geometry)
            edges = _edges_around(centres)
        else:
            centres = None
            edges = _common_edges(np.concatenate([per_event["reference"], per_event["baseline"]]), cfg.bins)
        resolution = o.resolution(geometry) if o.resolution else 0.0
        full = {role: _sample(v, None, centres, edges, o.kind, resolution) for role, v in per_event.items()}
        boot = {role: _sample(v, draws[role], centres, edges, o.kind, resolution) for role, v in per_event.items()}
        for m in chosen_metrics:
            threshold = cfg.threshold(name, m.name)
            model = m.func(boot["reference"], boot["candidate"])
            floor = m.func(boot["reference"], boot["baseline"])
            value = MetricValue(
                value=float(m.func(full["reference"], full["candidate"])[0]),
                ci=_interval(model, alpha),
                baseline=float(m.func(full["reference"], full["baseline"])[0]),
                baseline_ci=_interval(floor, alpha),
                threshold=threshold,
                cell=cell.id,
                observable=name,
                metric=m.name,
            )
            outcome.metrics[f"{cell.id}/{name}/{m.name}"] = value
            if threshold is not None:
                outcome.replica_passed &= np.abs(model) <= threshold
                outcome.baseline_replica_passed &= np.abs(floor) <= threshold
                outcome.baseline_passed &= abs(value.baseline) <= threshold
        outcome.distributions[name] = _shapes(o.binned, full, n)
    return outcome


def _sample(
    values: np.ndarray,
    draws: np.ndarray | None,
    centres: np.ndarray | None,
    edges: np.ndarray,
    kind: str,
    resolution: float,
) -> Sample:
    """The sample of per-event ``values`` (one replica), or one replica per row of bootstrap ``draws``."""
    if centres is None:
        picked = values[None, :] if draws is None else values[draws]
        return Sample(picked, np.ones_like(picked), edges, kind, resolution)
    if draws is None:
        weights = values.sum(axis=0)[None, :]
    else:
        counts = np.zeros((len(draws), len(values)))
        np.add.at(counts, (np.arange(len(draws))[:, None], draws), 1.0)
        weights = counts @ values
    return Sample(np.broadcast_to(centres, weights.shape), weights, edges, kind, resolution)


def _shapes(binned: bool, full: dict[str, Sample], n: int) -> dict[str, list[float]]:
    """What the report plots: mean binned contents per event, or normalised histograms."""
    if binned:
        shapes = {role: (s.weights[0] / n).tolist() for role, s in full.items()}
        return {"bins": full["reference"].values[0].tolist(), **shapes}
    return {"edges": full["reference"].edges.tolist(), **{role: s.histogram[0].tolist() for role, s in full.items()}}


def _common_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins over the reference's 0.5-99.5% range (values beyond go to the outer bins)."""
    finite = values[np.isfinite(values)]
    low, high = np.percentile(finite, [0.5, 99.5]) if len(finite) else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def _edges_around(centres: np.ndarray) -> np.ndarray:
    mid = (centres[1:] + centres[:-1]) / 2
    first = centres[0] - (mid[0] - centres[0]) if len(mid) else centres[0] - 0.5
    last = centres[-1] + (centres[-1] - mid[-1]) if len(mid) else centres[0] + 0.5
    return np.concatenate([[first], mid, [last]])


def _interval(replicas: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = replicas[np.isfinite(replicas)]
    if not len(finite):
        return (float("nan"), float("nan"))
    low, high = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return (float(low), float(high))


def features(cfg: ValidationConfig, observed: Observed, idx: np.ndarray) -> np.ndarray:
    """High-level features of the events ``idx``: the scalar observables, E_p and theta."""
    columns = [observed[name][idx] for name in cfg.scalar_features()]
    columns += [observed["primary_energy"][idx], observed["theta"][idx]]
    return np.stack(columns, axis=1)


def _global_metrics(
    cfg: ValidationConfig, ref: Observed, base: Observed, cand: Observed, parts: dict[str, np.ndarray]
) -> dict[str, MetricValue]:
    x_ref = features(cfg, ref, parts["reference"])
    x_cand = features(cfg, cand, parts["candidate"])
    x_base = features(cfg, base, parts["baseline"])
    alpha = (1 - cfg.confidence) / 2
    rng = np.random.default_rng([cfg.seed, 10_000])
    n_boot = max(5, cfg.bootstrap // 5)  # each replica of FPD/KPD costs a full extrapolation

    def fpd_of(a: np.ndarray, b: np.ndarray) -> float:
        return fpd(a, b, n_batches=cfg.fpd_batches, n_points=cfg.fpd_points, seed=cfg.seed)[0]

    def kpd_of(a: np.ndarray, b: np.ndarray) -> float:
        return kpd(a, b, n_batches=cfg.kpd_batches, batch_size=cfg.kpd_batch_size, seed=cfg.seed)[0]

    out = {}
    for name, func in (("fpd", fpd_of), ("kpd", kpd_of)):
        model, floor = [], []
        for _ in range(n_boot):
            r = x_ref[rng.integers(0, len(x_ref), len(x_ref))]
            model.append(func(r, x_cand[rng.integers(0, len(x_cand), len(x_cand))]))
            floor.append(func(r, x_base[rng.integers(0, len(x_base), len(x_base))]))
        out[name] = MetricValue(
            value=func(x_ref, x_cand),
            ci=_interval(np.array(model), alpha),
            baseline=func(x_ref, x_base),
            baseline_ci=_interval(np.array(floor), alpha),
            threshold=cfg.threshold(None, name),
            metric=name,
        )
    out["classifier_auc"] = _auc(cfg.classifier, x_ref, x_cand, x_base, cfg.bootstrap, alpha, rng, cfg.threshold)
    return out


def _auc(
    settings: ClassifierSettings,
    x_ref: np.ndarray,
    x_cand: np.ndarray,
    x_base: np.ndarray,
    n_boot: int,
    alpha: float,
    rng: np.random.Generator,
    threshold,
) -> MetricValue:
    def with_ci(labels: np.ndarray, scores: np.ndarray) -> tuple[float, tuple[float, float]]:
        replicas = []
        for _ in range(n_boot):
            pick = rng.integers(0, len(labels), len(labels))
            if 0 < labels[pick].sum() < len(pick):
                replicas.append(roc_auc(labels[pick], scores[pick]))
        return roc_auc(labels, scores), _interval(np.array(replicas), alpha)

    value, ci = with_ci(*classifier_scores(x_ref, x_cand, settings))
    floor, floor_ci = with_ci(*classifier_scores(x_ref, x_base, settings))
    return MetricValue(value, ci, floor, floor_ci, threshold(None, "classifier_auc"), metric="classifier_auc")


def _provenance(ds: xr.Dataset) -> dict[str, Any]:
    keep = ("simulator", "simulator_version", "seed", "source_file", "model_uri", "run_key", "geometry")
    return {"n_events": int(ds.sizes["event"]), **{k: _plain(ds.attrs[k]) for k in keep if k in ds.attrs}}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
