"""The one interface between the estimators and the code that analyses, draws or saves them.

Ablation curves, scorers and displays take whatever estimator the user has
fitted: a :class:`~sklearn_lib.LIBTransformer` (any ``basis``), a
``Pipeline`` starting with one, or ``Pipeline([ActivationTransformer, PCA])``.
:func:`fitted` turns each into a :class:`Fitted`, the fitted bases and the
means to run the model over data, and is the one place that dispatches on
estimator types.  Saving goes the same way: a ``LIBTransformer`` turns itself
into the file's record (:class:`~sklearn_lib._files.fit_file.SavedFit`) and
back.  No module outside the estimators (``_base``, ``_lib``,
``_activation`` and this one) reads an estimator's private methods or
attributes.

On a layer with positions, the PCA pipeline's basis is not comparable with
LIB's (see :meth:`Fitted.warn_if_positions_flattened`): the functions that
compare bases warn, once per call.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._activation import ActivationTransformer
from ._core.nodes import OUTPUT_NODE
from ._core.validation import check_section
from ._fitting.basis import NodeBasis
from ._lib import LIBTransformer
from .exceptions import FlattenedPositionsWarning, user_stacklevel


@dataclass(frozen=True)
class Fitted:
    """What an analysis needs of a fitted estimator.

    Attributes
    ----------
    owner : LIBTransformer or ActivationTransformer
        The estimator that runs the model.
    bases : dict of str to NodeBasis
        The fitted bases: every node of a ``LIBTransformer``, the one basis
        of a PCA pipeline.
    layer : str
        The node layer asked for.
    """

    owner: object
    bases: dict
    layer: str

    @property
    def basis(self):
        """The :class:`NodeBasis` of :attr:`layer`."""
        return self.bases[self.layer]

    @property
    def is_lib(self):
        """Whether the bases are a ``LIBTransformer``'s: every node, with sections between."""
        return isinstance(self.owner, LIBTransformer)

    def session(self, verbose=None):
        """A :class:`~sklearn_lib._model.session.ModelSession` for one call.

        ``verbose`` None: the estimator's own ``verbose``.
        """
        return self.owner._session(verbose=verbose)

    def source(self, X):
        """Validated batches of the model inputs ``X``."""
        return self.owner._source(X)

    def warn_if_positions_flattened(self):
        """Warn when the basis is a PCA of a layer's positions flattened together.

        ``Pipeline([ActivationTransformer, PCA])`` on a layer of shape
        ``(*positions, d)`` with more than one position fits ``P * d``-wide
        vectors, one per sample, where LIB (and ``basis="pca"``) fits one
        ``d``-wide basis shared over the positions: their curves, counts and
        spectra do not compare.  Warns with
        :class:`~sklearn_lib.exceptions.FlattenedPositionsWarning` at the
        user's line; a LIB state or a single-position layer is silent.
        """
        if self.is_lib:
            return
        shape = tuple(self.owner.activation_shape_)
        if len(shape) < 2 or math.prod(shape[:-1]) <= 1:
            return
        warnings.warn(
            _flattened_message(self.owner, shape),
            FlattenedPositionsWarning,
            stacklevel=user_stacklevel(),
        )


def _flattened_message(acts, shape):
    """What :meth:`Fitted.warn_if_positions_flattened` says of ``acts`` (an
    ActivationTransformer) whose activations have ``shape``: the layer, its
    positions and width, and the ``LIBTransformer`` call of the fair baseline."""
    *positions, d = shape
    n_positions = math.prod(positions)
    where = f"{n_positions} positions"
    if len(positions) > 1:  # a conv map: name its grid too
        where += f" ({' x '.join(map(str, positions))})"
    # The settings that pick the same activations and output, so the
    # suggested call can be pasted as it is.
    settings = {
        "capture": (acts.capture, "input"),
        "output": (acts.output, None),
        "forward_kwargs": (acts.forward_kwargs, None),
        "feature_axis": (acts.feature_axis, None),
    }
    options = "".join(
        f", {name}={value!r}" for name, (value, default) in settings.items() if value != default
    )
    return (
        f"PCA on {acts.layer!r} flattened {where} x {d} features into one "
        f"{n_positions * d}-wide vector per sample: its features are not shared over "
        "positions as LIB's are, so the comparison is not like for like; compare with "
        f"LIBTransformer(model, {acts.layer!r}{options}, basis='pca'), the position-shared PCA"
    )


def takes_estimator(obj):
    """Whether :func:`fitted` takes ``obj``'s kind (it may still refuse the instance)."""
    return isinstance(obj, (LIBTransformer, Pipeline))


def fitted(estimator, layer=None):
    """The :class:`Fitted` state of ``estimator`` at ``layer`` (None: the estimator's own).

    ``layer`` picks any fitted node layer of a ``LIBTransformer`` (its
    ``layer`` or a downstream layer).

    Raises
    ------
    TypeError
        For another kind of estimator.
    sklearn.exceptions.NotFittedError, ValueError
        For an unfitted one, or a layer it was not fitted at.
    """
    if isinstance(estimator, LIBTransformer):
        estimator = estimator._snapshot()  # one fit's state, whatever another thread does
        check_is_fitted(estimator)
        layer = estimator.layer if layer is None else layer
        if layer not in estimator.bases_ or layer == OUTPUT_NODE:
            raise ValueError(
                f"layer={layer!r} is not a fitted node layer; choose one of "
                f"{[n for n in estimator.bases_ if n != OUTPUT_NODE]}"
            )
        return Fitted(estimator, estimator.bases_, layer)
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps]
        if isinstance(steps[0], LIBTransformer):
            return fitted(steps[0], layer)
        if len(steps) >= 2 and isinstance(steps[0], ActivationTransformer):
            if isinstance(steps[1], PCA):
                return _pca_pipeline(steps[0], steps[1], layer)
    raise TypeError(
        "Expected a fitted LIBTransformer, a Pipeline starting with one, or a Pipeline of "
        f"ActivationTransformer followed by PCA; got {type(estimator).__name__}"
    )


def _pca_pipeline(acts, pca, layer):
    if layer not in (None, acts.layer):
        raise ValueError(f"layer={layer!r}: this PCA pipeline reads {acts.layer!r}")
    acts = acts._snapshot()
    check_is_fitted(acts)
    check_is_fitted(pca)
    # A basis of the activations flattened per sample (width P * d); PCA's
    # components are orthonormal, so its pseudo-inverse is the transpose.
    basis = NodeBasis(
        acts.layer,
        (int(np.prod(acts.activation_shape_)),),
        pca.mean_,
        pca.components_.T,
        pca.components_,
        pca.explained_variance_,
        pca.n_components_,
        kind="pca",
    )
    return Fitted(acts, {acts.layer: basis}, acts.layer)


def fitted_section(estimator, graph, section):
    """``(state, src, dst)``: a ``LIBTransformer``'s state and the two fitted nodes of a
    section of ``graph``, which must come from it."""
    state = fitted(estimator)
    if not state.is_lib:
        raise TypeError(
            "Edge ablation needs a fitted LIBTransformer (the bases of both nodes of the "
            f"section), got {type(estimator).__name__}"
        )
    section = check_section(section)
    if section not in graph.edges:
        raise ValueError(f"section={section!r} is not one of the graph's {graph.sections}")
    missing = [name for name in section if name not in state.bases]
    if missing:
        raise ValueError(
            f"The graph's section {section} has node(s) {missing} that the estimator was not "
            "fitted on: was the graph computed from this estimator?"
        )
    return state, state.bases[section[0]], state.bases[section[1]]
