"""Command-line arguments that the documentation build passes to each example.

sphinx-gallery runs every ``examples/plot_*.py`` in the build's process with
``sys.argv`` set to what :func:`reset_argv` returns.  By default each example
gets ``--smoke`` (seconds each); ``SKLEARN_LIB_GALLERY=full`` runs them in
full (up to about 10 minutes each).  What the examples save
(``--output-dir``) goes to :data:`OUTPUTS`, a folder of the gallery's own
generated one (``docs/auto_examples/example_outputs``, git-ignored, never the
repository's ``figures/``): the gallery takes its images from the open
matplotlib figures, not from those files, and ``conf.py`` copies the feature
dashboards the examples write (``*_dashboard.html``) next to the example pages,
which link them.  Kept with the gallery, they last as long as its cached runs.
"""

import os

#: The folder, inside the gallery's, that the examples save their files to.
OUTPUTS = "example_outputs"

#: Environment variable choosing how the gallery runs the examples.
MODE_ENV = "SKLEARN_LIB_GALLERY"
MODES = ("smoke", "full")


def gallery_mode():
    """``"smoke"`` (the default) or ``"full"``, from ``$SKLEARN_LIB_GALLERY``."""
    mode = os.environ.get(MODE_ENV, "").strip().lower() or "smoke"
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def reset_argv(gallery_conf, script_vars):
    """``sys.argv[1:]`` for one example (sphinx-gallery's ``reset_argv``)."""
    gallery = os.path.dirname(os.path.abspath(script_vars["target_file"]))
    argv = ["--output-dir", os.path.join(gallery, OUTPUTS)]
    if gallery_mode() == "smoke":
        argv.insert(0, "--smoke")
    return argv
