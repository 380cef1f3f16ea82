"""Settings of the self-driving loop (sensors and schedules), read once when the code location loads.

They come from a YAML file: ``$CALOTWIN_TWIN_CONFIG``, else ``$CALOTWIN_HOME/twin.yaml`` when it
exists, else the embedded defaults below (CPU-sized, small preset). Each section takes the same
fields as the launchpad config of the asset it drives, so a value that the launchpad would refuse
is refused here too, with the file, the section and the field named::

    landing:
      min_interval_seconds: 30      # how often the landing sensor looks
      particle: e-                  # recorded for files that do not say
    retrain:
      family: flow                  # flow (default) or 3dgan: which training asset the loop runs
      flow_model: {epochs: 2, max_steps_per_epoch: 300, lr: 0.0003}
    full_retrain:
      cron: "0 3 * * 0"             # weekly, Sunday 03:00
      family: flow
      flow_model: {epochs: 12, max_steps_per_epoch: 800}
    validation:
      mc_reference: {events_per_cell: 500}
      validation_report: {bootstrap: 100}
    revalidation:
      cron: "0 2 * * *"             # nightly re-validation of the champion

``warm_start`` (retraining starts from the champion when it is of the retrained family, else from
scratch; the weekly full retraining always from scratch) and the model URIs the validation judges are
set by the loop itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..home import calotwin_home
from ..landing import LandingChecks
from ..simulation import ENERGY_RANGE_GEV, THETA_RANGE_DEG
from .configs import (
    ChampionConfig,
    FlowModelConfig,
    GanModelConfig,
    GeneratedShowersConfig,
    ReferenceConfig,
    TrainingConfig,
    ValidationReportConfig,
    _known_geometry,
)

Family = Literal["3dgan", "flow"]
#: the asset (and launchpad section) that trains each family
TRAINING_ASSET = {"3dgan": "gan_model", "flow": "flow_model"}

TWIN_CONFIG_ENV = "CALOTWIN_TWIN_CONFIG"
#: the loop's sensors start RUNNING when this is "on" (``make ui`` and ``make twin`` set it), else STOPPED
LOOP_ENV = "CALOTWIN_LOOP"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _cron(value: str) -> str:
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(value):
        raise ValueError(f"not a cron expression: {value!r}")
    return value


class LandingSettings(_Section):
    """The landing sensor: where it looks, how often, and what it accepts."""

    url: str = Field(default="", description="Landing folder or object-store prefix; empty: <storage>/landing.")
    min_interval_seconds: int = Field(default=30, ge=1, description="Seconds between two looks at the landing area.")
    batch_size: int = Field(default=100, ge=1, description="Most files one land_files run checks.")
    attempts: int = Field(
        default=3, ge=1, description="land_files runs a file may take; one still in the landing area after them waits."
    )
    energy_range_gev: tuple[float, float] = Field(default=ENERGY_RANGE_GEV, description="Accepted primary energies.")
    theta_range_deg: tuple[float, float] = Field(default=THETA_RANGE_DEG, description="Accepted incidence angles.")
    particle: Literal["e-", "gamma"] = Field(default="e-", description="Particle recorded for files that do not say.")
    geometry: str | None = Field(default=None, description="Geometry preset; empty: the one matching the grid.")
    max_empty_fraction: float = Field(
        default=0.01, ge=0, le=1, description="Largest fraction of showers without visible energy a file may hold."
    )
    response_window: tuple[float, float] = Field(
        default=(0.1, 10.0), description="Mean E_sum/E_p window, in multiples of the geometry's sampling fraction."
    )
    reader_memory_mb: int = Field(default=4096, ge=64, description="Memory limit of each file's reader process.")
    reader_timeout_s: float = Field(default=600.0, gt=0, description="Time limit of each file's reader process.")

    _check_geometry = field_validator("geometry")(_known_geometry)

    @model_validator(mode="after")
    def _checks_valid(self) -> LandingSettings:
        """The energy and angle ranges are in order, and the energies positive."""
        self.checks()
        return self

    def checks(self) -> LandingChecks:
        """What the landing area accepts."""
        return LandingChecks(
            energy_range_gev=self.energy_range_gev,
            theta_range_deg=self.theta_range_deg,
            particle=self.particle,
            geometry=self.geometry,
            max_empty_fraction=self.max_empty_fraction,
            response_window=self.response_window,
            reader_memory_mb=self.reader_memory_mb,
            reader_timeout_s=self.reader_timeout_s,
        )


class _Training(_Section):
    """Which family a training of the loop trains, with each family's settings."""

    family: Family = Field(
        default="flow", description="Generator family the loop trains: flow (flow_model) or 3dgan (gan_model)."
    )
    gan_model: GanModelConfig = Field(
        default_factory=lambda: GanModelConfig(epochs=4, max_steps_per_epoch=20, batch_size=32),
        description="3DGAN training settings (gan_model's launchpad fields; warm_start is set by the loop).",
    )
    flow_model: FlowModelConfig = Field(
        default_factory=lambda: FlowModelConfig(epochs=2, max_steps_per_epoch=300, lr=3e-4),
        description="Flow training settings (flow_model's launchpad fields; warm_start is set by the loop).",
    )

    def model(self) -> TrainingConfig:
        """The settings of the family trained."""
        return self.flow_model if self.family == "flow" else self.gan_model


class RetrainSettings(_Training):
    """Retraining on new data, warm-started from the champion (when it is of the same family)."""

    min_interval_seconds: int = Field(default=30, ge=1, description="Seconds between two looks for new data.")


