"""The package's structure: data flows forward, sub-packages by concept, estimators on top.

Modules are named by their dotted path below ``sklearn_lib`` (``_routes.table``).
The sub-packages stack in the order of the data flow, each importing only
those below it; the estimators and the public modules sit on top, and
nothing below them sees one.
"""

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).parents[2] / "sklearn_lib"
TESTS = pathlib.Path(__file__).parents[1]

#: The sub-packages, lowest first: running the model needs nothing above it, and so on.
#: Drawing takes plain data (a graph's arrays), so the analyses can draw themselves.
LAYERS = ["_core", "_model", "_routes", "_fitting", "_files", "_drawing", "_analysis"]
#: The estimators: the only modules that read an estimator's private methods and attributes.
ESTIMATORS = {"_base", "_lib", "_activation", "_fitted"}
#: Modules that know the estimator classes: the estimators, and the public
#: functions and displays that take them.
ESTIMATOR_LEVEL = ESTIMATORS | {
    "ablation",
    "_display",
    "_dashboard",
    "plotting",
    "demo",
    "__init__",
}
#: Top-level modules that know nothing of the rest (any layer may import them).
LEAVES = {"exceptions"}
#: What the package folder itself may hold: public modules and the estimators.
TOP_LEVEL = ESTIMATOR_LEVEL | LEAVES | {"datasets", "fourier"}


def _modules():
    """``{dotted name: path}`` of every module of the package (``models`` aside)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] == "models":
            continue
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _package_of(name, path):
    """The package a module's relative imports start from."""
    parts = name.split(".")
    return parts if path.name == "__init__.py" and name != "__init__" else parts[:-1]


def _imports(name, path):
    """``[(imported module, imported name or None)]`` of a module's relative imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = _package_of(name, path)
        base = base[: len(base) - (node.level - 1)]
        target = base + (node.module.split(".") if node.module else [])
        for alias in node.names:
            dotted = ".".join([*target, alias.name])
            if dotted in MODULES:  # `from . import module`
                found.append((dotted, None))
            elif (".".join(target) or "__init__") in MODULES:
                found.append((".".join(target) or "__init__", alias.name))
            elif (target or [alias.name])[0] == "models":
                continue  # the paper's models: a package of their own
            else:
                pytest.fail(f"{name}: cannot resolve 'from {'.' * node.level}{node.module or ''}'")
    return found


GRAPH = {name: {target for target, _ in _imports(name, path)} for name, path in MODULES.items()}


def _home(name):
    """The sub-package of a module, or the package itself for the top-level ones."""
    top = name.split(".")[0]
    return top if top in LAYERS else ""


def _layer(name):
    top = name.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def test_every_import_resolves_to_a_module():
    assert "_routes.table" in MODULES and "_routes.forms.base" in MODULES
    assert GRAPH["_routes.table"] >= {"_routes.forms.base", "_routes.cotangents"}


def test_no_module_below_the_estimators_imports_one():
    for module, imported in GRAPH.items():
        if module not in ESTIMATOR_LEVEL:
            assert not imported & ESTIMATOR_LEVEL, (module, imported & ESTIMATOR_LEVEL)


def test_sub_packages_import_only_those_below_them():
    for module, imported in GRAPH.items():
        layer = _layer(module)
        if layer is None:
            continue
        for target in imported:
            other = _layer(target)
            assert target in LEAVES or (other is not None and other <= layer), (module, target)


def test_no_private_name_crosses_a_sub_package():
    for module, path in MODULES.items():
        for target, name in _imports(module, path):
            if name and name.startswith("_") and _home(target) != _home(module):
                pytest.fail(f"{module} imports the private {name!r} of {target}")


def test_no_import_cycle():
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            pytest.fail(f"import cycle: {' -> '.join([*path, module])}")
        state[module] = "open"
        for other in GRAPH.get(module, ()):
            visit(other, [*path, module])
        state[module] = "done"

    for module in GRAPH:
        visit(module, [])


#: An estimator's private methods, and its private fitted attributes (``_x_``).
PRIVATE_CALLS = {"_session", "_source", "_set_bases", "_saved_fit", "_restore_fit", "_fitted"}
PRIVATE_ATTRIBUTE = re.compile(r"^_[a-z][a-z0-9_]*_$")


def test_nothing_outside_the_estimators_reads_their_privates():
    for module, path in MODULES.items():
        if module in ESTIMATORS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and (
                node.attr in PRIVATE_CALLS or PRIVATE_ATTRIBUTE.match(node.attr)
            ):
                pytest.fail(f"{module}:{node.lineno} reads an estimator's {node.attr!r}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if PRIVATE_ATTRIBUTE.match(node.value):  # getattr(estimator, "_x_")
                    pytest.fail(f"{module}:{node.lineno} names an estimator's {node.value!r}")


def test_the_package_folder_holds_the_public_modules_and_the_estimators():
    files = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert set(files) <= TOP_LEVEL, set(files) - TOP_LEVEL
    assert len(files) <= 13, files
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted([*LAYERS, "models"])


def test_every_module_of_the_sub_packages_has_a_unit_test_module():
    """``_routes/forms/affine.py`` is tested in ``tests/unit/routes/forms/test_affine.py``."""
    missing = []
    for module, path in MODULES.items():
        if _layer(module) is None or path.name == "__init__.py":
            continue
        parts = module.split(".")
        folder = TESTS / "unit" / parts[0].lstrip("_") / pathlib.Path(*parts[1:-1])
        if not (folder / f"test_{parts[-1]}.py").exists():
            missing.append(module)
    assert not missing, missing


#: The closed-form protocol's signature is public (models implement it): exempt.
PROTOCOL = {"lib_section_vjp", "lib_section_gram"}


def _functions():
    for path in [*PACKAGE.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def _code_lines(node):
    """A function's lines, its docstring left out: the rule is about code read at once,
    and a public method's numpydoc parameters may run long."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        if isinstance(first.value.value, str):
            lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_longer_than_60_lines():
    long = [
        f"{path}:{node.lineno} {node.name} ({_code_lines(node)} lines of code)"
        for path, node in _functions()
        if _code_lines(node) > 60
    ]
    assert not long, long


def test_no_function_takes_more_than_6_positional_parameters():
    """More than six: the settings among them are keyword-only (``*, batched=None``)."""
    wide = []
    for path, node in _functions():
        args = node.args
        positional = [
            a.arg for a in [*args.posonlyargs, *args.args] if a.arg not in ("self", "cls")
        ]
        if len(positional) > 6 and node.name not in PROTOCOL:
            wide.append(f"{path}:{node.lineno} {node.name}{tuple(positional)}")
    assert not wide, wide
