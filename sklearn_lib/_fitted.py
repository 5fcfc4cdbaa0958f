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
"""

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
