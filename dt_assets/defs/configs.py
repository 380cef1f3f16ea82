"""Launchpad configuration of the data assets: typed, with a default and a description per field."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import dagster as dg
from pydantic import Field, field_validator, model_validator

from ..fsio import sha256_json
from ..model.flow_training import FlowTrainConfig
from ..model.registry import DEFAULT_MODEL_NAME
from ..model.train import TrainConfig
from ..physics.geometry import DEFAULT_GEOMETRY, GEOMETRIES
from ..runs import SimulationSpec
from ..simulation import ENERGY_RANGE_GEV, THETA_RANGE_DEG
from ..tuning.search_space import SearchSpace, family_parameters
from ..validation.config import SCORES, GridSettings, ValidationConfig

#: a geometry preset's name: an enum in the launchpad (a dropdown, and an unknown name is refused before launch)
GeometryName = Literal[tuple(sorted(GEOMETRIES))]  # type: ignore[valid-type]
#: a validation score's name, as an enum
ScoreName = Literal[tuple(SCORES)]  # type: ignore[valid-type]


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


class TrainingConfig(dg.Config):
    """What every generator training asset shares: data, length, seed, warm start and registry."""

    geometry: GeometryName = Field(
        default="small_ecal_15x15x12", description="Geometry preset; trains on its runs only."
    )
    particle: Literal["e-", "gamma", "all"] = Field(
        default="e-",
        description="Incident particle to train on (one model per particle, as validation judges one); 'all': "
        "every event, the particle not given to the model.",
    )
    epochs: int = Field(default=4, ge=1, description="Epochs (passes over the training split).")
    max_steps_per_epoch: int = Field(default=0, ge=0, description="Cap on steps per epoch; 0 means a full pass.")
    seed: int = Field(default=0, ge=0, description="Random seed (weights, noise, data order).")
    warm_start: str = Field(
        default="",
        description="Start from this model of the same family: models:/name@alias, models:/name/N or a checkpoint "
        "path.",
    )
    registered_model_name: str = Field(default=DEFAULT_MODEL_NAME, description="MLflow registered model name.")

    family: ClassVar[str]

    def checksum(self) -> str:
        """A short SHA-256 of every setting (the training asset's ``config_checksum`` metadata)."""
        return sha256_json(self.model_dump(), 16)

    def training_particle(self) -> str | None:
        return None if self.particle == "all" else self.particle

    def with_hyperparameters(self, params: dict[str, Any]) -> TrainingConfig:
        """This config with tuned ``params`` (names of its fields) in place; a bad value names the field."""
        known = family_parameters(self.family)
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"tuned parameters: unknown {self.family} parameter(s) {unknown}; known: {list(known)}")
        return type(self)(**{**self.model_dump(), **params})


class GanModelConfig(TrainingConfig):
    """Training of the 3DGAN. Defaults suit a CPU and the small preset; the reference trains the
    51x51x25 model with learning rates 1e-3 on GPUs."""

    batch_size: int = Field(default=32, ge=2, description="Events per batch (per process under DDP).")
    lr_generator: float = Field(default=3e-4, gt=0, description="RMSprop learning rate of the generator.")
    lr_discriminator: float = Field(default=3e-4, gt=0, description="RMSprop learning rate of the discriminator.")
    weight_real_fake: float = Field(default=3.0, ge=0, description="Loss weight of the real/fake BCE term.")
    weight_energy: float = Field(default=0.1, ge=0, description="Loss weight of the energy-regression MAPE.")
    weight_angle: float = Field(default=25.0, ge=0, description="Loss weight of the angle L1 term.")
    weight_total: float = Field(default=0.1, ge=0, description="Loss weight of the energy-sum MAPE.")
    weight_count: float = Field(
        default=0.0,
        ge=0,
        description="Loss weight of the cell-energy histogram (the reference's fifth loss, 0.1 there; off by "
        "default: it drove the visible energy down on the small preset).",
    )
    optimizer: Literal["rmsprop", "adam"] = Field(
        default="rmsprop", description="Optimiser: Keras' RMSprop (the reference's, rho 0.9) or Adam."
    )
    ema_decay: float = Field(
        default=0.999, ge=0, lt=1, description="Decay of the generator weights' moving average (EMA), which is saved."
    )
    label_flip: float = Field(default=0.05, ge=0, lt=0.5, description="Probability of flipping a real/fake label.")
    latent_size: int = Field(
        default=0, ge=0, description="Generator input size (2 conditions + noise); 0: the architecture's (256)."
    )

    family: ClassVar[str] = "3dgan"

    @field_validator("latent_size")
    @classmethod
    def _latent_size(cls, value: int) -> int:
        if 0 < value < 3:
            raise ValueError(f"latent_size must be 0 (the architecture's) or >= 3 (2 conditions + noise), got {value}")
        return value

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr_generator=self.lr_generator,
            lr_discriminator=self.lr_discriminator,
            loss_weights=(self.weight_real_fake, self.weight_energy, self.weight_angle, self.weight_total),
            weight_count=self.weight_count,
            optimizer=self.optimizer,
            ema_decay=self.ema_decay,
            label_flip=self.label_flip,
            seed=self.seed,
            max_steps_per_epoch=self.max_steps_per_epoch or None,
            latent_size=self.latent_size or None,
        )


