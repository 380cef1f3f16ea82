"""Launchpad configuration of the data assets: typed, with a default and a description per field."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import dagster as dg
from pydantic import Field, field_validator, model_validator

from ..model.train import TrainConfig
from ..physics.geometry import DEFAULT_GEOMETRY, GEOMETRIES
from ..physics.simulator import ENERGY_RANGE_GEV, THETA_RANGE_DEG
from ..runs import SimulationSpec
from ..validation.config import SCORES, GridSettings, ValidationConfig

#: a geometry preset's name: an enum in the launchpad (a dropdown, and an unknown name is refused before launch)
GeometryName = Literal[tuple(sorted(GEOMETRIES))]  # type: ignore[valid-type]


def _energy_field(default: float, description: str) -> Any:
    """A primary energy in GeV, bounded by the simulator's range of validity."""
    return Field(default=default, ge=ENERGY_RANGE_GEV[0], le=ENERGY_RANGE_GEV[1], description=description)


def _theta_field(default: float, description: str) -> Any:
    """A polar angle in degrees, bounded by the simulator's range of validity."""
    return Field(default=default, ge=THETA_RANGE_DEG[0], le=THETA_RANGE_DEG[1], description=description)


def _known_geometry(value: str | None) -> str | None:
    if value is not None and value not in GEOMETRIES:
        raise ValueError(f"unknown geometry {value!r}; presets: {sorted(GEOMETRIES)}")
    return value


class SimulationConfig(dg.Config):
    """One Monte Carlo run of the parametrized (GFlash) shower simulator."""

    n_events: int = Field(default=1000, ge=1, description="Number of showers to simulate.")
    energy_min_gev: float = _energy_field(10.0, "Lowest primary energy (GeV).")
    energy_max_gev: float = _energy_field(100.0, "Highest primary energy (GeV).")
    theta_min_deg: float = _theta_field(
        60.0, "Lowest polar angle of incidence (degrees; 90 = perpendicular to the face)."
    )
    theta_max_deg: float = _theta_field(120.0, "Highest polar angle (degrees).")
    particle: Literal["e-", "gamma"] = Field(default="e-", description="Incident particle.")
    geometry: GeometryName = Field(default=DEFAULT_GEOMETRY, description="Geometry preset (cells, layers, materials).")
    seed: int = Field(default=0, ge=0, description="Random seed; the same config and seed give the same run.")

    @model_validator(mode="after")
    def _ranges_in_order(self) -> SimulationConfig:
        """`energy_min_gev` ≤ `energy_max_gev` and `theta_min_deg` ≤ `theta_max_deg` (a reversed range is named)."""
        if self.energy_min_gev > self.energy_max_gev:
            raise ValueError(
                f"energy range reversed: energy_min_gev={self.energy_min_gev} > energy_max_gev={self.energy_max_gev}"
            )
        if self.theta_min_deg > self.theta_max_deg:
            raise ValueError(
                f"angle range reversed: theta_min_deg={self.theta_min_deg} > theta_max_deg={self.theta_max_deg}"
            )
        return self

    def to_spec(self) -> SimulationSpec:
        return SimulationSpec(
            n_events=self.n_events,
            energy_gev=(self.energy_min_gev, self.energy_max_gev),
            theta_deg=(self.theta_min_deg, self.theta_max_deg),
            particle=self.particle,
            geometry=self.geometry,
            seed=self.seed,
        )


class ImportFileConfig(dg.Config):
    """An external shower file to ingest as a run: 3DGAN or CaloChallenge HDF5, or a zarr store."""

    path: str = Field(description="Local path or fsspec URL of the file.")
    geometry: str | None = Field(
        default=None, description="Geometry preset; empty means the preset matching the file's grid."
    )
    particle: Literal["e-", "gamma"] = Field(
        default="e-", description="Incident particle, when the file does not record it."
    )

    _check_geometry = field_validator("geometry")(_known_geometry)


class SimulationRunsConfig(dg.Config):
    """Runs to register: each becomes one partition of ``raw_showers`` (registering twice is a no-op)."""

    simulations: list[SimulationConfig] = Field(
        default_factory=lambda: [SimulationConfig()], description="Monte Carlo runs to register."
    )
    import_files: list[ImportFileConfig] = Field(default_factory=list, description="External files to register.")


