"""The import graph of pwl/: no cycles, and no entry point imports another."""

import ast
import graphlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pwl"
ENTRY_POINTS = ("train", "evaluate", "plan", "export", "serve", "bench", "report")


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The pwl modules a file imports, at any depth (imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pwl import speed` imports the module pwl.speed
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {m for m in found if m in MODULES}


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_the_graph_sees_real_imports():
    assert "pwl.runtime.bundle" in GRAPH["pwl.runtime.materialise"]
    assert "pwl.masks" in GRAPH["pwl.runtime.bundle"]


def test_no_import_cycle_in_the_package():
    # A package's __init__ runs before its modules; an edge from a module to its own
    # package is that, not a cycle, so edges to an ancestor package are left out.
    edges = {name: {m for m in deps if not name.startswith(m + ".")}
             for name, deps in GRAPH.items()}
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_entry_point_imports_another(entry):
    others = {f"pwl.{e}" for e in ENTRY_POINTS if e != entry}
    assert GRAPH[f"pwl.{entry}"] & others == set()
