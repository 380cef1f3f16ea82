"""The README's commands (and docs/getting-started.md's), run as a user runs them: `make demo`, then `make ui` on the
same data home."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, make_env
from dt_assets import read_showers
from dt_assets.twin import LOOP_SENSORS, Served, loop_states

pytestmark = pytest.mark.slow


def test_make_demo_prints_the_summary_and_leaves_data_on_disk(demo_home):
    home, out = demo_home
    assert "total: 3 runs" in out and "11500" in out
    assert f"raw showers (zarr):  {home}/data/raw" in out
    assert "model: models:/calotwin-generator/1 (flow, alias challenger)" in out
    assert (home / "mlflow" / "mlflow.db").exists() and len(list((home / "data" / "preprocessed").glob("*.zarr"))) == 3
    assert list((home / "checkpoints").glob("flow-*/last.pt"))  # the demo trains the flow-matching generator
    stores = sorted((home / "data" / "raw").glob("*.zarr"))
    assert [s.name.split("-")[0] for s in stores] == ["file", "mc", "mc"]
    assert sum(read_showers(str(s), validate=False).sizes["event"] for s in stores) == 11500
    assert (home / "dagster" / "dagster.yaml").exists()  # DAGSTER_HOME defaults into the data home


def test_make_demo_ends_with_the_report_and_a_promotion_decision(demo_home):
    home, out = demo_home
    verdict = re.search(r"^validation: (PASSED|FAILED): coverage (\d+)% \((\d+)/15 cells\)", out, flags=re.M)
    assert verdict, out[-2000:]
    assert re.search(r"^blocking checks: coverage (passed|FAILED), fpd (passed|FAILED)", out, flags=re.M)
    (report,) = re.findall(r"^report: +(\S+)$", out, flags=re.M)
    assert report.startswith(f"{home}/reports/calotwin-generator/v1/") and report.endswith("report.html")
    html = Path(report).read_text()
    assert "data:image/png;base64" in html and ("PASSED" in html or "FAILED" in html)
    result = json.loads((Path(report).parent / "result.json").read_text())
    assert result["passed"] == (verdict.group(1) == "PASSED")
    (decision,) = re.findall(r"^promotion: +version 1 (promoted to champion|not promoted): (.+)$", out, flags=re.M)
    # promotion follows the verdict: there is no champion yet, so a passing model would be promoted
    assert (decision[0] == "promoted to champion") == result["passed"]
    if not result["passed"]:  # the demo's last line names the command that trains one that passes
        demo_lines = [line for line in out.rstrip().splitlines() if not line.startswith("make")]  # make's own
        assert demo_lines[-1].endswith("(40–55 minutes on 2 cores)")
        assert "`make champion` trains a longer one on fresh data, validates it, and promotes and exports it" in out


def test_the_docs_show_the_runs_the_demo_makes(demo_home):
    _, out = demo_home
    page = (REPO / "docs" / "getting-started.md").read_text()  # the demo's printout, in "The demo"
    for line in out.splitlines():
        if line.startswith(("mc-", "file-")):
            key, events = line.split()[:2]
            assert re.search(rf"^{key}\s+{events}\s", page, flags=re.M), line


def test_make_demo_again_does_no_work_twice(demo_home):
    home, _ = demo_home
    stores = {p: p.stat().st_mtime_ns for p in (home / "data" / "raw").glob("*.zarr")}
    run = subprocess.run(["make", "demo"], cwd=REPO, env=make_env(home), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "total: 3 runs" in run.stdout and "training a flow-matching generator" not in run.stdout
    assert "model: models:/calotwin-generator/1 (flow, alias challenger)" in run.stdout  # no second version
    assert "validating models:/" not in run.stdout and "promotion:  version 1" in run.stdout  # validated once
    assert {p: p.stat().st_mtime_ns for p in (home / "data" / "raw").glob("*.zarr")} == stores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


def serve(target: list[str], home: Path, ready_path: str, port: int) -> Served:
    """A `make` target that serves HTTP, as a user starts it."""
    return Served(["make", *target], make_env(home), port, ready_path, home / f"{target[0]}.log").start()


def test_make_mlflow_ui_shows_the_registered_model(demo_home):
    home, _ = demo_home
    port = free_port()
    server = serve(["mlflow-ui", f"MLFLOW_PORT={port}"], home, "/health", port)
    try:
        model = server.get_json("/api/2.0/mlflow/registered-models/get?name=calotwin-generator")["registered_model"]
        assert {a["alias"]: a["version"] for a in model["aliases"]} == {"challenger": "1"}
        runs = server.get_json("/api/2.0/mlflow/experiments/get-by-name?experiment_name=calotwin")
        assert runs["experiment"]["artifact_location"] == str(home / "mlflow" / "artifacts")
    finally:
        server.stop()


def materializations_of(port: int, asset: str) -> list[dict]:
    data = graphql(
        port,
        f"""{{ assetOrError(assetKey: {{path: ["{asset}"]}}) {{ ... on Asset {{
             assetMaterializations(limit: 10) {{ partition metadataEntries {{ label
               ... on IntMetadataEntry {{ intValue }} ... on MarkdownMetadataEntry {{ mdStr }}
               ... on TextMetadataEntry {{ text }} ... on PathMetadataEntry {{ path }} }} }} }} }} }}""",
    )
    return data["assetOrError"]["assetMaterializations"]


def test_make_ui_serves_the_assets_with_metadata_and_checks(demo_home):
    home, _ = demo_home
    port = free_port()
    server = serve(["ui", f"PORT={port}"], home, "/server_info", port)
    try:
        nodes = graphql(port, "{ assetNodes { assetKey { path } isPartitioned } }")["assetNodes"]
        assert {tuple(n["assetKey"]["path"]) for n in nodes} == {
            ("simulation_runs",),
            ("raw_showers",),
            ("preprocessed_showers",),
            ("training_set",),
            ("hpo_study",),
            ("gan_model",),
            ("flow_model",),
            ("tuned_model",),
            ("mc_reference",),
            ("generated_showers",),
            ("validation_report",),
            ("champion_model",),
            ("speed_benchmark",),
            ("exported_generator",),
            ("quarantined_files",),
        }
        # `make ui` runs the self-driving loop: its sensors are on, its schedules wait for a user
        states = loop_states(port)
        assert {name: states[name] for name in LOOP_SENSORS} == dict.fromkeys(LOOP_SENSORS, "RUNNING")
        assert states["nightly_revalidation"] == states["weekly_full_retraining"] == "STOPPED"
        materializations = materializations_of(port, "raw_showers")
        assert len({m["partition"] for m in materializations}) == 3
        entries = {e["label"]: e for e in materializations[0]["metadataEntries"]}
        assert entries["events"]["intValue"] > 0
        assert entries["mean_longitudinal_profile"]["mdStr"].startswith("![mean longitudinal profile](data:image/png")
        checks = graphql(
            port,
            """{ assetNodes(assetKeys: [{path: ["raw_showers"]}]) { assetChecksOrError {
                 ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } } } }""",
        )["assetNodes"][0]["assetChecksOrError"]["checks"]
        assert {c["name"]: c["executionForLatestMaterialization"]["status"] for c in checks} == {
            "schema_and_units": "SUCCEEDED",
            "finite_non_negative": "SUCCEEDED",
            "sampling_fraction_consistency": "SUCCEEDED",
        }
        (model,) = materializations_of(port, "flow_model")  # the demo trains the flow
        entries = {e["label"]: e for e in model["metadataEntries"]}
        assert entries["loss_curves"]["mdStr"].startswith("![loss curves](data:image/png")
        assert entries["model_version"]["intValue"] == 1
        # the validation report and the promotion decision are in the UI
        (report,) = materializations_of(port, "validation_report")
        entries = {e["label"]: e for e in report["metadataEntries"]}
        assert entries["coverage_map"]["mdStr"].startswith("![coverage map](data:image/png")
        assert "fpd" in entries["summary"]["mdStr"] and entries["report"]["path"].endswith("report.html")
        gates = graphql(
            port,
            """{ assetNodes(assetKeys: [{path: ["validation_report"]}]) { assetChecksOrError {
                 ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } } } }""",
        )["assetNodes"][0]["assetChecksOrError"]["checks"]
        statuses = {c["name"]: c["executionForLatestMaterialization"]["status"] for c in gates}
        assert set(statuses) == {"coverage_gate", "fpd_gate", "kpd_gate", "classifier_auc_gate"}
        assert set(statuses.values()) <= {"SUCCEEDED", "FAILED"}
        (decision,) = materializations_of(port, "champion_model")
        entries = {e["label"]: e for e in decision["metadataEntries"]}
        assert entries["reason"]["text"] and entries["candidate_version"]["intValue"] == 1
    finally:
        server.stop()
