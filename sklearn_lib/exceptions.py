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


class FlattenedPositionsWarning(UserWarning):
    """A PCA of a layer with positions compares flattened activations with LIB.

    ``Pipeline([ActivationTransformer, PCA])`` fits one ``P * d``-wide vector
    per sample (the layer's ``P`` positions, or a conv map's locations,
    flattened together), whereas LIB's basis is ``d`` wide and shared over
    the positions, fitted on ``n * P`` rows.  Their ablation curves, feature
    counts and spectra then measure different decompositions.  The fair
    baseline is ``LIBTransformer(model, layer, basis="pca")``, the
    position-shared PCA.  The ablation functions, scorers and displays warn
    rather than refuse, since the flattened PCA may be wanted on purpose;
    silence it with ``warnings.simplefilter("ignore", FlattenedPositionsWarning)``.
    """


class FallbackWarning(RuntimeWarning):
    """Work was given up for a plainer way that gives the same result.

    A closed form that failed its check against autograd, an exploratory call
    (tracing, a route check, the pricing of a route) that raised, or a traced
    section that cannot serve a new batch shape: the section then takes
    autograd's rows, or the plan goes without a time estimate.  The fitted
    result is the one the fast way would have given (exactly for exact
    fits); the warning names the section and the reason, since a fault in
    the model that only these calls met may matter.  A ``RuntimeWarning``,
    so filters of those still apply.  Out-of-memory errors,
    ``KeyboardInterrupt`` and ``SystemExit`` are never given up on: they
    propagate.
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