class FlowModelConfig(TrainingConfig):
    """Training of the two-stage conditional flow-matching generator (energies and occupancy, then cell
    shapes). Defaults suit 2 CPU cores and the small preset."""

    batch_size: int = Field(default=256, ge=2, description="Events per batch (per process under DDP).")
    lr: float = Field(default=FlowTrainConfig.lr, gt=0, description="Peak AdamW learning rate (cosine decay).")
    warmup_steps: int = Field(default=FlowTrainConfig.warmup_steps, ge=0, description="Linear warm-up steps.")
    ema_decay: float = Field(
        default=FlowTrainConfig.ema_decay, ge=0, lt=1, description="Decay of the weights' moving average (EMA)."
    )
    stage1_hidden: int = Field(
        default=FlowTrainConfig.stage1_hidden, ge=1, description="Width of the energy/occupancy flow's MLP."
    )
    stage2_hidden: int = Field(
        default=FlowTrainConfig.stage2_hidden, ge=1, description="Width of the shape flow's MLP."
    )
    stage2_blocks: int = Field(
        default=FlowTrainConfig.stage2_blocks, ge=1, description="Residual blocks of the shape flow's MLP."
    )
    stage2_steps: int = Field(
        default=FlowTrainConfig.stage2_steps, ge=1, description="Midpoint steps of the shape flow's ODE at sampling."
    )
    layer_skewness: bool = Field(
        default=FlowTrainConfig.layer_skewness,
        description="Stage 1 also learns each layer's transverse third moment and the assembly's moment tilt gives "
        "it (a cubic term); its assembly takes about 4.5x as long (docs: The generators).",
    )

    family: ClassVar[str] = "flow"

    def train_config(self) -> FlowTrainConfig:
        return FlowTrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            ema_decay=self.ema_decay,
            seed=self.seed,
            max_steps_per_epoch=self.max_steps_per_epoch or None,
            stage1_hidden=self.stage1_hidden,
            stage2_hidden=self.stage2_hidden,
            stage2_blocks=self.stage2_blocks,
            stage2_steps=self.stage2_steps,
            layer_skewness=self.layer_skewness,
        )


class TunedModelConfig(dg.Config):
    """Training with an hpo_study's best parameters: of the family and on the geometry the study tuned, with that
    family's settings below; the tuned parameters replace the fields they name."""

    study: str = Field(
        default="",
        description="Run ID of the hpo_study materialization whose best parameters to train with; empty: this "
        "run's hpo_study, else the latest.",
    )
    gan_model: GanModelConfig = Field(
        default_factory=GanModelConfig, description="Settings when the study tuned the 3dgan family (gan_model's)."
    )
    flow_model: FlowModelConfig = Field(
        default_factory=FlowModelConfig, description="Settings when the study tuned the flow family (flow_model's)."
    )

    def training_config(self, family: str, geometry: str, params: dict[str, Any]) -> TrainingConfig:
        """The settings of the tuned ``family`` with ``params`` in place; a ValueError names a family or geometry
        that does not match, or a bad parameter."""
        sections = {"3dgan": "gan_model", "flow": "flow_model"}
        if family not in sections:
            raise ValueError(f"the study tuned an unknown family {family!r}; known: {sorted(sections)}")
        section = sections[family]
        base: TrainingConfig = getattr(self, section)
        if base.geometry != geometry:
            raise ValueError(
                f"the study tuned geometry {geometry!r}, {section}.geometry is {base.geometry!r}: set it to the "
                "study's, or tune this geometry"
            )
        return base.with_hyperparameters(params)


