"""The validation judges like a physicist: independent MC passes, each corrupted generator fails where expected.

The reference and the MC candidate use the default grid, events per cell and thresholds (the
settings a user gets); only the bootstrap and the classifier are lighter, to keep CI fast. The
corrupted candidates are MC showers altered the way a bad generator would be.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

from dt_assets import ShowerDataError, validate
from dt_assets.physics.geometry import get_geometry
from dt_assets.showers.schema import DEPOSIT, shower_dataset
from dt_assets.simulation import simulate
from dt_assets.validation.config import ValidationConfig
from dt_assets.validation.promotion import decide_promotion, gates
from dt_assets.validation.samples import per_cell, simulate_grid
from dt_assets_tests.conftest import SMALL

FAST = {
    "bootstrap": 30,
    "fpd_batches": 4,
    "kpd_batches": 4,
    "classifier": {"hidden": 64, "epochs": 8, "lr": 1e-3, "batch_size": 256},
}
DEFAULT = ValidationConfig.from_dict(FAST)
#: corrupted candidates: a 3 x 3 grid is enough to see which check catches what
SMALL_GRID = ValidationConfig.from_dict(
    {**FAST, "grid": {"energy_range_gev": [10, 200], "n_energies": 3}, "events_per_cell": 300}
)


@pytest.fixture(scope="module")
def reference() -> xr.Dataset:
    return simulate_grid(DEFAULT.conditions_grid(), 2 * DEFAULT.events_per_cell, SMALL, seed=101)


@pytest.fixture(scope="module")
def mc_vs_mc(reference):
    candidate = simulate_grid(DEFAULT.conditions_grid(), DEFAULT.events_per_cell, SMALL, seed=202)
    return validate(reference, candidate, DEFAULT)


def test_independent_mc_passes_every_check(mc_vs_mc):
    assert mc_vs_mc.failures == []
    assert mc_vs_mc.passed and mc_vs_mc.coverage == 1.0
    assert len(mc_vs_mc.cells) == 15  # 5 energies x 3 angles
    assert all(g.passed for g in gates(mc_vs_mc))
    assert abs(mc_vs_mc.metrics["classifier_auc"].value - 0.5) < 0.05
    # the baseline is the same kind of comparison: both are near the statistical floor
    e_ratio = mc_vs_mc.metrics["E105_T90/e_ratio/mean_error"]
    assert abs(e_ratio.value) < 0.01 and abs(e_ratio.baseline) < 0.01
    assert e_ratio.ci[0] <= e_ratio.value <= e_ratio.ci[1]


@pytest.fixture(scope="module")
def small_reference() -> xr.Dataset:
    return simulate_grid(SMALL_GRID.conditions_grid(), 2 * SMALL_GRID.events_per_cell, SMALL, seed=303)


def _mc_candidate(seed: int = 404) -> xr.Dataset:
    return simulate_grid(SMALL_GRID.conditions_grid(), SMALL_GRID.events_per_cell, SMALL, seed=seed)


def _with_deposits(ds: xr.Dataset, cells: np.ndarray) -> xr.Dataset:
    out = ds.copy()
    out[DEPOSIT] = (ds[DEPOSIT].dims, cells.astype(np.float32), ds[DEPOSIT].attrs)
    return out


def _failing(result) -> dict[str, int]:
    return result.failing_checks()


def test_energy_scaled_by_ten_percent_fails_the_energy_checks(small_reference):
    candidate = _mc_candidate()
    result = validate(small_reference, _with_deposits(candidate, candidate[DEPOSIT].values * 1.1), SMALL_GRID)
    failing = _failing(result)
    assert not result.passed
    assert failing["e_sum.mean_error"] == 9 and failing["e_ratio.mean_error"] == 9  # every cell
    cells = result.failing_cells()  # the same grouping, naming the cells (bench/fidelity.py prints it)
    assert cells["e_ratio.mean_error"] == [c.id for c in result.cells] and cells.keys() == failing.keys()
    assert all(cells[k] == [] for k in failing if "." not in k)  # global checks name no cell
    assert result.metrics["E105_T90/e_ratio/mean_error"].value == pytest.approx(0.1, abs=0.01)
    assert "center_z.mean_error" not in failing and "width_x.mean_error" not in failing


def test_profile_shifted_by_one_layer_fails_the_depth_checks(small_reference):
    candidate = _mc_candidate()
    cells = np.zeros_like(candidate[DEPOSIT].values)
    cells[..., 1:] = candidate[DEPOSIT].values[..., :-1]
    result = validate(small_reference, _with_deposits(candidate, cells), SMALL_GRID)
    failing = _failing(result)
    assert failing["center_z.mean_error"] == 9
    assert failing.get("longitudinal_profile.wasserstein", 0) >= 5
    assert result.metrics["E105_T90/center_z/mean_error"].value > 1.0  # more than one reference spread deeper
    assert "e_ratio.mean_error" not in failing and "width_x.mean_error" not in failing


def test_widths_inflated_by_twenty_percent_fail_the_width_checks(small_reference):
    geometry = get_geometry(SMALL)
    narrow = dataclasses.replace(geometry, name="narrow", cell_size_mm=geometry.cell_size_mm / 1.2)

    def wider(n, cell, seed):
        # simulated in cells 1.2x narrower, then labelled with the real cell size: every transverse
        # distance grows by 20%
        ds = simulate(n, cell.energy_range_gev, cell.theta_range_deg, "e-", narrow, seed)
        return shower_dataset(
            ds[DEPOSIT].values, ds["primary_energy"].values, ds["theta"].values, ds["particle"].values, geometry
        )

    candidate = per_cell(SMALL_GRID.conditions_grid(), SMALL_GRID.events_per_cell, 404, wider)
    result = validate(small_reference, candidate, SMALL_GRID)
    failing = _failing(result)
    assert failing["width_x.mean_error"] >= 8 and failing["width_y.mean_error"] >= 8
    assert result.metrics["E105_T90/width_y/mean_error"].value == pytest.approx(0.2, abs=0.06)
    assert "center_z.mean_error" not in failing


def test_generator_that_ignores_its_conditioning_fails_away_from_its_one_condition(small_reference):
    geometry = get_geometry(SMALL)
    rng = np.random.default_rng(5)

    def ignoring(n, cell, seed):
        # always a 105 GeV shower at 90 degrees, whatever the cell asks for
        ds = simulate(n, 105.0, 90.0, "e-", SMALL, seed)
        energy = rng.uniform(*cell.energy_range_gev, n)
        theta = np.deg2rad(rng.uniform(*cell.theta_range_deg, n))
        return shower_dataset(ds[DEPOSIT].values, energy, theta, ds["particle"].values, geometry)

    candidate = per_cell(SMALL_GRID.conditions_grid(), SMALL_GRID.events_per_cell, 404, ignoring)
    result = validate(small_reference, candidate, SMALL_GRID)
    failing = _failing(result)
    # energy: wrong in the 15 and 195 GeV cells (6), right at 105 GeV; angle: wrong at 62 and 118 degrees (6)
    assert failing["e_sum.mean_error"] == 6
    assert failing["measured_theta.mean_error"] == 6
    assert result.coverage <= 1 / 9  # at most the 105 GeV, 90 degree cell passes
    assert result.metrics["classifier_auc"].value > 0.8


def test_promotion_needs_every_check_and_a_better_score(mc_vs_mc, small_reference):
    assert decide_promotion(mc_vs_mc, None).promote
    assert not decide_promotion(mc_vs_mc, mc_vs_mc).promote  # a tie keeps the champion
    worse = dataclasses.replace(mc_vs_mc, score=mc_vs_mc.score + 1.0)
    better = dataclasses.replace(mc_vs_mc, score=mc_vs_mc.score / 2)
    assert not decide_promotion(worse, mc_vs_mc).promote
    assert "does not beat" in decide_promotion(worse, mc_vs_mc).reason
    assert decide_promotion(better, mc_vs_mc).promote
    candidate = _mc_candidate()
    failing = validate(small_reference, _with_deposits(candidate, candidate[DEPOSIT].values * 1.1), SMALL_GRID)
    failing = dataclasses.replace(failing, score=-1.0)  # even with the best score in the world
    decision = decide_promotion(failing, None)
    assert not decision.promote and "coverage" in decision.reason


def test_bad_inputs_are_named(small_reference):
    candidate = _mc_candidate()
    cells = candidate[DEPOSIT].values.copy()
    cells[3, 0, 0, 0] = np.nan
    with pytest.raises(ShowerDataError, match=r"candidate.*NaN.*event 3"):
        validate(small_reference, _with_deposits(candidate, cells), SMALL_GRID)
    cells[3, 0, 0, 0] = -1.0
    with pytest.raises(ShowerDataError, match=r"candidate.*negative"):
        validate(small_reference, _with_deposits(candidate, cells), SMALL_GRID)
    other = simulate(10, 50.0, 90.0, "e-", "clic_ecal_25x25x25", seed=1)
    with pytest.raises(ShowerDataError, match=r"candidate.*geometry clic_ecal_25x25x25 differs"):
        validate(small_reference, other, SMALL_GRID)
    with pytest.raises(ShowerDataError, match=r"reference.*missing variable"):
        validate(small_reference.drop_vars("theta"), candidate, SMALL_GRID)
    few = validate(small_reference, candidate.isel(event=slice(0, 500)), SMALL_GRID)
    assert not few.passed and any(f.check == "events_per_cell" for f in few.failures)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"observables": ["e_sum", "no_such_thing"]}, "unknown observable 'no_such_thing'"),
        ({"metrics": ["ks", "chi2"]}, "unknown metric 'chi2'"),
        ({"thresholds": {"e_sum.nonsense": 0.1}}, "bad key 'e_sum.nonsense'"),
        ({"thresholds": {"ks": -1}}, "thresholds.ks must be a number >= 0"),
        ({"bootstrap": 0}, "bootstrap must be a positive integer"),
        ({"grid": {"energy_range_gev": [200, 10]}}, "energy_range_gev"),
        ({"grid": {"angles_deg": [30]}}, "angle 30.0 deg lies outside"),
        ({"score": "loss"}, "score must be one of"),
        ({"bins_per_histogram": 10}, "unknown validation setting"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        ValidationConfig.from_dict(settings)


def test_yaml_settings_override_defaults_key_by_key(tmp_path):
    path = tmp_path / "validation.yaml"
    path.write_text("observables: [e_sum, center_z]\nthresholds: {mean_error: 0.03, ks: null}\ngrid: {n_energies: 2}\n")
    cfg = ValidationConfig.from_yaml(path)
    assert cfg.observables == ("e_sum", "center_z")
    assert cfg.threshold("e_sum", "mean_error") == 0.03
    assert cfg.threshold("e_sum", "ks") is None
    assert cfg.threshold("center_z", "mean_error") == 0.45  # the per-observable default still wins
    assert len(cfg.conditions_grid().cells()) == 6
    path.write_text("observables: [e_sum\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        ValidationConfig.from_yaml(path)


PLUGIN = """
import numpy as np
from dt_assets.validation.metrics import metric
from dt_assets.validation.observables import observable


