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

import reprlib
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._drawing.figure import axes_or_new, pyplot
from ._drawing.graph_display import InteractionGraphDisplay
from ._fitted import fitted, takes_estimator
from .ablation import ablation_curve

__all__ = ["AblationCurveDisplay", "InteractionGraphDisplay", "SpectrumDisplay"]


#: Keywords of ``ax.plot`` that are not line properties.
_PLOT_ONLY = ("scalex", "scaley", "data")


def _describe(value):
    """``value``'s type and a short repr, for messages."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _numbers(values):
    """``values`` as an array of real numbers (ints or floats), or None if they are not."""
    try:
        values = np.asarray(values)
    except (TypeError, ValueError):  # ragged nested sequences, among others
        return None
    return values if values.dtype.kind in "iuf" else None


def _curve(values, name):
    """A 1-D float array of finite values, refused with a message naming ``name``."""
    numbers = _numbers(values)
    if numbers is None:
        raise TypeError(f"{name} must be a 1-D array of numbers; got {_describe(values)}")
    values = numbers.astype(float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return values


def _check_optional_str(value, name):
    """Raise TypeError unless ``value`` is a str or None."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None; got {_describe(value)}")


def _check_bool(value, name):
    """Raise TypeError unless ``value`` is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {_describe(value)}")


def _non_empty_dict(value, name, what):
    """``value`` if it is a non-empty dict (``what`` says of what); else TypeError or ValueError."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of {what}; got {_describe(value)}")
    if not value:
        raise ValueError(f"{name} is empty: give at least one {what} entry")
    return value


