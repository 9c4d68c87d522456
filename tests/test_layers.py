"""The layering holds on the real import graph: imports point down only, and no cycle anywhere.

Every ``import`` and ``from … import`` in every module of the packages counts, at module top
or inside a function (a late import can hold a cycle as well as an early one). Importing
``a.b.c`` also runs ``a`` and ``a.b``, so those count too, except a module's own packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Top-level packages, bottom first: a module may import its own layer and those below it.
LAYERS = ("bus", "sinks", "alerts", "publishers", "metricbus")


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against this module's package
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        return [target] + [f"{target}.{alias.name}" for alias in node.names]
    return []


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the packages it imports (directly, or as the packages they are in)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            for target in _imported(node, name, path.name == "__init__.py"):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    candidate = ".".join(parts[:i])
                    if candidate in modules and candidate != name and candidate not in own:
                        graph[name].add(candidate)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_the_real_one() -> None:
    """The walker sees the imports that matter (a guard against a check that passes by seeing nothing)."""
    graph = import_graph()
    assert "bus.message" in graph["bus.publisher"]
    assert "bus.security" in graph["bus.publisher"]
    assert "sinks.jsonl_files" in graph["alerts.state"]
    assert "metricbus.supervisor" in graph["metricbus.cli"]  # a late import, inside cmd_up
    assert "sinks.dashboard.series" in graph["sinks.dashboard.store"]
    assert "bus" not in graph["bus.config"], "a module's own package is not an edge"
    assert len(graph) > 50


def test_imports_point_down_the_layers_only() -> None:
    """No module imports from a layer above its own (bus imports nothing but bus)."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if rank[target.split(".")[0]] > rank[module.split(".")[0]]
    ]
    assert upward == []


def test_there_is_no_import_cycle() -> None:
    """No set of modules imports each other in a circle, early or late."""
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The cycle check itself: a circle of three is reported, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
