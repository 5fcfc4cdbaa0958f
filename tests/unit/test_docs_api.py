"""The API reference (docs/api.rst) lists every public name, so none is forgotten.

Reads the page's source only: no Sphinx needed.  A new name in
``sklearn_lib.__all__`` (or in a documented submodule) must get a line in
docs/api.rst, and a line there must name something that exists.
"""

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re

import pytest

import sklearn_lib

API_PAGE = pathlib.Path(__file__).parents[2] / "docs" / "api.rst"
#: Public submodules whose names are documented at the top level instead
#: (``sklearn_lib.ablation``'s functions, ``StaleBasisWarning``).
REEXPORTED = {"ablation", "exceptions"}
DIRECTIVE = re.compile(r"^\.\. (\w+(?::\w+)?)::\s*(\S*)\s*$")


def documented():
    """``{module: set of names}`` of the autosummary lists and auto* directives of api.rst."""
    names, module, in_summary = {}, None, False
    for line in API_PAGE.read_text(encoding="utf-8").splitlines():
        match = DIRECTIVE.match(line)
        if match:
            directive, argument = match.groups()
            in_summary = directive == "autosummary"
            if directive in ("currentmodule", "py:currentmodule"):
                module = argument
            elif directive.startswith("auto") and directive not in ("automodule", "autosummary"):
                names.setdefault(module, set()).add(argument)
        elif in_summary and line.startswith("   ") and not line.strip().startswith(":"):
            names.setdefault(module, set()).add(line.strip())
        elif line and not line.startswith(" "):
            in_summary = False
    return names


def public_names(module):
    """``__all__``, or the functions and classes the module defines without a leading ``_``."""
    if hasattr(module, "__all__"):
        return set(module.__all__)
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    }


def documented_submodules():
    return sorted(m for m in documented() if m and m != "sklearn_lib")


def test_every_name_of_the_package_is_in_the_api_page():
    missing = set(sklearn_lib.__all__) - documented().get("sklearn_lib", set())
    assert not missing, f"add these to docs/api.rst under sklearn_lib: {sorted(missing)}"


@pytest.mark.parametrize("module_name", documented_submodules())
def test_every_name_of_a_documented_submodule_is_in_the_api_page(module_name):
    module = importlib.import_module(module_name)
    missing = public_names(module) - documented()[module_name]
    assert not missing, f"add these to docs/api.rst under {module_name}: {sorted(missing)}"


def test_every_public_submodule_is_documented():
    public = {m.name for m in pkgutil.iter_modules(sklearn_lib.__path__) if m.name[0] != "_"}
    sections = {m.rsplit(".", 1)[-1] for m in documented_submodules()}
    assert public - REEXPORTED - sections == set(), "a public module without an API section"
    assert {"plotting", "datasets", "fourier", "demo", "models"} <= sections


def test_every_name_in_the_api_page_exists():
    for module_name, names in documented().items():
        module = importlib.import_module(module_name)
        for name in names:
            assert hasattr(module, name), f"docs/api.rst names {module_name}.{name}"


EXAMPLES = sorted((API_PAGE.parents[1] / "examples").glob("plot_*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_an_example_runs_in_the_gallery_without_doc_or_file(script):
    # sphinx-gallery runs each example with __doc__ set to "" and no __file__
    # (docs/conf.py): an example reading either breaks the docs build.
    used = {
        node.id
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8")))
        if isinstance(node, ast.Name) and node.id in ("__doc__", "__file__")
    }
    assert not used, f"{script.name} reads {sorted(used)}, which the gallery does not set"
