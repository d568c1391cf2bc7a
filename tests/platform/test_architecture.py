"""The package's shape: no import cycle, small modules, pure modules free of services.

The import graph is built with `ast` from each module's top-level imports (what runs at
import time; imports inside functions are deferred on purpose and commented). Packages
are discovered, not listed: a package added or restructured is covered as it lands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "rakuten_mlops"
MAX_LINES = 500
SERVICE_CLIENTS = {"mlflow", "psycopg", "minio", "boto3"}
# Modules that take frames and return results; services are the stages' business.
PURE = {
    f"{PACKAGE}.ml.train",
    f"{PACKAGE}.ml.evaluate",
    f"{PACKAGE}.ml.features",
    f"{PACKAGE}.ml.text",
    f"{PACKAGE}.ml.calibration",
    f"{PACKAGE}.ml.image_features",
    f"{PACKAGE}.ml.fusion",
    f"{PACKAGE}.ml.oof",
}
# The data-quality statistics, wherever the quality package puts them.
PURE_STEMS = ("statistics", "drift", "stats")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def top_level_imports(name: str) -> set[str]:
    """Modules imported when `name` is imported: its module-level import statements
    (including those under `if`/`try` at top level), resolved to absolute names."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from package import module` imports the module.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _module_level(body):
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try):
            # `if TYPE_CHECKING:` imports never run.
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for block in (node.body, getattr(node, "orelse", []),
                          *(h.body for h in getattr(node, "handlers", [])),
                          getattr(node, "finalbody", [])):
                yield from _module_level(block)


def internal_graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        targets = {t for t in top_level_imports(name) if t in MODULES and t != name}
        # Importing a.b.c runs the __init__ of a.b first, unless a.b is the importer's own
        # package (its __init__ is already running: a sibling import, not a cycle).
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for target in list(targets):
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(2, len(parts)))
        graph[name] = {t for t in targets if t in MODULES and t not in own and t != PACKAGE}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(internal_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


PACKAGES = sorted({name.rpartition(".")[0] if "." in name.removeprefix(PACKAGE + ".")
                   else PACKAGE for name in MODULES})


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_500_lines(package):
    too_long = {
        name: lines
        for name, path in MODULES.items()
        if (name.rpartition(".")[0] == package or name == package)
        and (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


def pure_modules() -> list[str]:
    found = set(PURE) & set(MODULES)
    for name in MODULES:
        parts = name.split(".")
        if "quality" in ".".join(parts[1:-1]) and parts[-1].startswith(PURE_STEMS):
            found.add(name)
    return sorted(found)


@pytest.mark.parametrize("name", pure_modules())
def test_pure_modules_reach_no_service(name):
    """Neither at import nor inside a function: no MLflow, PostgreSQL or S3 client."""
    tree = ast.parse(MODULES[name].read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & SERVICE_CLIENTS, f"{name} imports {imported & SERVICE_CLIENTS}"
    # Nor through the project's own modules that hold service clients.
    reached = _reachable(name)
    clients = {m for m in reached if _imports_services(m)}
    assert not clients, f"{name} reaches service clients through {sorted(clients)}"


def _reachable(start: str) -> set[str]:
    graph, seen, todo = internal_graph(), set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _imports_services(name: str) -> bool:
    return any(t.split(".")[0] in SERVICE_CLIENTS for t in top_level_imports(name))


def test_the_ml_package_is_covered():
    assert set(MODULES) >= PURE, f"missing pure modules: {PURE - set(MODULES)}"


# The CLI's commands import their stage when run: `rakuten-mlops --help` stays instant.
DEFERRED_BY_DESIGN = (f"{PACKAGE}.cli",)


@pytest.mark.parametrize(
    "name", [n for n in MODULES if not n.startswith(DEFERRED_BY_DESIGN)]
)
def test_package_imports_are_at_the_top_unless_a_comment_says_why(name):
    """An import of the package inside a function hides the graph this file checks; each
    one left says why on the line above (or at its end)."""
    path = MODULES[name]
    lines = path.read_text().splitlines()
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    unexplained = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in top_level:
            continue
        targets = (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else
            [alias.name for alias in node.names]
        )
        internal = any(t.split(".")[0] == PACKAGE for t in targets)
        if isinstance(node, ast.ImportFrom) and node.level:
            internal = True
        explained = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
        if internal and not explained:
            unexplained.append(node.lineno)
    assert not unexplained, f"{path.name}: imports inside functions at lines {unexplained}"
