"""Sphinx configuration: the API reference (numpydoc + autosummary) and the gallery.

Build with ``python -m sphinx docs docs/_build`` after ``pip install -e ".[docs]"``
(nothing is downloaded at build time).  The gallery runs every
``examples/plot_*.py`` with ``--smoke`` (seconds each); set
``SKLEARN_LIB_GALLERY=full`` to run them in full (up to about 10 minutes each),
or pass ``-D plot_gallery=0`` to skip running them.
"""

import fnmatch
import glob
import importlib.util
import os
import re
import shutil
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

# Every cross-reference must resolve (-W turns a broken one into an error), except
# to names of other packages: the build is offline, so there is no intersphinx,
# and references to numpy, scikit-learn, torch, matplotlib ... render as plain code.
# Names of this package are never listed here: fix the reference instead (a
# private name is written as plain ``code``, not as a reference).
nitpicky = True
_OTHER_PACKAGES = r"(numpy|np|scipy|sklearn|torch|matplotlib|pandas|networkx|tqdm|transformers)"
nitpick_ignore_regex = [
    # Fully qualified, e.g. :class:`sklearn.decomposition.PCA`, :class:`torch.nn.Module`.
    (r"py:.*", _OTHER_PACKAGES + r"\..+"),
    (r"py:mod", _OTHER_PACKAGES),
    # Short names of other packages' types, e.g. :class:`PCA` in a docstring.
    (
        r"py:.*",
        r"(PCA|IncrementalPCA|TruncatedSVD|GridSearchCV|Pipeline|BaseEstimator"
        r"|TransformerMixin|train_test_split|ndarray|Tensor|Module|DataLoader"
        r"|Axes|Figure|Colormap|DataFrame|Graph)",
    ),
]

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

# guide.md includes sections of README.md, whose links are written for a checkout.
# Links to docs/*.md become links to those pages (the include's :relative-docs:);
# here, before MyST reads the text, a built page (docs/_build/<page>.html) and an
# example (examples/plot_<name>.py) become links to their page of this site, or
# plain text when the site has no such page (an example left out of the gallery).
_README_LINK = re.compile(
    r"\[([^\]]*)\]\((?:docs/_build/(?P<page>[\w/.-]+?)\.html"
    r"|examples/(?P<example>plot_\w+)\.py)(?P<anchor>#[\w-]*)?\)"
)


def _site_link(match):
    page = match["page"] or f"auto_examples/{match['example']}"
    for suffix in source_suffix:
        if os.path.isfile(os.path.join(DOCS, page + suffix)):
            return f"[{match[1]}]({page}{suffix}{match['anchor'] or ''})"
    if os.path.isfile(_gallery_file(page)):  # an example's dashboard: a file, not a page
        return f'<a href="{page}.html">{match[1]}</a>'
    return match[1]


# The feature dashboards the examples write (``*_dashboard.html``, to the folder
# gallery_argv.OUTPUTS inside the gallery's) are copied next to the example pages when
# the build ends, so that the examples' text links them as
# `file_dashboard.html <file_dashboard.html>`__ (and the README as
# docs/_build/auto_examples/file_dashboard.html; check_readme_links.py checks those).
GALLERY_FILES = "*_dashboard.html"


def _gallery_file(page):
    """Where the examples wrote ``page`` (``auto_examples/<name>``), or "" for no such file."""
    gallery, _, name = page.partition("/")
    if gallery != sphinx_gallery_conf["gallery_dirs"] or not fnmatch.fnmatch(
        name + ".html", GALLERY_FILES
    ):
        return ""
    return os.path.join(DOCS, gallery, gallery_argv.OUTPUTS, name + ".html")


def _copy_gallery_files(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    gallery = sphinx_gallery_conf["gallery_dirs"]
    target = os.path.join(app.outdir, gallery)
    for path in sorted(glob.glob(os.path.join(DOCS, gallery, gallery_argv.OUTPUTS, GALLERY_FILES))):
        shutil.copy2(path, target)


def _readme_links(app, relative_path, parent_docname, content):
    if os.path.basename(relative_path) == "README.md":
        content[0] = _README_LINK.sub(_site_link, content[0])


def setup(app):
    app.connect("include-read", _readme_links)
    app.connect("build-finished", _copy_gallery_files)


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
