"""The Dagster UI in a real browser (Debian's Chromium through Playwright), as a newcomer uses it.

`dagster dev` runs on 127.0.0.1 with a temporary DAGSTER_HOME. Before it starts, a validation report
is materialized in that instance (an untrained generator against a small MC reference), so the
report's page has something to render. Screenshots go to ``$CALOTWIN_SCREENSHOTS`` (default
``.calotwin/screenshots``), kept as CI artifacts.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import dagster as dg
import pytest

from conftest import REPO, SMALL, register_untrained_generator
from dt_assets.definitions import defs
from dt_assets.defs.validation import generated_showers, mc_reference, validation_checks, validation_report
from dt_assets.home import ensure_dagster_home, ensure_home
from dt_assets.twin import DagsterDev, graphql
from resources import LocalStorage, ModelRegistry

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
REFERENCE = {"geometry": SMALL, "events_per_cell": 100, "n_energies": 1, "angles_deg": [90.0]}
REPORT = {"bootstrap": 5, "classifier_epochs": 2}


def screenshots() -> Path:
    folder = Path(os.environ.get("CALOTWIN_SCREENSHOTS", REPO / ".calotwin" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`dagster dev` on a data home that holds one validation report; yields its port."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CALOTWIN_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Chromium is required (CALOTWIN_REQUIRE_SERVICES=1) but {CHROMIUM} is missing")
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium")
    home = tmp_path_factory.mktemp("ui") / "calotwin"
    env = {**os.environ, "CALOTWIN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    env.pop("CALOTWIN_STORAGE_URL", None)
    env.pop("CALOTWIN_COMPUTE_CONFIG", None)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("CALOTWIN_HOME", "DAGSTER_HOME"):
            mp.setenv(key, env[key])
        ensure_home()
        ensure_dagster_home()
        register_untrained_generator()
        with dg.DagsterInstance.get() as instance:
            dg.materialize(
                [mc_reference, generated_showers, validation_report, *validation_checks],
                instance=instance,
                resources={"storage": LocalStorage(), "registry": ModelRegistry()},
                run_config={
                    "ops": {"mc_reference": {"config": REFERENCE}, "validation_report": {"config": REPORT}},
                    **QUIET,
                },
                raise_on_error=False,
            )
    with DagsterDev(env, free_port(), home / "dagster-dev.log") as dev:
        yield dev.port


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # large enough that an asset's lineage with five neighbours (generated_showers: mc_reference, the three
        # trainings, validation_report) is drawn with its names; at 1600 x 1000 the graph zooms out past its labels
        page = browser.new_page(viewport={"width": 2400, "height": 1400})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def location(port: int) -> str:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
    (entry,) = graphql(port, query)["workspaceOrError"]["locationEntries"]
    return entry["name"]


def test_every_asset_and_its_lineage_is_shown(ui, page):
    graph = defs.get_repository_def().asset_graph
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    base = f"http://127.0.0.1:{ui}/locations/{location(ui)}/asset-groups"
    for group, assets in sorted(groups.items()):
        page.goto(f"{base}/{group}")
        for name in sorted(assets):
            page.get_by_text(name, exact=True).first.wait_for()
        page.screenshot(path=screenshots() / f"graph-{group}.png")
    # every edge, from each asset's own page: its upstream and downstream assets are links there
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.parent_keys and not node.child_keys:
            continue
        page.goto(f"http://127.0.0.1:{ui}/assets/{key.to_user_string()}?view=lineage&lineageScope=neighbors")
        for neighbour in sorted({*node.parent_keys, *node.child_keys}):
            page.get_by_text(neighbour.to_user_string(), exact=True).first.wait_for()


def test_the_validation_report_renders_its_plots_and_summary_table(ui, page):
    page.goto(f"http://127.0.0.1:{ui}/assets/validation_report")
    # the summary table is a table, its numbers in cells
    row = page.locator("tr", has=page.get_by_text("summary_table", exact=True))
    table = row.locator("table")
    table.first.wait_for()
    cells = table.first.locator("td").all_inner_texts()
    assert "fpd" in cells and "coverage" in cells and "classifier_auc" in cells
    table.first.scroll_into_view_if_needed()  # the screenshot shows the table, not only the page's top
    page.screenshot(path=screenshots() / "validation_report.png")
    # the plots are images: each markdown entry opens into decoded PNGs, not base64 text
    for key in ("coverage_map", "longitudinal_profiles"):
        row = page.locator("tr", has=page.get_by_text(key, exact=True))
        row.get_by_text("Show Markdown").click()
        dialog = page.get_by_role("dialog")
        image = dialog.locator("img[src^='data:image/png']").first
        image.wait_for()
        assert image.evaluate("e => e.complete && e.naturalWidth") > 100
        assert "base64" not in dialog.inner_text()
        page.screenshot(path=screenshots() / f"validation_report-{key}.png")
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")


def test_a_materialization_launched_from_the_ui_succeeds(ui, page):
    page.goto(f"http://127.0.0.1:{ui}/assets/training_set")
    page.locator("button", has_text="Materialize").first.click()
    # no run has preprocessed showers here, so the UI asks first, as it would a user
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    page.get_by_text("Launched run", exact=False).first.wait_for()
    page.screenshot(path=screenshots() / "materialize-launched.png")
    query = "{ runsOrError { ... on Runs { results { runId status assetSelection { path } } } } }"
    deadline = 180
    started = time.monotonic()
    while True:
        runs = graphql(ui, query)["runsOrError"]["results"]
        mine = [r for r in runs if r["assetSelection"] and r["assetSelection"][0]["path"] == ["training_set"]]
        if mine and mine[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        assert time.monotonic() - started < deadline, runs
        time.sleep(1)
    assert mine[0]["status"] == "SUCCESS"
    page.goto(f"http://127.0.0.1:{ui}/runs/{mine[0]['runId']}")
    page.get_by_text("Success", exact=False).first.wait_for()
    page.screenshot(path=screenshots() / "materialize-run.png")


def set_launchpad_config(page, text: str) -> None:
    """Replace the launchpad's config, as a user pasting YAML into the editor."""
    page.locator(".CodeMirror").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)


def test_the_launchpad_explains_each_field_and_refuses_a_bad_geometry_before_launch(ui, page):
    page.goto(f"http://127.0.0.1:{ui}/locations/{location(ui)}/jobs/register_runs/playground")
    page.get_by_text("No errors").wait_for()
    run = "ops:\n  simulation_runs:\n    config:\n      simulations:\n        - n_events: 10\n          geometry: {}\n"
    launch = page.get_by_role("button", name="Launch Run")
    set_launchpad_config(page, run.format("atlas"))
    page.get_by_text("simulations[0]:geometry not in enum type", exact=False).wait_for()
    assert not launch.is_enabled()  # refused before launch, the field named
    page.screenshot(path=screenshots() / "launchpad-refused.png")
    set_launchpad_config(page, run.format(SMALL))
    page.get_by_text("No errors").wait_for()
    assert launch.is_enabled()
    # the type explorer beside the editor: each field's description, the geometry's choices
    for name in ("simulation_runs", "config", "simulations"):
        page.get_by_text(name, exact=True).last.click()
    page.get_by_text("/* Number of showers to simulate. */").wait_for()
    page.get_by_text("Literal['clic_ecal_25x25x25',", exact=False).first.wait_for()
    page.screenshot(path=screenshots() / "launchpad-fields.png")
