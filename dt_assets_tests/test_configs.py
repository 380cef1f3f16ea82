"""Launchpad forms: every field described and defaulted, bad values refused with the field named,
and the docs' configuration reference generated from the same classes."""

from __future__ import annotations

import dagster as dg
import pytest
from pydantic import BaseModel, ValidationError

from conftest import REPO
from dt_assets import config_reference
from dt_assets.config_reference import asset_configs, nested_models
from dt_assets.definitions import defs
from dt_assets.defs.configs import (
    GanModelConfig,
    PreprocessConfig,
    ReferenceConfig,
    SpeedBenchmarkConfig,
    ValidationReportConfig,
)
from dt_assets.defs.data import simulation_runs
from dt_assets.defs.twin_settings import TwinSettings
from resources import LocalStorage
from resources.compute import COMPUTES

#: fields that have no sensible default: the user must say which file, which image
REQUIRED = {("ImportFileConfig", "path"), ("KubernetesCompute", "image")}


def every_settings_model() -> list[type[BaseModel]]:
    roots: list[type[BaseModel]] = [*asset_configs(defs).values(), TwinSettings, *COMPUTES.values()]
    models = []
    for root in roots:
        for model in (root, *nested_models(root)):
            if model not in models:
                models.append(model)
    return models


def test_the_assets_with_a_launchpad_form_are_found_in_the_definitions():
    assert list(asset_configs(defs)) == [
        "simulation_runs",
        "preprocessed_showers",
        "hpo_study",
        "gan_model",
        "flow_model",
        "tuned_model",
        "mc_reference",
        "generated_showers",
        "validation_report",
        "champion_model",
        "speed_benchmark",
        "exported_generator",
    ]


def test_every_field_has_a_description_and_a_default():
    models = every_settings_model()
    assert len(models) > 15
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description and len(info.description) > 8, f"{model.__name__}.{name}: no description"
            if (model.__name__, name) not in REQUIRED:
                assert not info.is_required(), f"{model.__name__}.{name}: no default"


def test_the_launchpad_shows_the_descriptions_and_defaults():
    """What Dagster's config schema (the launchpad's form) carries, not only the pydantic class."""
    for asset, config in asset_configs(defs).items():
        fields = defs.get_assets_def(asset).op.config_schema.as_field().config_type.fields
        assert set(fields) == set(config.model_fields), asset
        for name, field in fields.items():
            assert field.description == config.model_fields[name].description, f"{asset}.{name}"
            assert field.default_provided or not field.is_required, f"{asset}.{name}"


def test_geometry_is_a_choice_in_the_launchpad():
    fields = defs.get_assets_def("gan_model").op.config_schema.as_field().config_type.fields
    enum = fields["geometry"].config_type
    assert {value.config_value for value in enum.enum_values} == {
        "clic_ecal_51x51x25",
        "clic_ecal_25x25x25",
        "small_ecal_15x15x12",
    }


def materialize_runs(instance, simulation: dict) -> dg.ExecuteInProcessResult:
    config = {"simulations": [{"n_events": 10, "geometry": "small_ecal_15x15x12", **simulation}]}
    return dg.materialize(
        [simulation_runs],
        run_config={"ops": {"simulation_runs": {"config": config}}},
        instance=instance,
        resources={"storage": LocalStorage()},
        raise_on_error=False,
    )


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"n_events": -5}, ["simulations.0.n_events", "greater than or equal to 1"]),
        (
            {"energy_min_gev": 200.0, "energy_max_gev": 100.0},
            ["energy range reversed: energy_min_gev=200.0 > energy_max_gev=100.0"],
        ),
        (
            {"theta_min_deg": 110.0, "theta_max_deg": 70.0},
            ["angle range reversed: theta_min_deg=110.0 > theta_max_deg=70.0"],
        ),
        ({"energy_max_gev": 5000.0}, ["simulations.0.energy_max_gev", "less than or equal to 500"]),
    ],
)
def test_a_bad_value_fails_the_run_at_its_start_naming_the_field(home, instance, bad, named):
    result = materialize_runs(instance, bad)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = str(failure.event_specific_data.error.cause or failure.event_specific_data.error)
    for text in named:
        assert text in message, message
    assert not (home / "data" / "runs").exists()  # nothing registered


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"geometry": "atlas"}, "simulations[0]:geometry not in enum type"),
        ({"n_events": "many"}, "simulations[0]:n_events"),
        ({"energy": 10}, 'unexpected config entry "energy"'),
    ],
)
def test_the_launchpad_refuses_a_bad_choice_or_type_before_launch(home, instance, bad, named):
    with pytest.raises(dg.DagsterInvalidConfigError, match="simulation_runs") as err:
        materialize_runs(instance, bad)
    assert named in str(err.value)
    assert not instance.get_runs()  # no run was started


@pytest.mark.parametrize(
    ("config", "values", "named"),
    [
        (PreprocessConfig, {"train_fraction": 0.8, "validation_fraction": 0.3}, "exceeds 1"),
        (PreprocessConfig, {"power": 0}, "power"),
        (GanModelConfig, {"epochs": 0}, "epochs"),
        (GanModelConfig, {"batch_size": 1}, "batch_size"),
        (GanModelConfig, {"label_flip": 0.5}, "label_flip"),
        (ReferenceConfig, {"events_per_cell": 0}, "events_per_cell"),
        (ReferenceConfig, {"geometry": "atlas"}, "geometry"),
        (ValidationReportConfig, {"score": "auc"}, "unknown score 'auc'"),
        (ValidationReportConfig, {"min_coverage": 1.5}, "min_coverage"),
        (SpeedBenchmarkConfig, {"energy_gev": 1000.0}, "energy_gev"),
    ],
)
def test_each_form_names_a_bad_field(config, values, named):
    with pytest.raises(ValidationError, match=named):
        config(**values)


def test_the_docs_configuration_reference_is_generated_from_the_classes():
    page = REPO / "docs" / "reference" / "configuration.md"
    assert config_reference.main([str(page), "--check"]) == 0, "run `make docs`"


def test_the_reference_lists_every_field_with_its_bounds():
    text = config_reference.render(defs)
    for model in every_settings_model():
        for name in model.model_fields:
            row, heading = f"| `{name}` |", f"#### `{name}`"  # the loop's sections are headings
            assert row in text or (model is TwinSettings and heading in text), f"{model.__name__}.{name}"
    assert "| `n_events` | int | `1000` | ≥ 1 | Number of showers to simulate. |" in text
    assert "`clic_ecal_25x25x25`, `clic_ecal_51x51x25`, `small_ecal_15x15x12`" in text
    assert "Also checked: `energy_min_gev` ≤ `energy_max_gev`" in text
    assert "| `image` | str | required |" in text


def test_a_stale_reference_is_detected(tmp_path):
    page = tmp_path / "configuration.md"
    page.write_text(f"intro\n{config_reference.START}\nold\n{config_reference.END}\nafter\n")
    assert config_reference.main([str(page), "--check"]) == 1
    assert config_reference.main([str(page), "--write"]) == 0
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{config_reference.END}\nafter\n") and "\nold\n" not in text
    assert config_reference.main([str(page), "--check"]) == 0