class PreprocessConfig(dg.Config):
    """The 3DGAN preprocessing of one run (defaults: the reference's)."""

    threshold_gev: float = Field(default=1e-4, ge=0, description="Cells below this energy (GeV) are set to 0.")
    power: float = Field(default=0.85, gt=0, le=1, description="Cell energies are scaled as E^power.")
    min_total_gev: float = Field(default=1e-3, ge=0, description="Events with less visible energy (GeV) are dropped.")
    train_fraction: float = Field(default=0.8, gt=0, lt=1, description="Fraction of events in the training split.")
    validation_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Fraction in the validation split; the rest is the test split."
    )

    @model_validator(mode="after")
    def _fractions_fit(self) -> PreprocessConfig:
        """`train_fraction` + `validation_fraction` ≤ 1 (the rest is the test split)."""
        if self.train_fraction + self.validation_fraction > 1:
            raise ValueError(
                f"train_fraction + validation_fraction = {self.train_fraction + self.validation_fraction} exceeds 1"
            )
        return self

    def fractions(self) -> tuple[float, float, float]:
        return (self.train_fraction, self.validation_fraction, 1.0 - self.train_fraction - self.validation_fraction)


class GanModelConfig(dg.Config):
    """Training of the 3DGAN. Defaults suit a CPU and the small preset; the reference trains the
    51x51x25 model with learning rates 1e-3 on GPUs."""

    geometry: GeometryName = Field(
        default="small_ecal_15x15x12", description="Geometry preset; trains on its runs only."
    )
    epochs: int = Field(default=4, ge=1, description="Epochs (passes over the training split).")
    batch_size: int = Field(default=32, ge=2, description="Events per batch (per process under DDP).")
    max_steps_per_epoch: int = Field(default=0, ge=0, description="Cap on steps per epoch; 0 means a full pass.")
    lr_generator: float = Field(default=3e-4, gt=0, description="RMSprop learning rate of the generator.")
    lr_discriminator: float = Field(default=3e-4, gt=0, description="RMSprop learning rate of the discriminator.")
    weight_real_fake: float = Field(default=3.0, ge=0, description="Loss weight of the real/fake BCE term.")
    weight_energy: float = Field(default=0.1, ge=0, description="Loss weight of the energy-regression MAPE.")
    weight_angle: float = Field(default=25.0, ge=0, description="Loss weight of the angle L1 term.")
    weight_total: float = Field(default=0.1, ge=0, description="Loss weight of the energy-sum MAPE.")
    label_flip: float = Field(default=0.05, ge=0, lt=0.5, description="Probability of flipping a real/fake label.")
    seed: int = Field(default=0, ge=0, description="Random seed (weights, noise, data order).")
    warm_start: str = Field(
        default="", description="Start from this model: models:/name@alias, models:/name/N or a checkpoint path."
    )
    registered_model_name: str = Field(default="calotwin-3dgan", description="MLflow registered model name.")

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr_generator=self.lr_generator,
            lr_discriminator=self.lr_discriminator,
            loss_weights=(self.weight_real_fake, self.weight_energy, self.weight_angle, self.weight_total),
            label_flip=self.label_flip,
            seed=self.seed,
            max_steps_per_epoch=self.max_steps_per_epoch or None,
        )


def _validation_base(config_file: str) -> ValidationConfig:
    try:
        return ValidationConfig.from_yaml(config_file) if config_file else ValidationConfig()
    except (OSError, ValueError) as exc:
        raise dg.Failure(f"config_file: {exc}") from None


class ReferenceConfig(dg.Config):
    """The MC reference for validation: showers at the grid's conditions, never used in training.

    The grid and events per cell come from ``config_file`` (a validation YAML) or the defaults; the
    fields below override them where set. Twice ``events_per_cell`` are simulated per cell: half
    the reference, half the independent MC sample of the MC-vs-MC baseline.
    """

    config_file: str = Field(default="", description="Validation YAML (grid, events_per_cell); empty: defaults.")
    geometry: GeometryName = Field(
        default="small_ecal_15x15x12", description="Geometry preset of the model to validate."
    )
    particle: Literal["e-", "e+", "gamma"] = Field(default="e-", description="Incident particle.")
    seed: int = Field(
        default=1_000_000, ge=0, description="MC seed; far from the training runs' seeds, so the sample is independent."
    )
    events_per_cell: int | None = Field(default=None, ge=1, description="Events per grid cell (default 500).")
    energy_min_gev: float | None = Field(default=None, description="Low edge of the grid's energy range (GeV).")
    energy_max_gev: float | None = Field(default=None, description="High edge of the grid's energy range (GeV).")
    n_energies: int | None = Field(default=None, ge=1, description="Energy cells spread over the range (default 5).")
    angles_deg: list[float] | None = Field(default=None, description="Angle cell centres (default 62, 90, 118).")

    def validation_config(self) -> ValidationConfig:
        base = _validation_base(self.config_file)
        grid = dataclasses.asdict(base.grid)
        low, high = grid["energy_range_gev"]
        grid["energy_range_gev"] = (
            self.energy_min_gev if self.energy_min_gev is not None else low,
            self.energy_max_gev if self.energy_max_gev is not None else high,
        )
        if self.n_energies is not None:
            grid["n_energies"], grid["energies_gev"] = self.n_energies, None
        if self.angles_deg is not None:
            grid["angles_deg"] = tuple(self.angles_deg)
        events = self.events_per_cell if self.events_per_cell is not None else base.events_per_cell
        try:
            return dataclasses.replace(base, grid=GridSettings(**grid), events_per_cell=events)
        except ValueError as exc:
            raise dg.Failure(f"bad validation grid: {exc}") from None


