"""Plotting functions (matplotlib, imported lazily: ``pip install -e ".[plot]"``).

The figures are drawn by the display classes, :class:`~sklearn_lib.SpectrumDisplay`,
:class:`~sklearn_lib.AblationCurveDisplay` and
:class:`~sklearn_lib.InteractionGraphDisplay`, which also keep the data they
drew; the functions here draw the same figures and return only the axes.
"""

import numpy as np

from ._display import AblationCurveDisplay, SpectrumDisplay, _spectra
from ._drawing.figure import axes_or_new
from ._drawing.graph_display import InteractionGraphDisplay

__all__ = ["plot_ablation_curves", "plot_edges_needed", "plot_interaction_graph", "plot_spectrum"]


def plot_spectrum(*sources, labels=None, normalize=True, ax=None):
    """Eigenvalue spectra on a log scale, e.g. LIB's Lambda next to PCA's variances.

    Parameters
    ----------
    *sources : LIBTransformer, PCA, Pipeline or array-like
        Fitted estimators (their full spectra) or arrays of eigenvalues.
    labels : list of str, optional
        Legend labels, one per source (default: what each source is).
    normalize : bool, default=True
        Divide each spectrum by its largest value, so shapes compare.
    ax : matplotlib Axes, optional
        Draw here (a new figure when None).

    Returns
    -------
    matplotlib Axes

    See Also
    --------
    sklearn_lib.SpectrumDisplay.from_estimator : the same figure, keeping its data.
    """
    spectra, layer = _spectra(sources, labels)
    return SpectrumDisplay(spectra, layer=layer, normalize=normalize).plot(ax=ax).ax_


def plot_ablation_curves(curves, *, baseline=None, ax=None, ylabel="score"):
    """Score against the number of kept features, one line per basis.

    Parameters
    ----------
    curves : dict of str to (n_features, scores)
        E.g. ``{"LIB": ablation_curve(lib, ...), "PCA": ablation_curve(pca, ...)}``.
    baseline : float, optional
        The unablated score, drawn as a dashed line.
    ax : matplotlib Axes, optional
        Draw here (a new figure when None).
    ylabel : str, default="score"
        The y-axis label.

    Returns
    -------
    matplotlib Axes

    See Also
    --------
    sklearn_lib.AblationCurveDisplay.from_curves : the same figure, keeping its data.
    """
    display = AblationCurveDisplay.from_curves(curves, baseline=baseline, score_name=ylabel, ax=ax)
    return display.ax_


def plot_edges_needed(results, *, ax=None):
    """Edges needed per section, side by side for several bases.

    Parameters
    ----------
    results : dict of str to dict of (str, str) to Sparsity
        E.g. ``{"LIB": edges_needed(lib, ...), "PCA": edges_needed(pca, ...)}``:
        one group of bars per section (the sections of the first entry, which
        every entry must have), one bar per entry: the ``n_needed`` of its
        :class:`~sklearn_lib.Sparsity`, on a symlog axis (so that a section
        needing no edge shows).
    ax : matplotlib Axes, optional
        Draw here (a new figure when None).

    Returns
    -------
    matplotlib Axes
        The axes drawn on, with a bar label on each bar and a legend of the
        entries.

    See Also
    --------
    sklearn_lib.edges_needed : the results drawn here.
    """
    if not results or not all(results.values()):
        raise ValueError(
            "results is empty: give {name: edges_needed(...)} with at least one section"
        )
    labels = list(results)
    sections = list(next(iter(results.values())))
    ax = axes_or_new(ax)
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(sections))
    for i, label in enumerate(labels):
        values = [results[label][s].n_needed for s in sections]
        bars = ax.bar(x + i * width, values, width, label=label)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x + width * (len(labels) - 1) / 2)
    ax.set_xticklabels([f"{a} ->\n{b}" for a, b in sections], fontsize=8)
    # Counts span orders of magnitude; symlog keeps a section that needs
    # no edge at all (a valid result) on the axis, where log cannot.
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("edges needed")
    ax.set_title("Edges needed to keep the score")
    ax.legend()
    return ax


def plot_interaction_graph(
    graph, top_edges=200, *, max_features=30, ax=None, cmap="viridis", labels=None
):
    """Layered drawing of an interaction graph.

    Parameters
    ----------
    graph : InteractionGraph
    top_edges : int, default=200
        Edges drawn per section, strongest first.
    max_features : int, default=30
        Features drawn per node layer, top ``Lambda`` first.
    ax : matplotlib Axes, optional
        Draw here (a new figure when None).
    cmap : str or matplotlib Colormap, default="viridis"
        Colours of ``log10(Lambda)``.
    labels : tokenizer, sequence of str, dict or None, default=None
        Text of features next to their index: a tokenizer or a vocabulary
        names the output's tokens (see :class:`~sklearn_lib.InteractionGraphDisplay`).

    Returns
    -------
    matplotlib Axes

    See Also
    --------
    sklearn_lib.InteractionGraphDisplay.from_graph : the same figure, keeping its
        data; its docstring says how the graph is drawn.
    """
    display = InteractionGraphDisplay.from_graph(
        graph, top_edges=top_edges, max_features=max_features, ax=ax, cmap=cmap, labels=labels
    )
    return display.ax_
