"""Figures for LIB results (matplotlib, imported lazily: ``pip install -e ".[plot]"``).

Every function draws on ``ax`` (a new figure when None) and returns the axes.
"""

import numpy as np


def _axes(ax, figsize=(6, 4)):
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting needs matplotlib: pip install matplotlib (or, in a checkout of "
            'sklearn-lib, pip install -e ".[plot]")'
        ) from exc
    return plt.subplots(figsize=figsize)[1]


def _spectrum_of(source):
    """Eigenvalues, their default label and their layer (or None), of a fitted
    LIBTransformer (Lambda), a PCA (variances) or an array."""
    if hasattr(source, "bases_"):
        basis = source.bases_[source.layer]
        kind = "LIB Lambda" if basis.kind == "lib" else "PCA variance"
        return basis.lambdas, f"{kind} of {source.layer!r}", source.layer
    if hasattr(source, "explained_variance_"):
        return source.explained_variance_, "PCA variance (sklearn)", None
    return np.asarray(source, dtype=float), "spectrum", None


def plot_spectrum(*sources, labels=None, normalize=True, ax=None):
    """Eigenvalue spectra on a log scale, e.g. LIB's Lambda next to PCA's variances.

    Parameters
    ----------
    *sources : LIBTransformer, PCA or array-like
        Fitted estimators (their full spectra) or arrays of eigenvalues.
    labels : list of str, optional
    normalize : bool, default=True
        Divide each spectrum by its largest value, so shapes compare.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    ax = _axes(ax)
    layers = set()
    for i, source in enumerate(sources):
        values, default, layer = _spectrum_of(source)
        layers.add(layer)
        values = np.clip(np.asarray(values, dtype=float), np.finfo(float).tiny, None)
        if normalize:
            values = values / values.max()
        label = labels[i] if labels else default
        ax.semilogy(np.arange(len(values)), values, marker=".", label=label)
    ax.set_xlabel("feature (sorted)")
    ax.set_ylabel("eigenvalue / max" if normalize else "eigenvalue")
    named = layers - {None}
    ax.set_title(f"Spectrum of {named.pop()!r}" if len(named) == 1 else "Spectrum")
    ax.legend()
    return ax


def plot_ablation_curves(curves, *, baseline=None, ax=None, ylabel="score"):
    """Score against the number of kept features, one line per basis.

    Parameters
    ----------
    curves : dict of str to (n_features, scores)
        E.g. ``{"LIB": ablation_curve(lib, ...), "PCA": ablation_curve(pca, ...)}``.
    baseline : float, optional
        The unablated score, drawn as a dashed line.
    """
    ax = _axes(ax)
    for label, (n, scores) in curves.items():
        ax.plot(n, scores, marker="o", label=label)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label="unablated")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("features kept")
    ax.set_ylabel(ylabel)
    ax.set_title("Node ablation")
    ax.legend()
    return ax


def plot_edges_needed(results, *, ax=None):
    """Edges needed per section, side by side for several bases.

    Parameters
    ----------
    results : dict of str to dict of (str, str) to Sparsity
        E.g. ``{"LIB": edges_needed(lib, ...), "PCA": edges_needed(pca, ...)}``.
    """
    ax = _axes(ax)
    labels = list(results)
    sections = list(next(iter(results.values())))
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


def plot_interaction_graph(graph, top_edges=200, *, max_features=30, ax=None, cmap="viridis"):
    """Layered drawing of an interaction graph.

    Node layers are columns (forward order, left to right); each node's
    features are dots sorted by ``Lambda`` (top first, at most
    ``max_features``: a layer cut to its top features says so under its
    name), labelled by feature index, sized by ``Lambda`` and coloured by
    ``log10(Lambda)`` (the colour bar).  The ``top_edges`` strongest edges of
    each section are lines whose width grows with the edge's share of the
    section's largest edge (the legend).

    Returns
    -------
    matplotlib Axes
    """
    ax = _axes(ax, figsize=(2.5 * len(graph.nodes) + 2, 6))
    shown = {n: min(len(graph.lambdas[n]), max_features) for n in graph.nodes}
    for col, (src, dst) in enumerate(graph.sections):
        E = graph.edges[(src, dst)][: shown[dst], : shown[src]]
        if E.size == 0 or E.max() <= 0:
            continue
        order = np.argsort(-E, axis=None, kind="stable")[:top_edges]
        strength = E.flat[order] / E.max()
        for idx, s in sorted(zip(order, strength), key=lambda t: t[1]):
            i, j = np.unravel_index(idx, E.shape)
            ax.plot([col, col + 1], [-j, -i], **_edge_style(s), zorder=1)
    tiny = np.finfo(float).tiny
    colours = np.log10(np.clip(np.concatenate([graph.lambdas[n] for n in graph.nodes]), tiny, None))
    dots = None
    for col, node in enumerate(graph.nodes):
        lam = graph.lambdas[node][: shown[node]]
        size = 20 + 180 * lam / max(lam.max(), tiny)
        dots = ax.scatter(
            np.full(len(lam), col),
            -np.arange(len(lam)),
            s=size,
            c=np.log10(np.clip(lam, tiny, None)),
            cmap=cmap,
            vmin=colours.min(),
            vmax=colours.max(),
            zorder=2,
            edgecolors="k",
        )
        for j in range(len(lam)):
            ax.annotate(
                str(j),
                (col, -j),
                xytext=(9, 0),
                textcoords="offset points",
                fontsize=6,
                va="center",
                zorder=3,
            )
    names = [
        node
        if shown[node] == len(graph.lambdas[node])
        else f"{node}\n(top {shown[node]} of {len(graph.lambdas[node])})"
        for node in graph.nodes
    ]
    ax.set_xticks(range(len(graph.nodes)))
    ax.set_xticklabels(names, rotation=20)
    ax.set_yticks([])
    ax.set_ylabel("features (sorted by Lambda)")
    ax.set_title(f"Interaction graph (top {top_edges} edges per section)")
    if dots is not None:
        ax.figure.colorbar(dots, ax=ax, label="log10 Lambda", fraction=0.04)
    handles = [
        ax.plot([], [], **_edge_style(s), label=f"{s:.0%} of the section's largest")[0]
        for s in (1.0, 0.5, 0.1)
    ]
    ax.legend(handles=handles, title="edge", loc="lower left", fontsize=7, title_fontsize=7)
    return ax


def _edge_style(share):
    """Line style of an edge that is ``share`` of its section's largest."""
    return {"color": "tab:blue", "alpha": 0.3 + 0.7 * share, "linewidth": 0.3 + 4 * share}
