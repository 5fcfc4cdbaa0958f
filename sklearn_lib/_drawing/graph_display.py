"""The drawing of an interaction graph (:class:`InteractionGraphDisplay`).

Apart from the estimator-level displays of :mod:`~sklearn_lib._display`
because :meth:`InteractionGraph.plot <sklearn_lib.InteractionGraph.plot>`
uses it, and the graph module sits below the estimators.
"""

import numpy as np

from .figure import axes_or_new

_TINY = np.finfo(float).tiny

_GRAPH_FIELDS = ("nodes", "sections", "edges", "lambdas")


def _strongest_edges(graph, top_edges, shown):
    """Per section, the ``top_edges`` strongest edges among the shown features.

    Returns ``{section: (i, j, share)}``: output feature ``i``, input feature
    ``j`` and the edge's share of the section's largest shown edge, weakest
    first (so that strong edges are drawn on top).
    """
    strongest = {}
    for src, dst in graph.sections:
        E = graph.edges[(src, dst)][: shown[dst], : shown[src]]
        if E.size == 0 or E.max() <= 0:
            strongest[(src, dst)] = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
            continue
        order = np.argsort(-E, axis=None, kind="stable")[:top_edges]
        # An edge of zero is no interaction; drawn, it would look like a weak one.
        order = order[E.flat[order] > 0][::-1]
        i, j = np.unravel_index(order, E.shape)
        strongest[(src, dst)] = (i, j, E.flat[order] / E.max())
    return strongest


def _edge_style(share):
    """Line style of an edge that is ``share`` of its section's largest."""
    return {"color": "tab:blue", "alpha": 0.3 + 0.7 * share, "linewidth": 0.3 + 4 * share}


class InteractionGraphDisplay:
    """Layered drawing of an :class:`~sklearn_lib.InteractionGraph`.

    Node layers are columns (forward order, left to right); each node's
    features are dots sorted by ``Lambda`` (top first, at most
    ``max_features``: a layer cut to its top features says so under its
    name), labelled by feature index, sized by ``Lambda`` and coloured by
    ``log10(Lambda)`` (the colour bar).  The ``top_edges`` strongest edges of
    each section are lines whose width grows with the edge's share of the
    section's largest edge (the legend).

    Parameters
    ----------
    graph : InteractionGraph
    top_edges : int, default=200
        Edges drawn per section, strongest first.
    max_features : int, default=30
        Features drawn per node layer, top ``Lambda`` first.

    Attributes
    ----------
    features_shown_ : dict of str to int
        Features drawn per node layer.
    edges_shown_ : dict of (str, str) to (ndarray, ndarray, ndarray)
        Per section, the drawn edges as output feature, input feature and
        share of the section's largest drawn edge.
    nodes_ : dict of str to matplotlib PathCollection
    edge_lines_ : list of matplotlib Line2D
    colorbar_ : matplotlib Colorbar or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, graph, *, top_edges=200, max_features=30):
        self.graph = graph
        self.top_edges = top_edges
        self.max_features = max_features

    def _check(self):
        # Duck-typed: the graph module imports this one, not the other way round.
        if not all(hasattr(self.graph, field) for field in _GRAPH_FIELDS):
            raise TypeError(f"graph must be an InteractionGraph; got {type(self.graph).__name__}")
        for name in ("top_edges", "max_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")

    def plot(self, ax=None, *, cmap="viridis"):
        """Draw the graph on ``ax`` (a new figure when None).

        Parameters
        ----------
        ax : matplotlib Axes, optional
        cmap : str or matplotlib Colormap, default="viridis"
            Colours of ``log10(Lambda)``.

        Returns
        -------
        InteractionGraphDisplay
            ``self``, with the attributes set.
        """
        self._check()
        graph = self.graph
        ax = axes_or_new(ax, figsize=(2.5 * len(graph.nodes) + 2, 6))
        self.features_shown_ = {
            n: min(len(graph.lambdas[n]), self.max_features) for n in graph.nodes
        }
        self.edges_shown_ = _strongest_edges(graph, self.top_edges, self.features_shown_)
        self.edge_lines_ = []
        for col, section in enumerate(graph.sections):
            for i, j, share in zip(*self.edges_shown_[section]):
                (line,) = ax.plot([col, col + 1], [-j, -i], **_edge_style(share), zorder=1)
                self.edge_lines_.append(line)
        self._draw_nodes(ax, cmap)
        self._label(ax)
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _draw_nodes(self, ax, cmap):
        """The features of every node as dots, sized by Lambda and coloured by its log10."""
        graph = self.graph
        # One colour scale for every layer, so that colours compare across columns.
        colours = np.log10(
            np.clip(np.concatenate([graph.lambdas[n] for n in graph.nodes]), _TINY, None)
        )
        self.nodes_ = {}
        for col, node in enumerate(graph.nodes):
            lam = graph.lambdas[node][: self.features_shown_[node]]
            self.nodes_[node] = ax.scatter(
                np.full(len(lam), col),
                -np.arange(len(lam)),
                s=20 + 180 * lam / max(lam.max(initial=0.0), _TINY),
                c=np.log10(np.clip(lam, _TINY, None)),
                cmap=cmap,
                vmin=colours.min(initial=0.0),
                vmax=colours.max(initial=0.0),
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

    def _label(self, ax):
        """Node names (saying where a layer is cut to its top), title, colour bar, legend."""
        graph = self.graph
        names = [
            node
            if self.features_shown_[node] == len(graph.lambdas[node])
            else f"{node}\n(top {self.features_shown_[node]} of {len(graph.lambdas[node])})"
            for node in graph.nodes
        ]
        ax.set_xticks(range(len(graph.nodes)))
        ax.set_xticklabels(names, rotation=20)
        ax.set_yticks([])
        ax.set_ylabel("features (sorted by Lambda)")
        ax.set_title(f"Interaction graph (top {self.top_edges} edges per section)")
        self.colorbar_ = None
        if self.nodes_:
            last = self.nodes_[graph.nodes[-1]]
            self.colorbar_ = ax.figure.colorbar(last, ax=ax, label="log10 Lambda", fraction=0.04)
        handles = [
            ax.plot([], [], **_edge_style(s), label=f"{s:.0%} of the section's largest")[0]
            for s in (1.0, 0.5, 0.1)
        ]
        ax.legend(handles=handles, title="edge", loc="lower left", fontsize=7, title_fontsize=7)

    @classmethod
    def from_graph(cls, graph, *, top_edges=200, max_features=30, ax=None, cmap="viridis"):
        """Draw an interaction graph.

        Parameters
        ----------
        graph : InteractionGraph
            From :meth:`LIBTransformer.interaction_graph
            <sklearn_lib.LIBTransformer.interaction_graph>`, the fitted
            ``interaction_graph_`` of ``compute_graph=True``, or
            :meth:`InteractionGraph.load <sklearn_lib.InteractionGraph.load>`.
        top_edges : int, default=200
            Edges drawn per section, strongest first.
        max_features : int, default=30
            Features drawn per node layer, top ``Lambda`` first.
        ax : matplotlib Axes, optional
        cmap : str or matplotlib Colormap, default="viridis"

        Returns
        -------
        InteractionGraphDisplay
        """
        display = cls(graph, top_edges=top_edges, max_features=max_features)
        return display.plot(ax=ax, cmap=cmap)