@observable("plugin_e_back", unit="MeV", description="visible energy in the last 3 layers")
def e_back(block):
    return block.layer_energy[:, -3:].sum(axis=1)


@metric("plugin_median_error", description="relative error of the median")
def median_error(reference, candidate):
    return np.abs(candidate.quantile(0.5) / reference.quantile(0.5) - 1)
"""


def test_a_plugin_named_in_the_yaml_brings_its_observable_and_metric(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "my_physics.py").write_text(PLUGIN)
    path = tmp_path / "validation.yaml"
    path.write_text(
        "plugins: [lab/my_physics.py]\nobservables: [e_sum, plugin_e_back]\n"
        "metrics: [mean_error, plugin_median_error]\n"
        "thresholds: {plugin_median_error: 0.2}\ngrid: {energies_gev: [50], angles_deg: [90]}\n"
        "events_per_cell: 200\nbootstrap: 20\nclassifier: {epochs: 2}\n"
    )
    cfg = ValidationConfig.from_yaml(path)
    assert cfg.plugins == (str(tmp_path / "lab" / "my_physics.py"),)  # relative to the YAML
    assert ValidationConfig.from_yaml(path) == cfg  # imported once: registering again is not attempted
    grid = cfg.conditions_grid()
    reference = simulate_grid(grid, 2 * cfg.events_per_cell, SMALL, seed=5)
    candidate = simulate_grid(grid, cfg.events_per_cell, SMALL, seed=6)
    result = validate(reference, candidate, cfg)
    (key,) = [k for k in result.metrics if k.endswith("/plugin_e_back/plugin_median_error")]
    assert result.metrics[key].threshold == 0.2 and result.metrics[key].value < 0.2  # MC vs MC passes it
    # a scaled candidate fails the plugin's check on the plugin's observable
    scaled = candidate.assign(energy_deposit=candidate.energy_deposit * 1.5)
    failed = validate(reference, scaled, cfg)
    assert failed.metrics[key].value > 0.4 and not failed.passed  # 1.5x deposits; more cells over threshold too


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        (["no_such_module_xyz"], "plugins: cannot import 'no_such_module_xyz'"),
        (["missing.py"], "plugins: no such file"),
    ],
)
def test_a_bad_plugin_is_named(tmp_path, plugins, message):
    with pytest.raises(ValueError, match=message):
        ValidationConfig.from_dict({"plugins": plugins})


def test_a_plugin_that_fails_on_import_is_named(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('needs a GPU')\n")
    with pytest.raises(ValueError, match=r"broken.py' failed on import: RuntimeError: needs a GPU"):
        ValidationConfig.from_dict({"plugins": [str(broken)]})