class HpoSearchSpaceConfig(dg.Config):
    """What the study tunes: a range [low, high] per float (learning rates and loss weights on a log
    scale, the label-flip rate linear) and a list of choices per integer. An empty list leaves the
    parameter out: its trials keep gan_model's default."""

    lr_generator: list[float] = Field(default=[1e-5, 3e-3], description="Generator learning rate range (log scale).")
    lr_discriminator: list[float] = Field(
        default=[1e-5, 3e-3], description="Discriminator learning rate range (log scale)."
    )
    weight_real_fake: list[float] = Field(
        default=[0.5, 10.0], description="Range of the real/fake BCE loss weight (log scale)."
    )
    weight_energy: list[float] = Field(
        default=[0.01, 1.0], description="Range of the energy-regression loss weight (log scale)."
    )
    weight_angle: list[float] = Field(default=[1.0, 100.0], description="Range of the angle loss weight (log scale).")
    weight_total: list[float] = Field(
        default=[0.01, 1.0], description="Range of the energy-sum loss weight (log scale)."
    )
    batch_size: list[int] | None = Field(
        default=None,
        description="Batch sizes to choose from; empty: the family's (3dgan 16, 32, 64; flow 128, 256, 512).",
    )
    latent_size: list[int] = Field(
        default=[64, 128, 256], description="Generator input sizes (2 conditions + noise) to try."
    )
    label_flip: list[float] = Field(
        default=[0.0, 0.1], description="Range of the label-flip probability (linear, below 0.5)."
    )
    lr: list[float] = Field(default=[1e-4, 3e-3], description="Flow: peak learning rate range (log scale).")
    ema_decay: list[float] = Field(default=[0.99, 0.9995], description="Flow: EMA decay range (linear, below 1).")
    stage2_hidden: list[int] = Field(default=[512, 1024], description="Flow: shape-flow widths to try.")

    @model_validator(mode="after")
    def _valid_space(self) -> HpoSearchSpaceConfig:
        """Each range is [low, high] with low < high (positive on a log scale); choices are distinct integers."""
        self.search_space()
        return self

    def search_space(self, family: str = "3dgan") -> SearchSpace:
        values = self.model_dump()
        if values["batch_size"] is None:
            values["batch_size"] = [128, 256, 512] if family == "flow" else [16, 32, 64]
        return SearchSpace.from_dict({**values, "family": family})


