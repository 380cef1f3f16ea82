"""Rules of the code base: domain code never imports Dagster; the code is ruff clean."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "dt_assets"
#: The Dagster layer: the only modules allowed to import dagster. pipes_training is the external
#: training process: it may import dagster_pipes (and nothing else of Dagster; checked below).
DAGSTER_LAYER = {"definitions.py", "demo.py", "champion.py", "walkthrough.py", "pipes_training.py"}
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


def test_code_is_ruff_clean():
    ruff = [sys.executable, "-m", "ruff"]
    lint = subprocess.run([*ruff, "check", "."], capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([*ruff, "format", "--check", "."], capture_output=True, text=True, cwd=REPO)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