class GeneratedShowersConfig(dg.Config):
    """Showers from a registered generator at the MC reference's conditions."""

    model_uri: str = Field(
        default="", description="Generator to validate (models:/name@alias or models:/name/N); empty: the challenger."
    )
    registered_model_name: str = Field(default="calotwin-3dgan", description="MLflow registered model name.")
    seed: int = Field(default=2_000_000, ge=0, description="Seed of the generator's noise and conditions.")

    def resolved_uri(self) -> str:
        return self.model_uri or f"models:/{self.registered_model_name}@challenger"


class ValidationReportConfig(dg.Config):
    """What the validation computes and how it judges; the grid is the MC reference's.

    ``config_file`` (a validation YAML) is the base; fields set here override it.
    """

    config_file: str = Field(default="", description="Validation YAML; empty: the built-in defaults.")
    observables: list[str] | None = Field(default=None, description="Observables to compare (default: all).")
    metrics: list[str] | None = Field(default=None, description="Metrics per observable and cell (default: all).")
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Threshold overrides on |value|: 'metric', 'observable.metric', 'fpd', 'kpd', 'classifier_auc'.",
    )
    bootstrap: int | None = Field(default=None, ge=1, description="Bootstrap replicas per metric (default 100).")
    min_coverage: float | None = Field(
        default=None, ge=0, le=1, description="Fraction of grid cells that must pass (default 1)."
    )
    score: str | None = Field(
        default=None,
        description="Score a promotion must beat the champion on: fpd (default), kpd, classifier_auc or coverage.",
    )
    classifier_epochs: int | None = Field(default=None, ge=1, description="Classifier training epochs (default 50).")

    @field_validator("score")
    @classmethod
    def _known_score(cls, value: str | None) -> str | None:
        if value is not None and value not in SCORES:
            raise ValueError(f"unknown score {value!r}; one of {sorted(SCORES)}")
        return value

    def validation_config(self, reference: ValidationConfig) -> ValidationConfig:
        """The settings: file (or defaults), then the reference's grid and events, then these fields."""
        base = _validation_base(self.config_file)
        changes: dict = {"grid": reference.grid, "events_per_cell": reference.events_per_cell}
        if self.observables is not None:
            changes["observables"] = tuple(self.observables)
        if self.metrics is not None:
            changes["metrics"] = tuple(self.metrics)
        if self.thresholds:
            changes["thresholds"] = {**base.thresholds, **self.thresholds}
        for name in ("bootstrap", "min_coverage", "score"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if self.classifier_epochs is not None:
            changes["classifier"] = dataclasses.replace(base.classifier, epochs=self.classifier_epochs)
        try:
            return dataclasses.replace(base, **changes)
        except (ValueError, KeyError) as exc:
            raise dg.Failure(f"bad validation settings: {exc}") from None


class ChampionConfig(dg.Config):
    """Promotion of the validated challenger to champion."""

    registered_model_name: str = Field(default="calotwin-3dgan", description="MLflow registered model name.")
    validation: str = Field(
        default="",
        description="The validation to judge: the 'validation' path in a validation_report materialization's "
        "metadata (the loop passes it); empty: the latest validation.",
    )


class SpeedBenchmarkConfig(dg.Config):
    """Generation speed of a registered generator against the MC, on this machine."""

    model_uri: str = Field(default="", description="Generator to time; empty: the challenger.")
    registered_model_name: str = Field(default="calotwin-3dgan", description="MLflow registered model name.")
    n_events: int = Field(default=512, ge=1, description="Showers per timing.")
    batch_size: int = Field(default=128, ge=1, description="Generator batch size.")
    energy_gev: float = _energy_field(100.0, "Primary energy of the timed showers (GeV).")
    theta_deg: float = _theta_field(90.0, "Polar angle of the timed showers (degrees).")

    def resolved_uri(self) -> str:
        return self.model_uri or f"models:/{self.registered_model_name}@challenger"


class ExportedGeneratorConfig(dg.Config):
    """Export of a registered generator as ONNX and TorchScript for an MC framework (e.g. Geant4 with ONNX Runtime)."""

    model_uri: str = Field(
        default="", description="Generator to export (models:/name@alias or models:/name/N); empty: the champion."
    )
    registered_model_name: str = Field(default="calotwin-3dgan", description="MLflow registered model name.")
    check_events: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Showers at random conditions on which ONNX Runtime is checked against PyTorch.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the check's noise and conditions.")

    def resolved_uri(self) -> str:
        return self.model_uri or f"models:/{self.registered_model_name}@champion"
