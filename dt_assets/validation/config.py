"""What a validation computes and how it judges: observables, metrics, thresholds, grid, statistics.

One YAML file (or the Dagster asset's ``Config``, or a dict) chooses everything; keys left out keep
their defaults, and ``thresholds`` entries override the defaults one by one. A threshold applies to
``abs(value)`` of a metric; keys are a metric name (every observable), ``observable.metric`` (one
observable, which wins), or a global metric (``fpd``, ``kpd``, ``classifier_auc``). A threshold of
``null`` keeps the number in the report without a check. Example::

    observables: [e_sum, e_ratio, center_z, width_x, longitudinal_profile]
    metrics: [mean_error, width_error, separation_power]
    thresholds: {mean_error: 0.03, e_ratio.mean_error: 0.02, ks: null}
    grid: {energy_range_gev: [10, 200], n_energies: 3, angles_deg: [62, 90, 118]}
    bootstrap: 200
    score: fpd
    plugins: [my_lab.observables, ./my_metrics.py]

``plugins`` lists modules (importable names, or ``.py`` files; a relative file is relative to the
YAML file) imported before anything else is checked: modules that register observables and
metrics with :func:`~dt_assets.validation.observables.observable` and
:func:`~dt_assets.validation.metrics.metric`, so a YAML given to the Dagster assets as
``config_file`` brings its own physics.

The default thresholds were calibrated on MC against independent MC at 500 events per cell on the
small preset (``bench/validation.py`` prints that calibration): each sits about 1.4x or more above
the largest value any of 150 MC-vs-MC cell comparisons reached, so independent MC passes, while a
10% energy-scale error, a one-layer profile shift or 20% wider showers fail. With fewer events per
cell the statistical floor rises: the report flags checks whose baseline reaches the threshold.

The gates (what promotion needs) are set at the level of the CaloChallenge 2022 leaders against Geant4
(arXiv:2410.21611: CaloDREAM's classifier AUC 0.52, FPD 2.3x the floor; CaloDiffusion 0.59), not at MC
against MC, which only MC itself passes: coverage of at least 90% of the grid's cells (a cell passes when
every check in it does), E_sum/E_p within 2% in a cell, classifier AUC at most 0.6, FPD and KPD at most
0.005 (about five times the MC-vs-MC floor's upper 95% limit at 500 events a cell, 0.001 and 0.0004).
``bench/gates.py`` shows them against MC with its parametrisation moved by known amounts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from .classifier import ClassifierSettings
from .grid import ConditionsGrid
from .metrics import DEFAULT_METRICS, get_metric
from .observables import DEFAULT_OBSERVABLES, DEFAULT_THRESHOLD_MEV, get_observable

GLOBAL_METRICS = ("fpd", "kpd", "classifier_auc")
#: Scores a promotion can rank by, and whether lower is better.
SCORES = {"fpd": True, "kpd": True, "classifier_auc": True, "coverage": False}

DEFAULT_THRESHOLDS: dict[str, float | None] = {
    "mean_error": 0.05,
    # the response: what a detector study reads first (the CaloChallenge leaders were within ~1-2%)
    "e_ratio.mean_error": 0.02,
    "width_error": 0.25,
    "separation_power": 0.1,
    "wasserstein": 0.45,
    "ks": 0.22,
    # positions: the mean shift is in units of the reference spread
    **{
        f"{name}.mean_error": 0.45
        for name in (
            "center_x",
            "center_y",
            "center_z",
            "skewness_x",
            "skewness_y",
            "skewness_z",
            "max_x",
            "max_y",
            "max_layer",
            "longitudinal_profile",
            "transverse_profile_x",
            "transverse_profile_y",
        )
    },
    # the hottest cell's position is discrete (often the same cell in every event): no width check
    "max_x.width_error": None,
    "max_y.width_error": None,
    "max_layer.width_error": None,
    "fpd": 0.005,
    "kpd": 0.005,
    "classifier_auc": 0.6,
}


@dataclass(frozen=True)
class GridSettings:
    """The conditions grid; ``energies_gev`` given explicitly wins over ``n_energies``."""

    energy_range_gev: tuple[float, float] = (10.0, 200.0)
    n_energies: int = 5
    energies_gev: tuple[float, ...] | None = None
    angles_deg: tuple[float, ...] = (62.0, 90.0, 118.0)
    energy_half_width_gev: float = 5.0
    angle_half_width_rad: float = 0.1

    def grid(self) -> ConditionsGrid:
        # the tuple as given: a wrong length fails in ConditionsGrid, as it did before the annotation
        energy_range = cast(tuple[float, float], tuple(float(e) for e in self.energy_range_gev))
        if self.energies_gev:
            return ConditionsGrid(
                energies_gev=tuple(float(e) for e in self.energies_gev),
                angles_deg=tuple(float(a) for a in self.angles_deg),
                energy_half_width_gev=self.energy_half_width_gev,
                angle_half_width_rad=self.angle_half_width_rad,
                energy_range_gev=energy_range,
            )
        return ConditionsGrid.spanning(
            energy_range,
            self.n_energies,
            tuple(float(a) for a in self.angles_deg),
            self.energy_half_width_gev,
            self.angle_half_width_rad,
        )


@dataclass(frozen=True)
class ValidationConfig:
    """Everything a validation needs to know; see the module docstring for the YAML form."""

    observables: tuple[str, ...] = DEFAULT_OBSERVABLES
    metrics: tuple[str, ...] = DEFAULT_METRICS
    thresholds: Mapping[str, float | None] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    grid: GridSettings = field(default_factory=GridSettings)
    events_per_cell: int = 500
    min_events_per_cell: int = 100
    bins: int = 30
    bootstrap: int = 100
    confidence: float = 0.95
    min_coverage: float = 0.9
    score: str = "fpd"
    global_features: tuple[str, ...] | None = None
    fpd_batches: int = 10
    fpd_points: int = 8
    kpd_batches: int = 10
    kpd_batch_size: int = 1000
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    threshold_mev: float = DEFAULT_THRESHOLD_MEV
    seed: int = 0
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for plugin in self.plugins:
            load_plugin(plugin)
        try:
            for name in (*self.observables, *(self.global_features or ())):
                get_observable(name)
            for name in self.metrics:
                get_metric(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        for name in self.global_features or ():
            if get_observable(name).binned:
                raise ValueError(f"global_features: {name!r} is binned; FPD/KPD/classifier take scalar observables")
        for key, value in self.thresholds.items():
            self._check_threshold_key(key)
            if value is not None and (not isinstance(value, (int, float)) or value < 0 or value != value):
                raise ValueError(f"thresholds.{key} must be a number >= 0 or null, got {value!r}")
        positive = ("events_per_cell", "min_events_per_cell", "bins", "bootstrap", "fpd_batches", "kpd_batches")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.fpd_points < 2:
            raise ValueError(f"fpd_points must be >= 2, got {self.fpd_points!r}")
        if self.kpd_batch_size < 2:
            raise ValueError(f"kpd_batch_size must be >= 2, got {self.kpd_batch_size!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence!r}")
        if not 0 <= self.min_coverage <= 1:
            raise ValueError(f"min_coverage must lie in [0, 1], got {self.min_coverage!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {sorted(SCORES)}, got {self.score!r}")
        if self.threshold_mev < 0:
            raise ValueError(f"threshold_mev must be >= 0, got {self.threshold_mev!r}")
        self.grid.grid()  # raises naming the bad grid value

    @staticmethod
    def _check_threshold_key(key: str) -> None:
        if key in GLOBAL_METRICS:
            return
        observable, _, metric = key.rpartition(".")
        try:
            get_metric(metric)
            if observable:
                get_observable(observable)
        except KeyError as exc:
            raise ValueError(f"thresholds: bad key {key!r}: {exc.args[0]}") from None

    def threshold(self, observable: str | None, metric: str) -> float | None:
        """The threshold of ``metric`` on ``observable`` (or of a global metric), None for no check."""
        if observable is not None and f"{observable}.{metric}" in self.thresholds:
            return self.thresholds[f"{observable}.{metric}"]
        return self.thresholds.get(metric)

    def conditions_grid(self) -> ConditionsGrid:
        return self.grid.grid()

    def scalar_features(self) -> tuple[str, ...]:
        """The scalar observables FPD, KPD and the classifier use (with E_p and theta)."""
        if self.global_features:
            return tuple(self.global_features)
        return tuple(n for n in self.observables if not get_observable(n).binned)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["thresholds"] = dict(self.thresholds)
        return _plain(d)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ValidationConfig:
        """Build from a mapping (YAML, JSON, the asset's Config); unknown keys are errors naming them."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown validation setting(s) {unknown}; known: {sorted(known)}")
        if "thresholds" in data:
            data["thresholds"] = {**DEFAULT_THRESHOLDS, **dict(data["thresholds"] or {})}
        if "grid" in data:
            data["grid"] = _nested(GridSettings, data["grid"], "grid")
        if "classifier" in data:
            data["classifier"] = _nested(ClassifierSettings, data["classifier"], "classifier")
        for name in ("observables", "metrics", "global_features", "plugins"):
            if data.get(name) is not None:
                if isinstance(data[name], str):
                    raise ValueError(f"{name} must be a list of names, got the string {data[name]!r}")
                data[name] = tuple(data[name])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"bad validation settings: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> ValidationConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
        if data is not None and not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        if data and isinstance(data.get("plugins"), list):  # files named relative to the YAML
            data = {**data, "plugins": [_relative_to(str(p), path.parent) for p in data["plugins"]]}
        try:
            return cls.from_dict(data)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}: {exc.args[0]}") from None

    @classmethod
    def coerce(cls, config: ValidationConfig | Mapping[str, Any] | str | Path | None) -> ValidationConfig:
        """A config from a config, a mapping, a YAML path, or None (the defaults)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, (str, Path)):
            return cls.from_yaml(config)
        return cls.from_dict(cast(Mapping[str, Any], config))  # not a ValidationConfig: cls itself is one


def _nested(kind: type, value: Any, name: str) -> Any:
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping, got {value!r}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {unknown}; known: {sorted(known)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return kind(**converted)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _relative_to(plugin: str, folder: Path) -> str:
    return str((folder / plugin).resolve()) if plugin.endswith(".py") and not Path(plugin).is_absolute() else plugin


def load_plugin(plugin: str) -> None:
    """Import a module that registers observables or metrics: a dotted name or a ``.py`` file.

    A module is imported once per process (a file is keyed by its resolved path), so registering
    in it at import time is safe. A missing module or an error inside it raises ValueError naming it.
    """
    if not plugin.endswith(".py"):
        try:
            importlib.import_module(plugin)
        except ImportError as exc:
            raise ValueError(f"plugins: cannot import {plugin!r}: {exc}") from None
        return
    path = Path(plugin).expanduser().resolve()
    name = f"calotwin_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    if not path.is_file():
        raise ValueError(f"plugins: no such file {plugin!r}")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(f"plugins: {plugin!r} failed on import: {type(exc).__name__}: {exc}") from exc
