"""Command-line arguments that the documentation build passes to each example.

sphinx-gallery runs every ``examples/plot_*.py`` in the build's process with
``sys.argv`` set to what :func:`reset_argv` returns.  By default each example
gets ``--smoke`` (seconds each); ``SKLEARN_LIB_GALLERY=full`` runs them in
full (up to about 10 minutes each).  Figures the examples save go to a
temporary folder: the gallery takes its images from the open matplotlib
figures, not from those files.
"""

import os
import tempfile

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
    output_dir = os.path.join(tempfile.gettempdir(), "sklearn-lib-gallery-figures")
    argv = ["--output-dir", output_dir]
    if gallery_mode() == "smoke":
        argv.insert(0, "--smoke")
    return argv
