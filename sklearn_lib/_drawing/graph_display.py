"""The drawing of an interaction graph (:class:`InteractionGraphDisplay`).

Apart from the estimator-level displays of :mod:`~sklearn_lib._display`
because :meth:`InteractionGraph.plot <sklearn_lib.InteractionGraph.plot>`
uses it, and the graph module sits below the estimators.  :func:`feature_names`
turns labels (a tokenizer, a vocabulary) into feature names for the drawing
and for :meth:`InteractionGraph.summary <sklearn_lib.InteractionGraph.summary>`.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from .figure import axes_or_new

_TINY = np.finfo(float).tiny

_GRAPH_FIELDS = ("nodes", "sections", "edges", "lambdas")

_ACCEPTED = (
    "a tokenizer (an object with a decode or convert_ids_to_tokens method), a sequence of "
    "str (feature index -> text), or a dict of node name to either"
)


def _token_text(tokenizer):
    """``text(feature)`` of a tokenizer, read as a token id.

    ``decode`` comes first: it gives the text as printed, where Hugging Face's
    tokens mark spaces with symbols (``'Ġthe'`` for ``' the'``).
    """
    if callable(getattr(tokenizer, "decode", None)):
        return lambda i: str(tokenizer.decode([int(i)]))
    return lambda i: str(tokenizer.convert_ids_to_tokens(int(i)))


def _text_of(node, value, lambdas):
    """``text(feature)`` from the labels of one node, checked against its ``lambdas``."""
    # A str is a sequence of str, and bytes have a decode: neither labels features.
    if isinstance(value, (str, bytes)):
        raise TypeError(f"labels must be {_ACCEPTED}; got {type(value).__name__} for {node!r}")
    if any(callable(getattr(value, m, None)) for m in ("decode", "convert_ids_to_tokens")):
        # Token ids are features only in the identity output basis, whose Lambdas are all 1.
        if not np.all(lambdas == 1):
            raise ValueError(
                "a tokenizer labels token ids, the features of the identity output basis "
                f"(every Lambda 1); node {node!r} has Lambdas from {lambdas.min():.4g} "
                f"to {lambdas.max():.4g}, so its features are not tokens "
                "(output_basis='pca'?): name them with a sequence of str instead"
            )
        # Logits cover the whole vocabulary (a model may pad it, never cut it): a
        # narrower output is something else, e.g. an encoder's hidden state.
        vocabulary = len(value) if hasattr(value, "__len__") else None
        if vocabulary is not None and len(lambdas) < vocabulary:
            raise ValueError(
                f"a tokenizer of {vocabulary} tokens labels the logits over its vocabulary, "
                f"but node {node!r} has {len(lambdas)} features, so its features are not "
                "tokens (a hidden state?): name them with a sequence of str instead"
            )
        return _token_text(value)
    if isinstance(value, (Sequence, np.ndarray)) and all(isinstance(t, str) for t in value):
        if len(value) < len(lambdas):
            raise ValueError(
                f"labels for {node!r} have {len(value)} entries, fewer than its "
                f"{len(lambdas)} features"
            )
        return lambda i: str(value[i])  # a plain str: numpy's has its own repr
    raise TypeError(f"labels must be {_ACCEPTED}; got {type(value).__name__} for {node!r}")


def feature_names(graph, labels=None):
    """How to name each node's features: the index, with its text where labelled.

    Parameters
    ----------
    graph : InteractionGraph
    labels : tokenizer, sequence of str, dict or None, default=None
        As :class:`InteractionGraphDisplay` takes them: alone, the labels of
        the last node (the model output); a dict gives them per node name.

    Returns
    -------
    dict of str to callable
        ``names[node](12)`` is ``"12"``, or ``"12 'the'"`` where ``labels``
        give feature 12 of ``node`` the text ``"the"``.

    Raises
    ------
    TypeError
        If labels are none of those accepted.
    ValueError
        If a dict names a node the graph lacks, a sequence is shorter than its
        node's features, or a tokenizer labels a node whose Lambdas are not
        all 1 (not the identity output basis: not token ids).
    """
    if labels is None:
        labels = {}
    elif not isinstance(labels, Mapping):
        # Alone, labels name the model output's features: tokens in the identity basis.
        labels = {graph.nodes[-1]: labels}
    unknown = [node for node in labels if node not in graph.nodes]
    if unknown:
        raise ValueError(
            f"labels name no node of the graph: {unknown}; its nodes are {graph.nodes}"
        )
    names = dict.fromkeys(graph.nodes, str)
    for node, value in labels.items():
        text = _text_of(node, value, np.asarray(graph.lambdas[node]))
        names[node] = lambda i, text=text: f"{i} {text(i)!r}"
    return names


def _edge_strength(graph):
    """Per node, each feature's total edge strength: its edges in (rows) and out (columns)."""
    strength = {node: np.zeros(len(graph.lambdas[node])) for node in graph.nodes}
    for src, dst in graph.sections:
        E = graph.edges[(src, dst)]
        strength[dst] += E.sum(axis=1)
        strength[src] += E.sum(axis=0)
    return strength


