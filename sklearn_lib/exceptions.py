"""Warnings and errors specific to sklearn-lib, and where warnings point."""

import os
import sys

import sklearn
import torch

# Frames in these folders are not the user's code.
_LIBRARIES = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (sys.modules[__package__], sklearn, torch)
)


class StaleBasisWarning(UserWarning):
    """A fitted estimator is used after its model's parameters or buffers changed.

    The fitted bases describe the model as it was at ``fit``: after an
    optimiser step or a weight edit, ``transform``, ``score``,
    ``interaction_graph`` and the ablations would silently analyse another
    model with them.  Refit, or silence the warning with
    ``warnings.simplefilter("ignore", StaleBasisWarning)`` when the change is
    meant (e.g. a deliberate perturbation of the weights).
    """


def user_stacklevel():
    """The ``stacklevel`` at which ``warnings.warn`` names the user's line, not ours.

    Counts the frames from the caller of this function up to the first one
    outside sklearn-lib, scikit-learn and torch (whose decorators and
    parameter validation sit between a public method and its body), so a
    warning can be filtered by the user's module and is shown once per
    line of theirs.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARIES):
        frame, level = frame.f_back, level + 1
    return level
