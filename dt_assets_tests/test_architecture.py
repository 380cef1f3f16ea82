"""Rules of the code base: domain code never imports Dagster; no import cycles; the code is ruff clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "dt_assets"
#: The Dagster layer: the only modules allowed to import dagster. pipes_training is the external
#: training process: it may import dagster_pipes (and nothing else of Dagster; checked below).
DAGSTER_LAYER = {
    "definitions.py",
    "demo.py",
    "champion.py",
    "walkthrough.py",
    "pipes_training.py",
    "config_reference.py",
}
DAGSTER_PACKAGES = {"defs"}


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def domain_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in DAGSTER_PACKAGES or str(rel) in DAGSTER_LAYER:
            continue
        yield path


def test_domain_code_never_imports_dagster():
    offenders = {
        str(p.relative_to(REPO)): sorted(m for m in imported_modules(p) if m.startswith("dagster") or m == "resources")
        for p in domain_modules()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"domain modules import the Dagster layer: {offenders}"
    assert len(list(domain_modules())) >= 10  # the scan looks at the real tree


def test_importing_the_public_api_and_every_domain_module_loads_no_dagster():
    modules = [
        "dt_assets." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in domain_modules()
        if p.name != "__init__.py"
    ]
    code = "import sys, importlib, dt_assets\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_mlflow', 'resources')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_the_external_training_process_imports_only_dagster_pipes():
    dagster_imports = {m for m in imported_modules(PACKAGE / "pipes_training.py") if m.startswith("dagster")}
    assert dagster_imports == {"dagster_pipes"}
    code = "import sys, dt_assets.pipes_training\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_public_api_is_exported():
    import dt_assets

    for name in ("simulate", "read_showers", "write_showers"):
        assert callable(getattr(dt_assets, name))


# The import graph. Nodes are the modules of dt_assets and of resources (the Dagster resources, which
# import domain modules and are imported by dt_assets.defs); a package's __init__ is a node of its own.
# Edges are every import, at module level or inside a function (a deferred import is still a
# dependency), relative imports resolved; imports under ``if TYPE_CHECKING:`` (annotations only) are not.
GRAPH_PACKAGES = ("dt_assets", "resources")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the module at ``path`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):  # a name defined in the module (or package __init__) itself
                found.add(source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    if path == REPO / "dt_assets" / "__init__.py":
        # the public API: names imported on first use, by the module paths in _EXPORTS
        exports = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "_EXPORTS")
        found.update("dt_assets" + v.value for v in exports.values if isinstance(v, ast.Constant))
    return (found & modules) - {name}


def import_graph() -> dict[str, set[str]]:
    paths = [p for package in GRAPH_PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    modules = {module_name(p) for p in paths}
    return {module_name(p): module_imports(p, modules) for p in paths}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of its nodes, first node repeated at the end; None if it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer(module: str) -> str:
    """The unit of the layering: a subpackage of dt_assets, a top-level module, or the Dagster layer as a whole."""
    parts = module.split(".")
    if parts[0] != "dt_assets" or len(parts) == 1:
        return parts[0]
    if parts[1] in DAGSTER_PACKAGES or f"{parts[1]}.py" in DAGSTER_LAYER:
        return "the Dagster layer"
    return parts[1]


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_import_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert len(graph) >= 70
    assert "dt_assets.fsio" in graph["dt_assets.showers.store"]  # relative, module level
    assert "dt_assets.model.generation" in graph["dt_assets.validation.samples"]  # inside a function
    assert "dt_assets.physics.gflash" in graph["dt_assets.simulation"]  # `from .physics import gflash`
    assert "dt_assets.model.generation" in graph["dt_assets"]  # the public API's lazy exports
    assert "dt_assets.fsio" in graph["resources.storage"]  # absolute
    assert "dt_assets.validation.result" not in graph["dt_assets.validation.report.page"]  # under TYPE_CHECKING


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_packages():
    """physics < showers < simulation < model < validation < tuning < ... < the Dagster layer: no package
    imports one that imports it back, through any modules."""
    layers: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        layers.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    layers.pop("dt_assets", None)  # the public API's root re-exports from every package (its importers: below)
    cycle = find_cycle(layers)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_no_module_imports_the_package_root():
    """Modules import names from the module that defines them, not from dt_assets' re-exports."""
    importers = sorted(m for m, targets in import_graph().items() if "dt_assets" in targets)
    assert not importers, f"import from the defining module instead of dt_assets: {importers}"


def test_code_is_ruff_clean():
    ruff = [sys.executable, "-m", "ruff"]
    lint = subprocess.run([*ruff, "check", "."], capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([*ruff, "format", "--check", "."], capture_output=True, text=True, cwd=REPO)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
