"""The job of a hyper-parameter optimisation: everything a worker needs, as JSON (:class:`HpoJob`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..model.flow_training import FlowTrainConfig
from ..model.step import TrainConfig
from ..physics.geometry import get_geometry
from ..validation.config import SCORES, ValidationConfig
from .search_space import SearchSpace


@dataclass(frozen=True)
class HpoJob:
    """Everything a worker needs, as JSON: the study, the data, the base training, the search space,
    the validation (settings and MC reference) and where trials write checkpoints and MLflow runs."""

    study_name: str
    storage_url: str
    data: list[str]
    geometry: str
    reference_url: str
    trials_url: str  # folder (path or fsspec URL) of the trials' checkpoints: <trials_url>/trial-0003/
    train: dict[str, Any] = field(default_factory=dict)  # the family's base config (epochs, steps, seed, ...)
    search_space: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)  # a ValidationConfig (grid, events_per_cell, score)
    particle: str = "e-"
    storage_options: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""  # MLflow; empty: no MLflow runs
    experiment_id: str = ""
    parent_run_id: str = ""
    seed: int = 0
    pruner_startup_trials: int = 2
    pruner_warmup_epochs: int = 0
    device: str | None = None
    heartbeat_interval_s: int = 30  # a running trial's worker writes a heartbeat this often
    grace_period_s: int = 120  # a RUNNING trial without a heartbeat this long is lost: FAIL, run again
    max_retries: int = 1  # how often one trial's parameters are run again after lost workers
    family: str = "3dgan"  # the generator family the study tunes
    training_particle: str | None = None  # the particle trials train on (None: every event)

    def __post_init__(self) -> None:
        if not self.study_name:
            raise ValueError("hpo job: study_name is empty")
        if not self.data:
            raise ValueError("hpo job: data names no preprocessed store")
        get_geometry(self.geometry)
        self.train_config()
        self.space()
        self.validation_config()
        if self.pruner_startup_trials < 0 or self.pruner_warmup_epochs < 0:
            raise ValueError("hpo job: pruner_startup_trials and pruner_warmup_epochs must be >= 0")
        if self.heartbeat_interval_s < 1 or self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"hpo job: need heartbeat_interval_s >= 1 and grace_period_s above it, got "
                f"{self.heartbeat_interval_s} and {self.grace_period_s}"
            )
        if self.max_retries < 0:
            raise ValueError(f"hpo job: max_retries must be >= 0, got {self.max_retries}")

    def train_config(self) -> TrainConfig | FlowTrainConfig:
        config = dict(self.train)
        if self.family == "flow":
            return FlowTrainConfig(**config)
        if "loss_weights" in config:
            config["loss_weights"] = tuple(config["loss_weights"])
        return TrainConfig(**config)

    def space(self) -> SearchSpace:
        space = SearchSpace.from_dict(self.search_space)
        if space.family != self.family:
            raise ValueError(f"hpo job: the search space is for {space.family}, the study tunes {self.family}")
        return space

    def validation_config(self) -> ValidationConfig:
        return ValidationConfig.from_dict(self.validation)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """``minimize`` for FPD, KPD and the classifier AUC; ``maximize`` for coverage."""
        return "minimize" if SCORES[self.validation_config().score] else "maximize"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> HpoJob:
        payload = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ValueError(f"hpo job: unknown key(s) {unknown}")
        return cls(**payload)
