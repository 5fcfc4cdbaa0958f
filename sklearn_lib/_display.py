"""Displays in scikit-learn's style: spectra, ablation curves and interaction graphs.

As with :class:`sklearn.metrics.RocCurveDisplay`, each display holds the data
it draws (its constructor's parameters) and draws it with ``plot``; the
``from_*`` class methods compute the data and plot in one call.  After
``plot`` the display carries the matplotlib objects it drew, ``ax_`` and
``figure_`` among them, so figures can be adjusted afterwards.  Passing
``ax=display.ax_`` to another ``from_estimator`` draws a second estimator on
the same axes (LIB next to PCA).

matplotlib is imported only when something is drawn (``pip install -e
".[plot]"`` in a checkout).
"""

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._drawing.figure import axes_or_new, pyplot
from ._drawing.graph_display import InteractionGraphDisplay
from ._fitted import fitted, takes_estimator
from .ablation import ablation_curve

__all__ = ["AblationCurveDisplay", "InteractionGraphDisplay", "SpectrumDisplay"]


def _curve(values, name):
    """A 1-D float array of finite values, refused with a message naming ``name``."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return values


def _label_of(kwargs, names):
    """The line label a caller passed as matplotlib's ``label``, for a display of one line.

    scikit-learn's displays accept ``label`` among the line keywords; a
    display of several lines names them in its data instead.
    """
    label = kwargs.pop("label", None)
    if label is not None and len(names) != 1:
        raise ValueError(
            f"label={label!r} names one line, but this display draws {len(names)}: "
            "name them in its data (the keys) instead"
        )
    return label


def _label_axes(ax, xlabel, ylabel, title, generic_title):
    """Axis labels and title, without overwriting what the axes already say.

    A second display on the same axes keeps the first one's labels; a title
    of this kind of display for another layer becomes ``generic_title``, and
    a title of the user's own is kept.
    """
    if not ax.get_xlabel():
        ax.set_xlabel(xlabel)
    if not ax.get_ylabel():
        ax.set_ylabel(ylabel)
    current = ax.get_title()
    if not current:
        ax.set_title(title)
    elif current != title and current.startswith(generic_title):
        ax.set_title(generic_title)


def _score_name(scoring, labelled):
    """How an axis names the score of ``scoring``."""
    if isinstance(scoring, str):
        return scoring
    if scoring is None:
        return "accuracy" if labelled else "R² of the outputs"
    return getattr(scoring, "__name__", "score")


# -- spectra ---------------------------------------------------------------------------


def _spectrum_of(source, layer=None):
    """``(values, label, layer)`` of a fitted estimator's spectrum, or of an array.

    LIB's Lambda for a ``LIBTransformer`` (``basis="lib"``; the variances for
    ``basis="pca"``) or a ``Pipeline`` starting with one, the variances of
    ``Pipeline([ActivationTransformer, PCA])`` or of a fitted scikit-learn
    decomposition with ``explained_variance_`` (``PCA``, ``IncrementalPCA``,
    ``TruncatedSVD``); anything else is taken as an array of eigenvalues.
    """
    if takes_estimator(source):
        state = fitted(source, layer)  # refuses unfitted estimators by name
        state.warn_if_positions_flattened()
        basis = state.basis
        kind = "LIB Lambda" if basis.kind == "lib" else "PCA variance"
        return basis.lambdas, f"{kind} of {basis.name!r}", basis.name
    if isinstance(source, BaseEstimator):
        check_is_fitted(source)
        if not hasattr(source, "explained_variance_"):
            raise TypeError(
                f"{type(source).__name__} has no spectrum: expected a fitted LIBTransformer, "
                "a Pipeline, an estimator with explained_variance_ (PCA) or an array"
            )
        name = type(source).__name__
        return source.explained_variance_, f"{name} variance (sklearn)", None
    try:
        values = np.asarray(source, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            "Expected a fitted LIBTransformer, a Pipeline, an estimator with "
            f"explained_variance_ (PCA) or an array of eigenvalues; got {type(source).__name__}"
        ) from exc
    return _curve(values, "a spectrum"), "spectrum", None


def _spectra(sources, names=None, layer=None):
    """``({label: values}, layer)`` of several sources, for one display.

    ``names`` (one per source, None for the default label) label the legend;
    ``layer`` picks the node layer of every source fitted at several.  The layer is returned
    when the sources name exactly one.
    """
    if names and len(names) != len(sources):
        raise ValueError(f"{len(names)} labels for {len(sources)} spectra")
    spectra, layers = {}, set()
    for i, source in enumerate(sources):
        values, label, node = _spectrum_of(source, layer)
        if names and names[i] is not None:
            label = names[i]
        if label in spectra:  # two sources of one kind: tell them apart
            label = f"{label} ({i + 1})"
        spectra[label] = np.asarray(values, dtype=float)
        layers.add(node)
    named = layers - {None}
    return spectra, (named.pop() if len(named) == 1 else None)


def _positive_spectrum(values, name, normalize):
    """Eigenvalues to draw on a log axis: zeros and negatives (roundoff of a
    null space) become gaps, not points at 1e-308; optionally over the largest."""
    values = _curve(values, f"the spectrum {name!r}")
    positive = values > 0
    if not positive.any():
        raise ValueError(f"the spectrum {name!r} has no positive value to draw on a log axis")
    values = np.where(positive, values, np.nan)
    return values / np.nanmax(values) if normalize else values


class SpectrumDisplay:
    """Eigenvalue spectra on a log scale: LIB's Lambda next to PCA's variances.

    Build it with :meth:`from_estimator`; the constructor takes spectra that
    are already computed.

    Parameters
    ----------
    spectra : dict of str to array-like of shape (n_features,)
        Name (the legend's label) to eigenvalues, largest first.
    layer : str, optional
        The node layer the spectra belong to, named in the title.
    normalize : bool, default=True
        Divide each spectrum by its largest value, so that shapes compare
        across bases whose scales differ (Lambda and variances).

    Attributes
    ----------
    lines_ : dict of str to matplotlib Line2D
        One line per spectrum.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.decomposition import PCA
    >>> from sklearn_lib import ActivationTransformer, LIBTransformer, SpectrumDisplay
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> X = np.random.default_rng(0).normal(size=(100, 4))
    >>> lib = LIBTransformer(model, "2").fit(X)
    >>> pca = make_pipeline(ActivationTransformer(model, "2"), PCA()).fit(X)
    >>> display = SpectrumDisplay.from_estimator(lib, pca)
    >>> list(display.lines_)
    ["LIB Lambda of '2'", "PCA variance of '2'"]
    >>> display.ax_.get_title()
    "Spectrum of '2'"
    """

    def __init__(self, spectra, *, layer=None, normalize=True):
        self.spectra = spectra
        self.layer = layer
        self.normalize = normalize

    def plot(self, ax=None, **kwargs):
        """Draw the spectra on ``ax`` (a new figure when None).

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draw here, next to what the axes already hold.
        **kwargs
            Passed to ``ax.semilogy`` for every line (e.g. ``marker``).

        Returns
        -------
        SpectrumDisplay
            ``self``, with ``lines_``, ``ax_`` and ``figure_`` set.
        """
        label = _label_of(kwargs, self.spectra)
        spectra = {
            label or name: _positive_spectrum(values, name, self.normalize)
            for name, values in self.spectra.items()
        }
        ax = axes_or_new(ax)
        style = {"marker": ".", **kwargs}
        self.lines_ = {
            name: ax.semilogy(np.arange(len(values)), values, label=name, **style)[0]
            for name, values in spectra.items()
        }
        title = f"Spectrum of {self.layer!r}" if self.layer is not None else "Spectrum"
        ylabel = "eigenvalue / max" if self.normalize else "eigenvalue"
        _label_axes(ax, "feature (sorted)", ylabel, title, "Spectrum")
        ax.legend()
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_estimator(
        cls, lib, pca=None, *, layer=None, name=None, normalize=True, ax=None, **kwargs
    ):
        """Spectra of fitted estimators: Lambda of a LIB fit, next to PCA's variances.

        Parameters
        ----------
        lib : LIBTransformer, Pipeline or PCA
            Fitted.  A ``LIBTransformer`` gives the Lambda of ``layer`` (the
            variances for ``basis="pca"``); a ``Pipeline`` starting with one
            gives the same; ``Pipeline([ActivationTransformer, PCA])`` and a
            ``PCA`` give their variances (the pipeline warns with
            :class:`~sklearn_lib.exceptions.FlattenedPositionsWarning` on a
            layer with positions, whose variances are of flattened vectors).
        pca : same types as ``lib``, optional
            A second spectrum on the same axes, typically a PCA of the same
            layer.
        layer : str, optional
            For a ``LIBTransformer``: any of its fitted node layers (default:
            its ``layer``), for ``lib`` and ``pca`` alike (a PCA pipeline must
            read this layer).
        name : str, optional
            Legend label of ``lib`` (default: what it is and its layer).
        normalize : bool, default=True
            Divide each spectrum by its largest value.
        ax : matplotlib Axes, optional
            Draw here, e.g. ``ax=display.ax_`` to add a third estimator.
        **kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        SpectrumDisplay
        """
        sources = [lib] if pca is None else [lib, pca]
        spectra, node = _spectra(sources, [name, None][: len(sources)], layer)
        display = cls(spectra, layer=node, normalize=normalize)
        return display.plot(ax=ax, **kwargs)


# -- ablation curves -------------------------------------------------------------------


def _checked_curve(name, curve):
    """``(n_features, scores)`` as float arrays of one length, counts >= 0."""
    if len(curve) != 2:
        raise ValueError(f"curve {name!r} must be a pair (n_features, scores)")
    n = _curve(curve[0], f"n_features of {name!r}")
    scores = _curve(curve[1], f"scores of {name!r}")
    if n.shape != scores.shape:
        raise ValueError(f"curve {name!r}: {n.size} feature counts but {scores.size} scores")
    if n.min() < 0:
        raise ValueError(f"curve {name!r}: feature counts must be >= 0; got {n.min():g}")
    return n, scores


class AblationCurveDisplay:
    """Score against the number of kept features (node ablation), one line per basis.

    Build it with :meth:`from_estimator` (computes the curve with
    :func:`~sklearn_lib.ablation_curve`) or :meth:`from_curves` (curves that
    are already computed).

    Parameters
    ----------
    curves : dict of str to (array-like, array-like)
        Name (the legend's label) to ``(n_features, scores)``, as
        :func:`~sklearn_lib.ablation_curve` returns them.
    baseline : float, optional
        The unablated score, drawn as a dashed line.
    score_name : str, default="score"
        The y-axis label.
    layer : str, optional
        The ablated node layer, named in the title.

    Attributes
    ----------
    lines_ : dict of str to matplotlib Line2D
        One line per curve.
    baseline_line_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from sklearn_lib import AblationCurveDisplay
    >>> display = AblationCurveDisplay.from_curves(
    ...     {"LIB": ([0, 1, 2], [0.1, 0.8, 0.9]), "PCA": ([0, 1, 2], [0.1, 0.3, 0.9])},
    ...     baseline=0.9, score_name="accuracy")
    >>> display.lines_["PCA"].get_ydata()
    array([0.1, 0.3, 0.9])
    """

    def __init__(self, curves, *, baseline=None, score_name="score", layer=None):
        self.curves = curves
        self.baseline = baseline
        self.score_name = score_name
        self.layer = layer

    def plot(self, ax=None, **kwargs):
        """Draw the curves on ``ax`` (a new figure when None).

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draw here, next to what the axes already hold.
        **kwargs
            Passed to ``ax.plot`` for every curve (e.g. ``marker``).

        Returns
        -------
        AblationCurveDisplay
            ``self``, with ``lines_``, ``baseline_line_``, ``ax_`` and ``figure_`` set.
        """
        label = _label_of(kwargs, self.curves)
        curves = {label or name: _checked_curve(name, curve) for name, curve in self.curves.items()}
        if self.baseline is not None and not np.isfinite(self.baseline):
            raise ValueError(f"baseline must be a finite score; got {self.baseline!r}")
        ax = axes_or_new(ax)
        style = {"marker": "o", **kwargs}
        self.lines_ = {
            name: ax.plot(n, scores, label=name, **style)[0] for name, (n, scores) in curves.items()
        }
        self.baseline_line_ = None
        if self.baseline is not None:
            # Several displays on one axis with one baseline: one dashed line.
            drawn = [
                line
                for line in ax.get_lines()
                if line.get_label() == "unablated"
                and np.allclose(line.get_ydata(), self.baseline, rtol=0, atol=0)
            ]
            self.baseline_line_ = (
                drawn[0]
                if drawn
                else ax.axhline(self.baseline, color="grey", linestyle="--", label="unablated")
            )
        # Feature counts run from 0 (everything ablated) over orders of
        # magnitude; symlog shows both, where log cannot show 0.
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        title = "Node ablation" + (f" of {self.layer!r}" if self.layer is not None else "")
        _label_axes(ax, "features kept", self.score_name, title, "Node ablation")
        ax.legend()
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y=None,
        *,
        n_features,
        layer=None,
        scoring=None,
        name=None,
        baseline=None,
        ax=None,
        verbose=False,
        **kwargs,
    ):
        """Ablation curve of a fitted estimator (see :func:`~sklearn_lib.ablation_curve`).

        Parameters
        ----------
        estimator : LIBTransformer or Pipeline
            Fitted: a ``LIBTransformer``, a ``Pipeline`` starting with one, or
            ``Pipeline([ActivationTransformer, PCA, ...])`` (which warns with
            ``FlattenedPositionsWarning`` on a layer with positions).
        X : array-like, dict of them, DataLoader or iterable of batches
            Model inputs (the paper evaluates on the test split).
        y : array-like, default=None
            Class labels, or None (R² against the unablated outputs).
        n_features : int or array-like of int
            Feature counts ``k`` to keep.
        layer : str, optional
            For a ``LIBTransformer``: any of its fitted node layers.
        scoring : None, "accuracy", "r2" or callable, default=None
            As in :func:`~sklearn_lib.ablation_curve`.
        name : str, optional
            Legend label (default: "LIB" or "PCA", from the estimator's basis).
        baseline : float, optional
            The unablated score, drawn as a dashed line.
        ax : matplotlib Axes, optional
            Draw here, e.g. ``ax=display.ax_`` to add PCA next to LIB.
        verbose : bool, default=False
            Progress of the ablation passes.
        **kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        AblationCurveDisplay
        """
        pyplot()  # before the ablation passes, not after them
        # ablation_curve warns of a PCA of flattened positions, once.
        basis = fitted(estimator, layer).basis
        n, scores = ablation_curve(
            estimator, X, y, n_features=n_features, layer=layer, scoring=scoring, verbose=verbose
        )
        label = basis.kind.upper() if name is None else name
        score_name = _score_name(scoring, y is not None)
        display = cls(
            {label: (n, scores)}, baseline=baseline, score_name=score_name, layer=basis.name
        )
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_curves(
        cls, curves, *, baseline=None, score_name="score", layer=None, ax=None, **kwargs
    ):
        """Curves that are already computed, e.g. by :func:`~sklearn_lib.ablation_curve`.

        Parameters
        ----------
        curves : dict of str to (array-like, array-like)
            Name to ``(n_features, scores)``, e.g.
            ``{"LIB": ablation_curve(lib, ...), "PCA": ablation_curve(pca, ...)}``.
        baseline : float, optional
            The unablated score, drawn as a dashed line.
        score_name : str, default="score"
            The y-axis label.
        layer : str, optional
            The ablated node layer, named in the title.
        ax : matplotlib Axes, optional
            Draw here.
        **kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        AblationCurveDisplay
        """
        curves = dict(curves)
        if not curves:
            raise ValueError("curves is empty: give at least one (n_features, scores) pair")
        checked = {name: _checked_curve(name, curve) for name, curve in curves.items()}
        display = cls(checked, baseline=baseline, score_name=score_name, layer=layer)
        return display.plot(ax=ax, **kwargs)
