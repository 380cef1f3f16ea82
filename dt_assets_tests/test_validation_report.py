"""The validation report: a self-contained HTML file, its figures, and the summary tables the UI shows."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from dt_assets.validation import report
from dt_assets.validation.config import ValidationConfig
from dt_assets.validation.result import ValidationResult
from dt_assets.validation.samples import simulate_grid
from dt_assets.validation.validate import validate

SMALL = "small_ecal_15x15x12"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GLOBAL = ["coverage", "fpd", "kpd", "classifier_auc"]
SETTINGS = {
    "grid": {"energy_range_gev": [10, 200], "n_energies": 2, "angles_deg": [62, 118]},
    "events_per_cell": 150,
    "min_events_per_cell": 100,
    "bootstrap": 10,
    "classifier": {"hidden": 32, "epochs": 3},
    # fewer FPD/KPD batches than the defaults: the report tests need the numbers, not their precision
    "fpd_batches": 4,
    "kpd_batches": 3,
}


@pytest.fixture(scope="module")
def samples():
    cfg = ValidationConfig.from_dict(SETTINGS)
    reference = simulate_grid(cfg.conditions_grid(), 300, SMALL, seed=1)
    candidate = simulate_grid(cfg.conditions_grid(), 150, SMALL, seed=2)
    return cfg, reference, candidate


@pytest.fixture(scope="module")
def corrupted(samples) -> ValidationResult:
    """A candidate whose deposits are 10% too high: energy checks fail in every cell."""
    cfg, reference, candidate = samples
    scaled = candidate.copy(deep=True)
    scaled["energy_deposit"] = scaled["energy_deposit"] * 1.1
    return validate(reference, scaled, cfg)


@pytest.fixture(scope="module")
def passing(samples) -> ValidationResult:
    """Independent MC judged on two observables only: passes, and most plotted observables are absent."""
    _, reference, candidate = samples
    settings = {**SETTINGS, "observables": ["e_ratio", "longitudinal_profile"], "metrics": ["mean_error"]}
    return validate(reference, candidate, settings)


@pytest.fixture(scope="module")
def corrupted_html(corrupted, tmp_path_factory) -> tuple[Path, str]:
    path = corrupted.to_html(tmp_path_factory.mktemp("report") / "sub" / "report.html")
    return path, path.read_text(encoding="utf-8")


def images(text: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def decoded(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(png))


def test_html_report_is_one_self_contained_file(corrupted_html):
    path, text = corrupted_html
    assert path.name == "report.html" and sorted(p.name for p in path.parent.iterdir()) == ["report.html"]
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "<script" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    pngs = images(text)
    # coverage map, two profile figures, five key distributions
    assert len(pngs) == len(sources) == 8
    for png in pngs:
        height, width, _ = decoded(png).shape
        assert height > 100 and width > 100
    assert path.stat().st_size < 2_000_000


def test_html_report_shows_verdict_metrics_cells_failures_and_config(corrupted, corrupted_html):
    _, text = corrupted_html
    assert not corrupted.passed
    assert '<p class="verdict failed">FAILED</p>' in text
    assert corrupted.summary() in text  # no character of it needs escaping
    for name in GLOBAL:
        assert f"<td>{name}</td>" in text
    for cell in corrupted.cells:
        assert cell.label in text and cell.id in text
    failed = {f.check for f in corrupted.failures}
    assert {"e_ratio.mean_error", "e_sum.mean_error"} <= failed
    for check in failed:
        assert f"<td>{check}</td>" in text
    assert "Checks failing in most cells" in text
    config = html.unescape(text.split("<h2>Configuration</h2>")[1])
    assert '"events_per_cell": 150' in config and '"bootstrap": 10' in config
    assert "MC-vs-MC baseline" in text and "|value|" in text
    for role in ("reference", "candidate"):
        assert f"seed: {corrupted.provenance[role]['seed']}" in text


def test_observables_table_counts_failing_cells(corrupted, corrupted_html):
    _, text = corrupted_html
    cells = [m for m in corrupted.metrics.values() if m.observable == "e_ratio" and m.metric == "mean_error"]
    failing = sum(m.passed is False for m in cells)
    assert failing == len(cells) == len(corrupted.cells)
    row = re.search(r"<td[^>]*>e_ratio</td><td>mean_error</td>(.*?)</tr>", text)
    assert row and f"{failing} / {len(cells)}" in row.group(1)
    worst = max(abs(m.value) for m in cells)
    assert f"{worst:.4g}" in row.group(1)
    at_floor = any(not m.above_floor for m in corrupted.metrics.values())
    assert ("baseline reaches the threshold</span>" in text) == at_floor


def test_coverage_map_is_a_png_coloured_by_verdict(corrupted, passing):
    failed = decoded(report.coverage_map_png(corrupted))
    passed = decoded(report.coverage_map_png(passing))
    for image in (failed, passed):
        assert image.ndim == 3 and image.shape[0] >= 150 and image.shape[1] >= 250

    def share(image: np.ndarray, colour: str) -> float:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
        return float(np.mean(np.all(np.abs(image[..., :3] - rgb) < 0.02, axis=-1)))

    assert not any(c.passed for c in corrupted.cells) and all(c.passed for c in passing.cells)
    assert share(failed, report.figures._FAIL) > 0.2 and share(failed, report.figures._PASS) == 0
    assert share(passed, report.figures._PASS) > 0.2 and share(passed, report.figures._FAIL) == 0


def test_profile_and_distribution_figures(corrupted):
    assert decoded(report.profiles_png(corrupted)).shape[0] > 200
    assert decoded(report.profiles_png(corrupted, "transverse_profile_x", cells=["E15_T62"])).shape[1] > 100
    row = decoded(report.distributions_png(corrupted, "e_ratio"))
    assert row.shape[1] > 2 * row.shape[0]  # the key cells side by side
    assert decoded(report.distributions_png(corrupted, "longitudinal_profile", cells=["E195_T118"])).size
    assert [c.id for c in report.key_cells(corrupted)] == [c.id for c in corrupted.cells]  # 2 x 2: all corners
    with pytest.raises(KeyError, match="no_such_observable"):
        report.distributions_png(corrupted, "no_such_observable")
    with pytest.raises(KeyError, match="E1_T1"):
        report.profiles_png(corrupted, cells=["E1_T1"])


def test_summary_rows_equal_the_metrics(corrupted):
    rows = report.summary_rows(corrupted)
    assert [r["name"] for r in rows] == GLOBAL
    for row in rows:
        m = corrupted.metrics[row["name"]]
        assert row["value"] == m.value and row["baseline"] == m.baseline
        assert (row["ci_low"], row["ci_high"]) == m.ci
        if row["name"] != "coverage":
            assert row["threshold"] == m.threshold and row["passed"] == m.passed
    # coverage must reach its minimum (1 by default); the corrupted candidate's is 0
    assert rows[0]["threshold"] == corrupted.config["min_coverage"] and rows[0]["passed"] is False
    auc = next(r for r in rows if r["name"] == "classifier_auc")
    assert auc["threshold"] == corrupted.config["thresholds"]["classifier_auc"]


def test_markdown_summary_has_the_verdict_and_a_row_per_global_metric(corrupted, passing):
    text = report.markdown_summary(corrupted)
    assert text.startswith("**FAILED**")
    for name in GLOBAL:
        assert re.search(rf"^\| {name} \| ", text, flags=re.MULTILINE)
    assert f"| {corrupted.metrics['fpd'].value:.4g} |" in text
    assert re.search(r"^\| coverage \| 0 \| .* \| >= 0.9 \| FAIL \|$", text, flags=re.MULTILINE)
    assert report.markdown_summary(passing).startswith("**PASSED**")


def test_json_round_trip_keeps_the_numbers_and_renders(corrupted, tmp_path):
    loaded = ValidationResult.from_json(corrupted.to_json(tmp_path / "result.json"))
    assert loaded.metrics.keys() == corrupted.metrics.keys()
    for key, m in corrupted.metrics.items():
        for a, b in ((loaded.metrics[key].value, m.value), (loaded.metrics[key].baseline, m.baseline)):
            assert a == b or (math.isnan(a) and math.isnan(b))
        assert loaded.metrics[key].passed == m.passed
    assert loaded.failures == corrupted.failures and loaded.cells == corrupted.cells
    assert report.summary_rows(loaded) == report.summary_rows(corrupted)
    text = loaded.to_html(tmp_path / "report.html").read_text(encoding="utf-8")
    assert "FAILED" in text and all(c.label in text for c in loaded.cells)
    assert len(images(text)) == 8


def test_report_skips_what_the_config_left_out(passing, tmp_path):
    assert passing.passed
    text = passing.to_html(tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<p class="verdict passed">PASSED</p>' in text
    assert "No check failed." in text
    # coverage map, the longitudinal profiles and e_ratio: nothing for absent observables
    assert len(images(text)) == 3
    assert 'alt="e_ratio distributions"' in text and "transverse_profile_x per cell" not in text
    with pytest.raises(KeyError, match="width_x"):
        report.distributions_png(passing, "width_x")


def test_report_of_a_result_without_comparisons(corrupted, tmp_path):
    """A validation where no cell had enough events: only the coverage map and the tables remain."""
    bare = dataclasses.replace(
        corrupted, distributions={}, metrics={"coverage": corrupted.metrics["coverage"]}, provenance={}
    )
    path = tmp_path / "report.html"
    path.write_text("an older report")
    text = report.write_html(bare, path).read_text(encoding="utf-8")
    assert len(images(text)) == 1 and "no distributions to plot" in text
    assert [r["name"] for r in report.summary_rows(bare)] == ["coverage"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