def _ranked_features(graph):
    """Per node, its features best first: by Lambda, ties by total edge strength, then index.

    The ties are the identity output's (every Lambda 1), where a language model's
    first tokens by id would be an arbitrary choice.
    """
    strength = _edge_strength(graph)
    ranked = {}
    for node in graph.nodes:
        lam = np.asarray(graph.lambdas[node])
        # lexsort's last key sorts first.
        ranked[node] = np.lexsort((np.arange(len(lam)), -strength[node], -lam))
    return ranked


def _strongest_edge_features(graph):
    """Per node, its features on a section's strongest edge (``summary``'s first of each)."""
    pinned = {node: [] for node in graph.nodes}
    for src, dst in graph.sections:
        E = graph.edges[(src, dst)]
        if E.size and E.max() > 0:
            # argmax takes the first of tied maxima in row-major order, as summary does.
            i, j = np.unravel_index(np.argmax(E), E.shape)
            pinned[dst].append(int(i))
            pinned[src].append(int(j))
    return pinned


def _drawn_features(ranked, pinned, max_features):
    """The best ``max_features`` of ``ranked``, ``pinned`` ones always among them, by index."""
    rank = np.empty_like(ranked)
    rank[ranked] = np.arange(len(ranked))
    pinned = sorted(set(pinned), key=lambda f: rank[f])[:max_features]
    others = ranked[~np.isin(ranked, pinned)][: max_features - len(pinned)]
    return np.sort(np.concatenate([others, np.asarray(pinned, dtype=ranked.dtype)]))


def _strongest_edges(graph, top_edges, drawn):
    """Per section, the ``top_edges`` strongest edges among the drawn features.

    Returns ``{section: (i, j, share)}``: output feature ``i``, input feature
    ``j`` (feature indices) and the edge's share of the section's largest drawn
    edge, weakest first (so that strong edges are drawn on top).
    """
    strongest = {}
    for src, dst in graph.sections:
        # drawn is in index order: ties break row-major by feature index, as in summary.
        rows, cols = drawn[dst], drawn[src]
        E = graph.edges[(src, dst)][np.ix_(rows, cols)]
        if E.size == 0 or E.max() <= 0:
            strongest[(src, dst)] = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
            continue
        order = np.argsort(-E, axis=None, kind="stable")[:top_edges]
        # An edge of zero is no interaction; drawn, it would look like a weak one.
        order = order[E.flat[order] > 0][::-1]
        i, j = np.unravel_index(order, E.shape)
        strongest[(src, dst)] = (rows[i], cols[j], E.flat[order] / E.max())
    return strongest


def _check_cmap(cmap):
    """Raise TypeError unless ``cmap`` is a str or a Colormap, ValueError for an unknown name:
    before anything is drawn, not deep inside matplotlib."""
    from matplotlib import colormaps
    from matplotlib.colors import Colormap

    if cmap is None or isinstance(cmap, Colormap):  # None: matplotlib's default
        return
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a str or a matplotlib Colormap; got {type(cmap).__name__}")
    if cmap not in colormaps:
        raise ValueError(f"cmap={cmap!r} is not a matplotlib colormap (e.g. 'viridis', 'magma')")


def _edge_style(share):
    """Line style of an edge that is ``share`` of its section's largest."""
    return {"color": "tab:blue", "alpha": 0.3 + 0.7 * share, "linewidth": 0.3 + 4 * share}


