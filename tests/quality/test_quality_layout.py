"""The quality/ package's shape: pure modules stay pure, ML never imports quality, small
modules, package imports at the top (no services needed)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rakuten_mlops

PACKAGE = Path(rakuten_mlops.__file__).parent
QUALITY = PACKAGE / "quality"
PURE = ("drift", "checks", "statistics", "config", "features", "signals", "results", "report")
SERVICE_CLIENTS = ("psycopg", "minio", "boto3", "botocore", "mlflow")


def test_the_pure_modules_load_no_service_client():
    """Imported alone, in a fresh interpreter: not even transitively."""
    code = (
        "import json, sys\n"
        + "".join(f"import rakuten_mlops.quality.{name}\n" for name in PURE)
        + f"loaded = {{m.split('.')[0] for m in sys.modules}} & {set(SERVICE_CLIENTS)!r}\n"
        + "print(json.dumps(sorted(loaded)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def _imports(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node))
            found.extend((f"{node.module}.{alias.name}", node) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node) for alias in node.names)
    return found


def test_nothing_outside_quality_imports_it_but_the_cli():
    """quality reads the ML side (the champion's dataset); the ML side never reads quality."""
    importers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if QUALITY not in path.parents
        and any(
            name.startswith("rakuten_mlops.quality")
            for name, _ in _imports(ast.parse(path.read_text()))
        )
    )
    assert importers == ["cli/__init__.py"]


@pytest.mark.parametrize("path", sorted(QUALITY.glob("*.py")), ids=lambda p: p.name)
def test_each_module_is_small_and_imports_the_package_at_its_top(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= 500
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for name, node in _imports(tree):
        if name.startswith("rakuten_mlops") and id(node) not in top_level:
            # an exception says why, on the line above the import
            assert lines[node.lineno - 2].strip().startswith("#"), f"{path.name}:{node.lineno}"


def test_no_old_flat_module_is_left():
    for name in (
        "monitoring",
        "drift",
        "quality",
        "quality_features",
        "quality_report",
        "dashboards",
    ):
        assert not (PACKAGE / f"{name}.py").exists(), name