def _check_line_style(style):
    """Raise TypeError (an unknown keyword) or ValueError (a bad value) unless ``style``
    holds matplotlib line properties: before anything is drawn, not deep inside it."""
    from matplotlib.lines import Line2D

    properties = {key: value for key, value in style.items() if key not in _PLOT_ONLY}
    try:
        Line2D([], [], **properties)
    except (AttributeError, TypeError) as exc:  # matplotlib's unknown property
        raise TypeError(f"keyword arguments for the lines: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"keyword arguments for the lines: {exc}") from None


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


def _spectrum_of(source, layer=None, argument="a spectrum"):
    """``(values, label, layer)`` of a fitted estimator's spectrum, or of an array.

    LIB's Lambda for a ``LIBTransformer`` (``basis="lib"``; the variances for
    ``basis="pca"``) or a ``Pipeline`` starting with one, the variances of
    ``Pipeline([ActivationTransformer, PCA])`` or of a fitted scikit-learn
    decomposition with ``explained_variance_`` (``PCA``, ``IncrementalPCA``,
    ``TruncatedSVD``); anything else is taken as an array of eigenvalues.
    ``argument`` names the source in messages (``"lib"``).
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
    if _numbers(source) is None:
        raise TypeError(
            "Expected a fitted LIBTransformer, a Pipeline, an estimator with "
            f"explained_variance_ (PCA) or an array of eigenvalues as {argument}; "
            f"got {_describe(source)}"
        )
    return _curve(source, argument), "spectrum", None


def _spectra(sources, names=None, layer=None, *, arguments=None):
    """``({label: values}, layer)`` of several sources, for one display.

    ``names`` (one per source, None for the default label) label the legend;
    ``layer`` picks the node layer of every source fitted at several.  The layer is returned
    when the sources name exactly one.  ``arguments`` name the sources in
    messages (default ``sources[i]``).
    """
    if names is not None and (
        not isinstance(names, (list, tuple))
        or not all(n is None or isinstance(n, str) for n in names)
    ):
        raise TypeError(f"labels must be a list of str, one per spectrum; got {_describe(names)}")
    if names and len(names) != len(sources):
        raise ValueError(f"{len(names)} labels for {len(sources)} spectra")
    if not sources:
        raise ValueError("no spectrum to draw: give at least one estimator or array")
    _check_optional_str(layer, "layer")
    arguments = arguments or [f"sources[{i}]" for i in range(len(sources))]
    spectra, layers = {}, set()
    for i, source in enumerate(sources):
        values, label, node = _spectrum_of(source, layer, arguments[i])
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
        _non_empty_dict(self.spectra, "spectra", "name -> eigenvalues")
        _check_optional_str(self.layer, "layer")
        _check_bool(self.normalize, "normalize")
        label = _label_of(kwargs, self.spectra)
        spectra = {
            label or name: _positive_spectrum(values, name, self.normalize)
            for name, values in self.spectra.items()
        }
        style = {"marker": ".", **kwargs}
        _check_line_style(style)
        ax = axes_or_new(ax)
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
        _check_optional_str(name, "name")
        sources = [lib] if pca is None else [lib, pca]
        arguments = ["lib", "pca"][: len(sources)]
        spectra, node = _spectra(sources, [name, None][: len(sources)], layer, arguments=arguments)
        display = cls(spectra, layer=node, normalize=normalize)
        return display.plot(ax=ax, **kwargs)


# -- ablation curves -------------------------------------------------------------------


def _checked_curve(name, curve):
    """``(n_features, scores)`` as float arrays of one length, counts whole and >= 0."""
    if isinstance(curve, str) or not isinstance(curve, (Sequence, np.ndarray)):
        raise TypeError(
            f"curve {name!r} must be a pair (n_features, scores); got {_describe(curve)}"
        )
    if len(curve) != 2:
        raise ValueError(f"curve {name!r} must be a pair (n_features, scores)")
    n = _curve(curve[0], f"n_features of {name!r}")
    scores = _curve(curve[1], f"scores of {name!r}")
    if n.shape != scores.shape:
        raise ValueError(f"curve {name!r}: {n.size} feature counts but {scores.size} scores")
    if n.min() < 0:
        raise ValueError(f"curve {name!r}: feature counts must be >= 0; got {n.min():g}")
    if np.any(n != np.round(n)):
        raise ValueError(f"curve {name!r}: feature counts must be whole numbers; got {n}")
    return n, scores


def _check_baseline(baseline):
    """``baseline`` as a float (or None): TypeError unless a number, ValueError unless finite.

    A 0-d array or tensor (a score computed by numpy or torch) is a number too;
    a bool is not.
    """
    if baseline is None:
        return None
    number = None if isinstance(baseline, (bool, np.bool_)) else _numbers(baseline)
    if number is None or number.ndim != 0:
        raise TypeError(
            f"baseline must be a number (the unablated score) or None; got {_describe(baseline)}"
        )
    if not np.isfinite(number):
        raise ValueError(f"baseline must be a finite score; got {baseline!r}")
    return float(number)


def _check_ablation_labels(baseline, score_name, layer):
    """The checks of :class:`AblationCurveDisplay`'s parameters but its curves; returns
    the baseline as a float or None."""
    if not isinstance(score_name, str):
        raise TypeError(f"score_name must be a str; got {_describe(score_name)}")
    _check_optional_str(layer, "layer")
    return _check_baseline(baseline)


def _check_before_passes(X, baseline, name, layer):
    """matplotlib and the display's own arguments of :meth:`AblationCurveDisplay.from_estimator`:
    a missing or bad one found after the ablation passes would waste them."""
    pyplot()
    _check_ablation_labels(baseline, "score", layer)
    _check_optional_str(name, "name")
    if isinstance(X, (str, bytes)):
        raise TypeError(
            "X must be the model's inputs (an array-like, a dict of them, a DataLoader "
            f"or an iterable of batches); got {_describe(X)}"
        )


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
        _non_empty_dict(self.curves, "curves", "name -> (n_features, scores)")
        baseline = _check_ablation_labels(self.baseline, self.score_name, self.layer)
        label = _label_of(kwargs, self.curves)
        curves = {label or name: _checked_curve(name, curve) for name, curve in self.curves.items()}
        style = {"marker": "o", **kwargs}
        _check_line_style(style)
        ax = axes_or_new(ax)
        self.lines_ = {
            name: ax.plot(n, scores, label=name, **style)[0] for name, (n, scores) in curves.items()
        }
        self.baseline_line_ = None
        if baseline is not None:
            # Several displays on one axis with one baseline: one dashed line.
            drawn = [
                line
                for line in ax.get_lines()
                if line.get_label() == "unablated"
                and np.allclose(line.get_ydata(), baseline, rtol=0, atol=0)
            ]
            self.baseline_line_ = (
                drawn[0]
                if drawn
                else ax.axhline(baseline, color="grey", linestyle="--", label="unablated")
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
        _check_before_passes(X, baseline, name, layer)
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
        curves = dict(_non_empty_dict(curves, "curves", "name -> (n_features, scores)"))
        checked = {name: _checked_curve(name, curve) for name, curve in curves.items()}
        display = cls(checked, baseline=baseline, score_name=score_name, layer=layer)
        return display.plot(ax=ax, **kwargs)
