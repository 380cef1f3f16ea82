"""The README and the docs stay true: their Python runs, their tables match the code, their make targets exist."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest

from conftest import REPO
from dt_assets import get_geometry

README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"
#: the pages the README's sections moved to
GETTING_STARTED = (DOCS / "getting-started.md").read_text()
VALIDATION = (DOCS / "concepts" / "validation.md").read_text()
API = (DOCS / "reference" / "api.md").read_text()
DESIGN = (DOCS / "design.md").read_text()


def code_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def docs_pages() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text() for p in sorted(DOCS.rglob("*.md"))}


def test_the_python_api_example_runs(tmp_path):
    (block,) = code_blocks("python", API)  # the API example of the Python API page
    run = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "('event', 'x', 'y', 'z') MeV" in run.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"example_run.zarr", "example_3dgan.h5", "example_cc.h5"}


def test_the_validation_example_runs_with_a_registered_observable(tmp_path):
    (block,) = code_blocks("python", VALIDATION)  # the example of the physics validation page
    run = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("PASSED: coverage 100% (6/6 cells)")  # MC against independent MC
    assert "observable='e_front', metric='mean_error'" in run.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"validation_report.html", "validation.json"}


def test_the_design_geometry_table_matches_the_computed_quantities():
    section = DESIGN.split("\n## Geometry presets", 1)[1].split("\n## ", 1)[0]  # the design page's table
    rows = re.findall(
        r"^\| `(\w+)`.*?\| ([\d.]+) mm \| ([\d.]+) mm \| ([\d.]+) MeV \| ([\d.]+) \|$", section, flags=re.M
    )
    assert len(rows) == 3
    for name, x0, rm, ec, sf in rows:
        g = get_geometry(name)
        assert float(x0) == pytest.approx(g.x0_mm, abs=0.001), name
        assert float(rm) == pytest.approx(g.moliere_radius_mm, abs=0.001), name
        assert float(ec) == pytest.approx(g.critical_energy_mev, abs=0.01), name
        assert float(sf) == pytest.approx(g.sampling_fraction, abs=0.00001), name


def test_make_targets_named_in_the_readme_and_the_docs_exist():
    help_text = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for target in ("demo", "test", "ui", "bench", "docs"):
        assert re.search(rf"make {target}\b", README), target
    listed = set(re.findall(r"^  make (\S+)", help_text, flags=re.M))
    for name, text in {"README.md": README, **docs_pages()}.items():
        for target in re.findall(r"(?:^|`)make ([a-z][a-z-]*)\b", text, flags=re.M):  # `make x`, and in code blocks
            assert target in listed, f"{name}: make {target} is not a target of `make help`"
    for text in (README, GETTING_STARTED):  # the quickstart starts with the two commands
        commands = "\n".join(code_blocks("bash", text))
        assert commands.splitlines()[0].startswith("make demo") and commands.splitlines()[1].startswith("make test")


def mermaid_lineage() -> tuple[str, set[tuple[str, str]]]:
    (diagram,) = code_blocks("mermaid")
    edges = set()
    for line in diagram.splitlines():
        if "-." in line or "-->" not in line:
            continue
        chain = [part.strip() for part in line.split("-->")]
        edges |= set(itertools.pairwise(chain))
    return diagram, edges


def test_the_architecture_diagram_holds_every_asset_edge_sensor_and_schedule():
    from dt_assets.definitions import defs

    diagram, edges = mermaid_lineage()
    graph = defs.resolve_asset_graph()
    lineage = {
        (parent.to_user_string(), key.to_user_string())
        for key in graph.get_all_asset_keys()
        for parent in graph.get(key).parent_keys
    }
    assert edges == lineage  # solid arrows are exactly the assets' lineage
    for key in graph.get_all_asset_keys():
        assert re.search(rf"\b{key.to_user_string()}\b", diagram), key
        assert f"subgraph {graph.get(key).group_name}" in diagram, key
    repository = defs.get_repository_def()
    for name in [s.name for s in repository.sensor_defs] + [s.name for s in repository.schedule_defs]:
        if name != "default_automation_condition_sensor":  # Dagster's own, for raw_showers' automation
            assert re.search(rf"^\s+{name} -\.", diagram, flags=re.M), name


#: each quickstart command, and where a test runs it exactly so (`make test` is what CI runs on a fresh clone)
QUICKSTART_TESTED = {
    "make demo": ("conftest.py", '["make", "demo"]'),
    "make test": (".ci/run", "make test"),
    "make ui": ("test_readme_commands.py", 'serve(["ui"'),
    "make notebook": ("test_notebook.py", '["make", "notebook"'),
    "make mlflow-ui": ("test_readme_commands.py", 'serve(["mlflow-ui"'),
}


def test_the_quickstart_is_exactly_the_commands_the_tests_run():
    for text in (README, GETTING_STARTED):  # the README's quickstart and the getting-started page's
        section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
        block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
        commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
        assert commands == list(QUICKSTART_TESTED)
    for command, (file, snippet) in QUICKSTART_TESTED.items():
        path = REPO / file if file.startswith(".ci") else REPO / "dt_assets_tests" / file
        assert snippet in path.read_text(), f"{command}: not run by {file}"