class InteractionGraphDisplay:
    """Layered drawing of an :class:`~sklearn_lib.InteractionGraph`.

    Node layers are columns (forward order, left to right); each node's
    features are dots, labelled by feature index, sized by ``Lambda`` and
    coloured by ``log10(Lambda)`` (the colour bar).  The ``top_edges``
    strongest edges of each section are lines whose width grows with the
    edge's share of the section's largest edge (the legend).

    Which features a column shows (at most ``max_features``; a column cut
    short says so under its name):

    - the best by ``Lambda``, ties broken by each feature's total edge
      strength (the sum of its edges in and out), then by index.  The model
      output in the identity basis (the default ``output_basis``) is all
      ties, ``Lambda = 1`` for every logit, so its column shows the outputs
      with the strongest edges from the section before (the row sums of
      ``graph.edges[(src, "output")]``), not the first by index: a language
      model's tokens that matter, not tokens 0 to 29;
    - always the two features of each section's strongest edge (the first
      edge :meth:`InteractionGraph.summary
      <sklearn_lib.InteractionGraph.summary>` lists), taking the place of the
      last by rank, so that the strongest edge of every section is drawn
      (with ``max_features >= 2``: a middle layer may hold two of them).

    A column lists its features top to bottom by index: a fitted basis
    numbers its features by decreasing ``Lambda``, and the output keeps its
    classes' or tokens' order.

    Parameters
    ----------
    graph : InteractionGraph
    top_edges : int, default=200
        Edges drawn per section, strongest first.
    max_features : int, default=30
        Features drawn per node layer, chosen as above.
    labels : tokenizer, sequence of str, dict or None, default=None
        Text for features, drawn after their index (``12 'the'``).  Alone,
        they label the last node, the model output: a tokenizer (any object
        with a ``decode`` or ``convert_ids_to_tokens`` method, as Hugging
        Face's have; ``decode([id])`` is preferred, as it prints spaces) or a
        vocabulary (a sequence of str, feature index -> text, at least as
        long as the output).  A dict ``{node: labels}`` labels any node: a
        sequence of str names features by index; a tokenizer reads them as
        token ids, which they are only in the identity output basis, so it is
        refused for a node whose Lambdas are not all 1 (an output with
        ``output_basis="pca"``, whose features are principal directions: name
        those with a sequence of str if you have names for them).

    Attributes
    ----------
    features_shown_ : dict of str to int
        Number of features drawn per node layer.
    features_drawn_ : dict of str to ndarray of int
        Per node layer, the indices of the features drawn, top to bottom.
    edges_shown_ : dict of (str, str) to (ndarray, ndarray, ndarray)
        Per section, the drawn edges as output feature, input feature (feature
        indices, as in ``graph.edges[section][i, j]``) and share of the
        section's largest drawn edge.
    nodes_ : dict of str to matplotlib PathCollection
    edge_lines_ : list of matplotlib Line2D
    colorbar_ : matplotlib Colorbar or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    See Also
    --------
    sklearn_lib.InteractionGraph.summary : the strongest edges as text, with
        the same labels.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_lib import InteractionGraph, InteractionGraphDisplay
    >>> E = np.zeros((40, 3))  # 40 outputs (tokens), Lambda 1 each
    >>> E[33, 0], E[17, 1] = 2.0, 1.0
    >>> graph = InteractionGraph(
    ...     ["h", "output"], {"h": np.array([3.0, 2.0, 1.0]), "output": np.ones(40)},
    ...     {("h", "output"): E})
    >>> vocab = [f"tok{i}" for i in range(40)]
    >>> display = InteractionGraphDisplay.from_graph(graph, max_features=2, labels=vocab)
    >>> display.features_drawn_["output"]
    array([17, 33])
    >>> display.edges_shown_[("h", "output")][:2]
    (array([17, 33]), array([1, 0]))
    """

    def __init__(self, graph, *, top_edges=200, max_features=30, labels=None):
        self.graph = graph
        self.top_edges = top_edges
        self.max_features = max_features
        self.labels = labels

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

        Raises
        ------
        TypeError
            If ``graph`` is not an InteractionGraph, ``ax`` not a matplotlib
            Axes, ``cmap`` neither a str nor a Colormap, or ``labels`` of a
            kind not accepted.
        ValueError
            If ``top_edges`` or ``max_features`` is not an int >= 1, ``cmap``
            names no colormap, or ``labels`` do not fit the graph (as
            :meth:`sklearn_lib.InteractionGraph.summary` takes them).
        """
        self._check()
        _check_cmap(cmap)
        graph = self.graph
        # Labels are checked before anything is drawn.
        names = feature_names(graph, self.labels)
        ax = axes_or_new(ax, figsize=(2.5 * len(graph.nodes) + 2, 6))
        ranked = _ranked_features(graph)
        pinned = _strongest_edge_features(graph)
        self.features_drawn_ = {
            n: _drawn_features(ranked[n], pinned[n], self.max_features) for n in graph.nodes
        }
        self.features_shown_ = {n: len(drawn) for n, drawn in self.features_drawn_.items()}
        self.edges_shown_ = _strongest_edges(graph, self.top_edges, self.features_drawn_)
        # A feature's dot sits at minus its position in its column.
        row = {n: {f: k for k, f in enumerate(d.tolist())} for n, d in self.features_drawn_.items()}
        self.edge_lines_ = []
        for col, (src, dst) in enumerate(graph.sections):
            for i, j, share in zip(*self.edges_shown_[(src, dst)]):
                y = [-row[src][j], -row[dst][i]]
                (line,) = ax.plot([col, col + 1], y, **_edge_style(share), zorder=1)
                self.edge_lines_.append(line)
        self._draw_nodes(ax, cmap, names)
        self._label(ax, ranked)
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _draw_nodes(self, ax, cmap, names):
        """The drawn features of every node as dots, sized by Lambda and coloured by its log10."""
        graph = self.graph
        # One colour scale for every layer, so that colours compare across columns.
        colours = np.log10(
            np.clip(np.concatenate([graph.lambdas[n] for n in graph.nodes]), _TINY, None)
        )
        self.nodes_ = {}
        for col, node in enumerate(graph.nodes):
            drawn = self.features_drawn_[node]
            lam = np.asarray(graph.lambdas[node])[drawn]
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
            for k, feature in enumerate(drawn.tolist()):
                ax.annotate(
                    names[node](feature),
                    (col, -k),
                    xytext=(9, 0),
                    textcoords="offset points",
                    fontsize=6,
                    va="center",
                    zorder=3,
                )

    def _column_name(self, node, ranked):
        """A node's name, saying where its column is cut, and how (its tick label)."""
        n, drawn = len(ranked), self.features_drawn_[node]
        if len(drawn) == n:
            return node
        # Features drawn for a strongest edge, beyond the best by rank.
        extra = len(np.setdiff1d(drawn, ranked[: len(drawn)]))
        lam = np.asarray(self.graph.lambdas[node])
        how = " by edge strength" if np.all(lam == lam[0]) else ""
        name = f"{node}\n(top {len(drawn) - extra} of {n}{how}"
        return name + (f"\n+ {extra} on strongest edges)" if extra else ")")

    def _label(self, ax, ranked):
        """Node names (saying where a layer is cut), title, colour bar, legend."""
        graph = self.graph
        names = [self._column_name(node, ranked[node]) for node in graph.nodes]
        ax.set_xticks(range(len(graph.nodes)))
        ax.set_xticklabels(names, rotation=20)
        ax.set_yticks([])
        ax.set_ylabel("features (the top by Lambda, ties by edge strength)")
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
    def from_graph(
        cls, graph, *, top_edges=200, max_features=30, labels=None, ax=None, cmap="viridis"
    ):
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
            Features drawn per node layer: the top by ``Lambda``, ties by edge
            strength, and those of each section's strongest edge (see the class).
        labels : tokenizer, sequence of str, dict or None, default=None
            Text for features: alone, a tokenizer or vocabulary for the model
            output's token ids; ``{node: labels}`` for any node (see the class).
        ax : matplotlib Axes, optional
        cmap : str or matplotlib Colormap, default="viridis"

        Returns
        -------
        InteractionGraphDisplay
        """
        display = cls(graph, top_edges=top_edges, max_features=max_features, labels=labels)
        return display.plot(ax=ax, cmap=cmap)