class FullRetrainSettings(_Training):
    """The scheduled full retraining, from scratch on all data (stopped until a user turns it on)."""

    cron: str = Field(default="0 3 * * 0", description="When (cron, UTC): default Sundays 03:00.")
    gan_model: GanModelConfig = Field(
        default_factory=lambda: GanModelConfig(epochs=20, max_steps_per_epoch=20, batch_size=32),
        description="3DGAN training settings of the full retraining.",
    )
    flow_model: FlowModelConfig = Field(
        default_factory=lambda: FlowModelConfig(epochs=12, max_steps_per_epoch=800),
        description="Flow training settings of the full retraining.",
    )

    _check_cron = field_validator("cron")(_cron)


class ValidationSettings(_Section):
    """How every model the loop trains is validated (the same settings judge the champion)."""

    mc_reference: ReferenceConfig = Field(default_factory=ReferenceConfig, description="The MC reference.")
    generated_showers: GeneratedShowersConfig = Field(
        default_factory=GeneratedShowersConfig, description="Generation (model_uri is set by the loop)."
    )
    validation_report: ValidationReportConfig = Field(
        default_factory=ValidationReportConfig, description="Metrics, thresholds and score."
    )


class RevalidationSettings(_Section):
    """The scheduled re-validation of the champion (stopped until a user turns it on)."""

    cron: str = Field(default="0 2 * * *", description="When (cron, UTC): default every night at 02:00.")

    _check_cron = field_validator("cron")(_cron)


class TwinSettings(_Section):
    """All of the loop's settings."""

    landing: LandingSettings = Field(default_factory=LandingSettings, description="The landing sensor.")
    retrain: RetrainSettings = Field(default_factory=RetrainSettings, description="Retraining on new data.")
    full_retrain: FullRetrainSettings = Field(
        default_factory=FullRetrainSettings, description="The weekly full retraining (a schedule)."
    )
    validation: ValidationSettings = Field(
        default_factory=ValidationSettings, description="Validation of every model the loop trains."
    )
    revalidation: RevalidationSettings = Field(
        default_factory=RevalidationSettings, description="The nightly re-validation of the champion (a schedule)."
    )

    @model_validator(mode="after")
    def _one_model(self) -> TwinSettings:
        """`retrain` and `full_retrain` train the same geometry and registered model."""
        models = (self.retrain.model(), self.full_retrain.model())
        trained = {m.geometry for m in models}
        names = {m.registered_model_name for m in models}
        if len(trained) > 1 or len(names) > 1:
            raise ValueError("retrain and full_retrain must train the same geometry and registered model")
        return self

    @property
    def geometry(self) -> str:
        """The geometry the loop trains and validates."""
        return self.retrain.model().geometry

    @property
    def model_name(self) -> str:
        return self.retrain.model().registered_model_name

    def training_run_config(
        self,
        warm_start: str,
        full: bool = False,
        seed: int | None = None,
        architecture: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run config of the family's training job (``train_flow`` or ``train_gan``): the retraining (warm
        start) or the full retraining (from scratch). ``architecture``: settings that fix the warm start's network
        (as its training logged them, strings allowed), which the retraining takes over its own (the same network)."""
        section = self.full_retrain if full else self.retrain
        settings = section.model()
        if architecture:
            settings = type(settings).model_validate({**settings.model_dump(), **architecture})
        model = settings.model_dump()
        model["warm_start"] = "" if full else warm_start
        if seed is not None:
            model["seed"] = seed
        return {"ops": {TRAINING_ASSET[section.family]: {"config": model}}}

    def validation_run_config(self, model_uri: str) -> dict[str, Any]:
        """Run config of ``validate_model`` for one registered version, on the loop's geometry."""
        v = self.validation
        reference = {**v.mc_reference.model_dump(), "geometry": self.geometry}
        generated = {**v.generated_showers.model_dump(), "model_uri": model_uri}
        return {
            "ops": {
                "mc_reference": {"config": reference},
                "generated_showers": {"config": generated},
                "validation_report": {"config": v.validation_report.model_dump()},
            }
        }

    def promotion_run_config(self, validation_run_id: str) -> dict[str, Any]:
        """Run config of ``promote_champion`` judging one validation: the run that materialized its report."""
        config = ChampionConfig(registered_model_name=self.model_name, validation=validation_run_id)
        return {"ops": {"champion_model": {"config": config.model_dump()}}}


def settings_path() -> Path | None:
    """The YAML the settings come from, or None for the embedded defaults."""
    if os.environ.get(TWIN_CONFIG_ENV):
        return Path(os.environ[TWIN_CONFIG_ENV]).expanduser()
    default = calotwin_home() / "twin.yaml"
    return default if default.exists() else None


def load_settings(path: Path | None = None) -> TwinSettings:
    """Read and check the settings; a bad file or value raises ValueError naming the file and field."""
    path = path if path is not None else settings_path()
    if path is None:
        return TwinSettings()
    try:
        payload = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ValueError(f"twin settings {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"twin settings {path}: not valid YAML ({exc})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"twin settings {path}: expected a mapping of sections, got {type(payload).__name__}")
    try:
        return TwinSettings.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise ValueError(f"twin settings {path}: {problems}") from None


def loop_running_by_default() -> bool:
    return os.environ.get(LOOP_ENV, "").lower() in ("1", "on", "true", "yes")