class HpoStudyConfig(dg.Config):
    """An Optuna study over one family's hyper-parameters (gan_model's or flow_model's), judged by the physics
    validation's score on a small MC reference after every epoch (bad trials are pruned on it). Defaults suit a
    CPU and the small preset; parameters left out of the search space keep the training asset's defaults."""

    geometry: GeometryName = Field(
        default="small_ecal_15x15x12", description="Geometry preset; trials train on its runs only."
    )
    family: Literal["3dgan", "flow"] = Field(
        default="3dgan", description="Generator family to tune: 3dgan (gan_model's fields) or flow (flow_model's)."
    )
    particle: Literal["e-", "gamma", "all"] = Field(
        default="e-",
        description="Particle the trials train on and are scored with ('all': train on every event, score with e-).",
    )
    study_name: str = Field(
        default="calotwin-hpo",
        min_length=1,
        description="Optuna study name; running again with the same name and storage continues the study.",
    )
    storage_url: str = Field(
        default="",
        description="Optuna RDB URL shared by the workers (e.g. postgresql://user@host/db); empty: "
        "sqlite:///$CALOTWIN_HOME/hpo/optuna.db.",
    )
    n_trials: int = Field(default=8, ge=1, description="Trials in the study in all (earlier runs' trials count).")
    n_workers: int = Field(
        default=2, ge=1, description="Workers that share the study (processes, or Slurm array tasks)."
    )
    epochs: int = Field(default=3, ge=1, description="Epochs per trial; the score is reported after each.")
    max_steps_per_epoch: int = Field(default=20, ge=1, description="Steps per epoch of a trial.")
    seed: int = Field(default=0, ge=0, description="Seed of the samplers and of every trial's training.")
    search_space: HpoSearchSpaceConfig = Field(
        default_factory=HpoSearchSpaceConfig, description="Ranges and choices of the tuned hyper-parameters."
    )
    score: ScoreName = Field(
        default="fpd", description="Validation score to optimise: fpd, kpd and classifier_auc fall, coverage rises."
    )
    validation_file: str = Field(
        default="", description="Validation YAML the scoring starts from (observables, thresholds); empty: defaults."
    )
    energies_gev: list[float] = Field(
        default=[20.0, 50.0, 80.0], description="Energy cell centres (GeV) of the scoring grid."
    )
    angles_deg: list[float] = Field(default=[90.0], description="Angle cell centres (degrees) of the scoring grid.")
    events_per_cell: int = Field(default=200, ge=10, description="MC and generated events per grid cell.")
    bootstrap: int = Field(default=10, ge=1, description="Bootstrap replicas of the scoring's validation.")
    classifier_epochs: int = Field(default=10, ge=1, description="Epochs of the scoring's classifier.")
    pruner_startup_trials: int = Field(
        default=2, ge=0, description="Trials that finish before the median pruner stops any."
    )
    pruner_warmup_epochs: int = Field(default=0, ge=0, description="Epochs of a trial before it may be pruned.")
    launcher: Literal["compute", "processes"] = Field(
        default="compute",
        description="Where the workers run. compute: as the compute resource says (processes on this machine for "
        "local and torchrun, one Slurm array job for slurm); processes: on this machine whatever the compute.",
    )
    heartbeat_interval_s: int = Field(
        default=30, ge=1, description="Seconds between a running trial's heartbeats in the study storage."
    )
    grace_period_s: int = Field(
        default=120,
        ge=2,
        description="Seconds without a heartbeat after which a running trial's worker counts as lost: the trial "
        "fails and its parameters are run again.",
    )
    max_retries: int = Field(
        default=1, ge=0, description="Times one trial's parameters are run again after lost workers."
    )
    keep_trial_checkpoints: bool = Field(
        default=False, description="Keep every trial's checkpoints; default: only the best trial's are kept."
    )

    @model_validator(mode="after")
    def _grace_above_heartbeat(self) -> HpoStudyConfig:
        """The grace period must be longer than the heartbeat interval."""
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"grace_period_s={self.grace_period_s} must be above heartbeat_interval_s={self.heartbeat_interval_s}"
            )
        return self

    def validation_config(self) -> ValidationConfig:
        """The scoring's validation: the file (or defaults) with this grid, events and light statistics."""
        base = _validation_base(self.validation_file)
        try:
            grid = GridSettings(
                energy_range_gev=base.grid.energy_range_gev,
                energies_gev=tuple(self.energies_gev),
                angles_deg=tuple(self.angles_deg),
                energy_half_width_gev=base.grid.energy_half_width_gev,
                angle_half_width_rad=base.grid.angle_half_width_rad,
            )
            return dataclasses.replace(
                base,
                grid=grid,
                events_per_cell=self.events_per_cell,
                min_events_per_cell=min(base.min_events_per_cell, self.events_per_cell),
                bootstrap=self.bootstrap,
                classifier=dataclasses.replace(base.classifier, epochs=self.classifier_epochs),
                score=self.score,
            )
        except ValueError as exc:
            raise dg.Failure(f"bad scoring grid: {exc}") from None

    def scoring_particle(self) -> str:
        return "e-" if self.particle == "all" else self.particle

    def base_train_config(self) -> TrainConfig | FlowTrainConfig:
        """What a trial trains with before its tuned values go in (the family's training asset's defaults)."""
        kind = FlowModelConfig if self.family == "flow" else GanModelConfig
        model = kind(geometry=self.geometry, epochs=self.epochs, seed=self.seed)
        return dataclasses.replace(
            model.train_config(), max_steps_per_epoch=self.max_steps_per_epoch, validation_batches=2
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
    registered_model_name: str = Field(default=DEFAULT_MODEL_NAME, description="MLflow registered model name.")
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
    thresholds: dict[str, float | None] = Field(
        default_factory=dict,
        description="Threshold overrides on |value|: 'metric', 'observable.metric', 'fpd', 'kpd', 'classifier_auc'; "
        "null: no check (a gate without a threshold is skipped).",
    )
    bootstrap: int | None = Field(default=None, ge=1, description="Bootstrap replicas per metric (default 100).")
    min_coverage: float | None = Field(
        default=None, ge=0, le=1, description="Fraction of grid cells that must pass (default 0.9)."
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

    registered_model_name: str = Field(default=DEFAULT_MODEL_NAME, description="MLflow registered model name.")
    validation: str = Field(
        default="",
        description="The validation to judge: the Run ID of the run that materialized its validation_report (the "
        "loop passes it); empty: this run's validation_report, else the latest.",
    )


class SpeedBenchmarkConfig(dg.Config):
    """Generation speed of a registered generator against the MC, on this machine."""

    model_uri: str = Field(default="", description="Generator to time; empty: the challenger.")
    registered_model_name: str = Field(default=DEFAULT_MODEL_NAME, description="MLflow registered model name.")
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
    registered_model_name: str = Field(default=DEFAULT_MODEL_NAME, description="MLflow registered model name.")
    check_events: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Showers at random conditions on which ONNX Runtime is checked against PyTorch.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the check's noise and conditions.")

    def resolved_uri(self) -> str:
        return self.model_uri or f"models:/{self.registered_model_name}@champion"
