"""The package's structure: data flows forward, and nothing below the estimators sees one."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[2] / "sklearn_lib"
#: Modules that know the estimator classes: the estimators, and the public
#: functions and displays that dispatch on them (the graph's drawing,
#: ``_graph_display``, takes only a graph and stays below).
ESTIMATOR_LEVEL = {
    "_lib",
    "_activation",
    "_base",
    "ablation",
    "_display",
    "plotting",
    "demo",
    "__init__",
}


def _imports():
    """``{module: set of sklearn_lib modules it imports}``, function-level imports included."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
        graph[name] = found - {"models"}
    return graph


def test_no_module_below_the_estimators_imports_one():
    graph = _imports()
    for module, imported in graph.items():
        if module not in ESTIMATOR_LEVEL:
            assert not imported & ESTIMATOR_LEVEL, (module, imported & ESTIMATOR_LEVEL)


def test_no_import_cycle():
    graph = _imports()
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            pytest.fail(f"import cycle: {' -> '.join([*path, module])}")
        state[module] = "open"
        for other in graph.get(module, ()):
            visit(other, [*path, module])
        state[module] = "done"

    for module in graph:
        visit(module, [])
