"""Sphinx configuration: the API reference (numpydoc + autosummary) and the gallery.

Build with ``python -m sphinx docs docs/_build`` after ``pip install -e ".[docs]"``
(nothing is downloaded at build time).  The gallery runs every
``examples/plot_*.py`` with ``--smoke`` (seconds each); set
``SKLEARN_LIB_GALLERY=full`` to run them in full (up to about 10 minutes each),
or pass ``-D plot_gallery=0`` to skip running them.
"""

import importlib.util
import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, DOCS)  # gallery_argv, named by sphinx_gallery_conf below

import gallery_argv  # noqa: E402
from sphinx.errors import ConfigError  # noqa: E402

import sklearn_lib  # noqa: E402

project = "sklearn-lib"
author = "sklearn-lib contributors"
copyright = "sklearn-lib contributors"
release = version = sklearn_lib.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "figures"]

# API reference: one page per public name, generated from the autosummary lists.
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# The gallery.  plot_language_model.py needs transformers (the "models" extra):
# without it the example is left out of the gallery (its header says so).
_ignore = [r"__init__\.py"]
if importlib.util.find_spec("transformers") is None:
    _ignore.append(r"plot_language_model\.py")
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "ignore_pattern": "|".join(_ignore),
    "reset_argv": "gallery_argv.reset_argv",
    # Figures come from the matplotlib figures each example leaves open.
    "image_scrapers": ("matplotlib",),
    "download_all_examples": False,
    "remove_config_comments": True,
}
try:  # a typo in $SKLEARN_LIB_GALLERY stops the build here, not after the examples ran
    gallery_argv.gallery_mode()
except ValueError as exc:
    raise ConfigError(str(exc)) from None

# The markdown pages (docs/*.md) through MyST; their figures live in docs/figures.
# They are written to be read on GitHub too, so they link files of the checkout
# outside docs/ (e.g. ../README.md#...), which are not pages of this site: such a
# link shows as plain text here instead of failing the build.
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]

html_theme = "alabaster"
html_title = f"sklearn-lib {release}"
html_theme_options = {
    "description": "The Local Interaction Basis as scikit-learn transformers",
    "page_width": "1100px",
    "sidebar_width": "230px",
    "fixed_sidebar": True,
}
html_static_path = []
html_show_sourcelink = False
