"""notebooks/quickstart.ipynb: committed clean, served by `make notebook`, and run top to bottom on the data home
a real `make demo` filled."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import nbformat
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient
from servers import free_port

from conftest import REPO, make_env
from dt_assets.defs.data import raw_showers
from dt_assets.twin import Served

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
#: the cells the notebook's default parameters make: 2 energies x 2 angles
DEFAULT_CELLS = 4


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    """Everything the executed notebook printed (streams and plain-text results), in order."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "text/plain" in output.get("data", {}):
                parts.append(output.data["text/plain"] + "\n")
    return "".join(parts)


def png_outputs(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def test_the_committed_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "no code cells"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert notebook.metadata.kernelspec.name == "python3"
    # the first code cell is the parameters cell (tagged as papermill expects)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "ENERGIES_GEV" in code[0].source and "ANGLES_DEG" in code[0].source


@pytest.fixture
def notebook_home(demo_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the demo's data home, set for the kernel (which inherits this process's environment).

    A copy: the notebook registers a new run, and the README's tests expect exactly the demo's three.
    """
    home = tmp_path / "calotwin"
    shutil.copytree(demo_home[0], home)
    monkeypatch.setenv("CALOTWIN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    for name in ("CALOTWIN_STORAGE_URL", "CALOTWIN_STORAGE_OPTIONS", "CALOTWIN_MLFLOW_URI", "CALOTWIN_COMPUTE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.mark.slow
def test_the_notebook_runs_on_the_demo_data(notebook_home: Path, tmp_path: Path):
    home = notebook_home
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.monotonic()
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    try:
        client.execute()
    finally:
        nbformat.write(notebook, tmp_path / "executed.ipynb")  # to read when it fails
    print(f"the notebook ran in {time.monotonic() - started:.0f} s")
    out = outputs_text(notebook)

    assert f"data home:    {home}\n" in out and f"Dagster home: {home / 'dagster'}\n" in out
    # 1. the champion when the demo promoted version 1, else the challenger, with the reason
    registry = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    aliases = {alias: version for alias, version in registry.get_registered_model("calotwin-generator").aliases.items()}
    expected = "champion" if "champion" in aliases else "challenger"
    assert (
        f"loaded models:/calotwin-generator@{expected} -> models:/calotwin-generator/1 (version 1, the {expected})"
        in out
    )
    assert ("No champion: models:/calotwin-generator@champion does not exist" in out) == (expected == "challenger")
    assert "geometry small_ecal_15x15x12: 15 x 15 cells x 12 layers" in out
    # 2. and 3. showers in every cell, the validation's verdict, failures and the report
    assert re.search(r"^generator: 800 showers in [\d.]+ s; MC: 1600 showers in [\d.]+ s$", out, flags=re.M), out
    verdict = re.search(rf"^validation: (PASSED|FAILED): coverage \d+% \(\d+/{DEFAULT_CELLS} cells\)", out, flags=re.M)
    assert verdict, out
    (report,) = re.findall(r"^report: (\S+)$", out, flags=re.M)
    assert Path(report) == home / "notebooks" / "calotwin-generator-v1" / "report.html"
    assert "data:image/png;base64" in Path(report).read_text()
    result = json.loads((Path(report).parent / "result.json").read_text())
    assert result["passed"] == (verdict.group(1) == "PASSED")
    assert f"{len(result['failures'])} failure(s)" in out
    # 4. one figure of profiles per cell
    profiles = next(cell for cell in notebook.cells if "mean_profiles" in cell.source)
    assert png_outputs(profiles) == DEFAULT_CELLS
    # 5. a new run in raw_showers, with its checks, in the instance `make ui` would show
    materialized = re.search(r"^raw_showers\[(mc-\w+-2024)\]: Dagster run ([\w-]+), success True$", out, flags=re.M)
    assert materialized, out
    run_key, run_id = materialized.groups()
    assert re.search(rf"^simulation_runs: {run_key} \(new\): 300 e- 50-150 GeV 62-90 deg", out, flags=re.M), out
    for key in raw_showers.check_keys:
        assert f"  check {key.name}: passed\n" in out
    assert re.search(r"^events +300$", out, flags=re.M) and "mean_longitudinal_profile:" in out
    metadata_cell = next(cell for cell in notebook.cells if "materialization.metadata" in cell.source)
    assert png_outputs(metadata_cell) == 1

    with dg.DagsterInstance.get() as instance:  # $DAGSTER_HOME: the demo home's instance
        assert instance.root_directory == str(home / "dagster")
        assert run_key in instance.get_materialized_partitions(raw_showers.key)
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=raw_showers.key, asset_partitions=[run_key]), limit=1
        ).records
        assert record.run_id == run_id and record.asset_materialization.metadata["events"].value == 300
        assert instance.get_run_by_id(run_id).is_success
        assert len(raw_showers.check_keys) == 3
        for key in raw_showers.check_keys:
            check = instance.get_latest_asset_check_evaluation_record(key)
            assert check is not None and check.run_id == run_id and check.status.value == "SUCCEEDED", key


@pytest.mark.slow
def test_make_notebook_serves_the_notebook(tmp_path: Path):
    """`make notebook` as a user starts it (on a free port, with a token), asked for the notebook over its API."""
    port, token = free_port(), secrets.token_hex(16)
    env = make_env(tmp_path / "calotwin") | {"JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    url = f"http://127.0.0.1:{port}/api/contents/notebooks/quickstart.ipynb"
    with Served(["make", "notebook", f"NOTEBOOK_PORT={port}"], env, port, "/api", tmp_path / "notebook.log"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=30)
        assert refused.value.code == 403  # no token, no notebook
        request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            served = json.loads(response.read())
    assert served["type"] == "notebook" and served["path"] == "notebooks/quickstart.ipynb"
    on_disk = nbformat.read(NOTEBOOK, as_version=4)
    assert [cell["source"] for cell in served["content"]["cells"]] == [cell.source for cell in on_disk.cells]
    assert f"http://127.0.0.1:{port}/lab" in (tmp_path / "notebook.log").read_text()
