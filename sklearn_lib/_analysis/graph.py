"""Interaction graphs: the features of node layers and the squared edges between them.

For a section from node layer ``l`` to ``l+1``, ``F_hat`` maps layer-``l``
features to layer-``(l+1)`` features (through ``C_pinv``, the section and
``C_next``), and the spec's squared edge is

    E[i, j] = 1/(N P_in) sum_x sum_t (
                  sum_s sum_a w_a dF_hat_{i,t}/df_hat_{j,s}(a f_hat) f_hat_{j,s}
              )^2

Gradients with respect to features follow from those with respect to
activations by the chain rule: ``f = f_hat @ C_pinv[:k] + mu`` gives
``d/df_hat = (d/df) @ C_pinv[:k]^T``.  Only non-constant features have
edges (the paper's constant bias feature is not part of the basis here).
:mod:`~sklearn_lib._analysis.edges` computes them; files are
:mod:`~sklearn_lib._files.graph_file`'s.
"""

from dataclasses import dataclass, field

import numpy as np

from .._drawing.graph_display import InteractionGraphDisplay, feature_names
from .._files.graph_file import read_graph, write_graph
from .communities import graph_modules, to_networkx


@dataclass
class InteractionGraph:
    """Node layers, their features' Lambda, and squared edges between them.

    Attributes
    ----------
    nodes : list of str
        Node layers in forward order; the last is ``"output"``.
    lambdas : dict of str to ndarray
        ``Lambda`` of each node's kept features (ones for an identity output).
    edges : dict of (str, str) to ndarray
        ``edges[(src, dst)]`` has shape ``(n_dst_features, n_src_features)``,
        all entries ``>= 0``.
    info : dict
        How the edges were computed (integration rule, samples, sources).
    """

    nodes: list
    lambdas: dict
    edges: dict
    info: dict = field(default_factory=dict)

    @property
    def sections(self):
        """``(src, dst)`` pairs in forward order."""
        return list(zip(self.nodes[:-1], self.nodes[1:]))

    def top_edges(self, section, n_edges):
        """Boolean mask of the ``n_edges`` strongest edges of a section."""
        E = self.edges[tuple(section)]
        # A stable sort keeps ties in a fixed (row-major) order.
        order = np.argsort(-E, axis=None, kind="stable")
        mask = np.zeros(E.size, dtype=bool)
        mask[order[:n_edges]] = True
        return mask.reshape(E.shape)

    def summary(self, top=5, labels=None):
        """A short text description: features, edge totals and the strongest edges.

        Parameters
        ----------
        top : int, default=5
            Strongest edges listed per section (ties in row-major order).
        labels : tokenizer, sequence of str, dict or None, default=None
            Text for features, written after their index in the edge lines
            (``ln_f[3] -> output[12 'the']: 0.53``): alone, a tokenizer (with
            ``decode`` or ``convert_ids_to_tokens``) or a vocabulary (sequence
            of str) for the model output's token ids, which its features are in
            the identity output basis only; ``{node: labels}`` for any node.
            As :class:`~sklearn_lib.InteractionGraphDisplay` takes them, with
            the same errors.

        Returns
        -------
        str

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_lib import InteractionGraph
        >>> graph = InteractionGraph(
        ...     ["h", "output"], {"h": np.array([2.0, 1.0]), "output": np.ones(3)},
        ...     {("h", "output"): np.array([[0.0, 0.0], [0.0, 0.5], [2.0, 0.0]])})
        >>> print(graph.summary(top=1, labels=["a", "the", "cat"]).splitlines()[-1])
            h[0] -> output[2 'cat']: 2
        """
        names = feature_names(self, labels)
        lines = [f"InteractionGraph with {len(self.nodes)} node layers ({self.info})"]
        for node in self.nodes:
            lam = self.lambdas[node]
            lines.append(f"  node {node!r}: {lam.shape[0]} features, Lambda max {lam.max():.4g}")
        for src, dst in self.sections:
            E = self.edges[(src, dst)]
            flat = np.sort(E, axis=None)[::-1]
            share = np.cumsum(flat) / max(flat.sum(), np.finfo(float).tiny)
            n90 = int(np.searchsorted(share, 0.9)) + 1
            lines.append(
                f"  edges {src!r} -> {dst!r}: {E.shape[0]} x {E.shape[1]} (out x in, as the "
                f"array), total {E.sum():.4g}, "
                f"{n90} of {E.size} edges carry 90% of it"
            )
            for idx in np.argsort(-E, axis=None, kind="stable")[:top]:
                i, j = np.unravel_index(idx, E.shape)
                lines.append(f"    {src}[{names[src](j)}] -> {dst}[{names[dst](i)}]: {E[i, j]:.4g}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def save(self, path):
        """Write the graph to ``path``: a compressed ``.npz`` of plain arrays and JSON.

        The archive holds float arrays ``lambdas_<i>`` (node ``i``) and
        ``edges_<i>`` (section ``i``) and a JSON string ``meta`` with the
        node names and ``info``; nothing is pickled.  Numpy scalars and arrays
        in ``info`` are stored as plain Python numbers and lists.

        The write is atomic: the archive goes to a temporary file in the
        folder of ``path``, which replaces ``path`` only once complete and
        synced to disk.  On any failure the temporary file is removed and a
        file already at ``path`` is left as it was.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write, exactly: no suffix is appended (``"graph"``
            writes a file named ``graph``), so :meth:`load` reads the same
            path back.  ``.npz`` is the customary suffix.

        Raises
        ------
        ValueError
            If the graph would not load back (see :meth:`load`); nothing is
            written then.
        TypeError
            If ``path`` is not a str or os.PathLike, or ``info`` holds a value
            that JSON cannot store.
        """
        write_graph(path, self)

    @classmethod
    def load(cls, path):
        """Read a graph written by :meth:`save`, checking everything in the file.

        Nothing is ever unpickled: arrays other than float ones (and the JSON
        string ``meta``) are refused from their header, before any of their
        data is read.

        Parameters
        ----------
        path : str or os.PathLike
            The file to read, exactly as given to :meth:`save` (no suffix is
            added or guessed).

        Returns
        -------
        InteractionGraph

        Raises
        ------
        FileNotFoundError, PermissionError, IsADirectoryError
            If ``path`` cannot be opened (errors about the path, not the
            content, keep their type).
        ValueError
            If the content is not a saved graph: not a zip archive (e.g.
            truncated), an unreadable or unexpected array, ``meta`` not JSON
            or lacking ``nodes``/``info``, node names not distinct strings,
            arrays missing for a node or section, or arrays that are not
            floating point, have the wrong shape (``edges_<i>`` is
            ``(n_dst_features, n_src_features)`` of its section's nodes), or
            hold negative or non-finite values.  The message names the file
            and the problem.
        TypeError
            If ``path`` is not a str or os.PathLike.
        """
        return cls(*read_graph(path))

    def to_networkx(self):
        """The graph of features as a ``networkx.DiGraph``.

        Nodes are ``(layer, feature)`` with attributes ``layer``, ``feature``
        and ``lambda``; an edge ``(src, j) -> (dst, i)`` has ``weight``
        ``E[i, j]`` (zero edges are left out).  networkx comes with torch.
        """
        return to_networkx(self)

    def modules(self, resolution=1.0, random_state=None):
        """Communities of features across layers, by modularity.

        Leiden where ``leidenalg`` is installed, else networkx' Louvain, on the
        undirected graph weighted by the edges.

        Parameters
        ----------
        resolution : float, default=1.0
            Larger values give more, smaller modules.
        random_state : int, RandomState instance or None, default=None
            Seeds the algorithm: the same seed, the same modules.

        Returns
        -------
        GraphModules
            ``labels`` (per node layer, each feature's module, numbered by
            decreasing size), ``modularity`` and ``method``.
        """
        return graph_modules(self, resolution, random_state)

    def plot(self, top_edges=200, ax=None, **kwargs):
        """Layered drawing; see :class:`~sklearn_lib.InteractionGraphDisplay`.

        Parameters
        ----------
        top_edges : int, default=200
            Edges drawn per section, strongest first.
        ax : matplotlib Axes, optional
            Draw here (a new figure when None).
        **kwargs
            ``max_features``, ``labels`` (a tokenizer or vocabulary for the
            output's tokens; see :meth:`summary`) and ``cmap`` of
            :meth:`InteractionGraphDisplay.from_graph
            <sklearn_lib.InteractionGraphDisplay.from_graph>`.

        Returns
        -------
        matplotlib Axes
            The drawing; :meth:`InteractionGraphDisplay.from_graph
            <sklearn_lib.InteractionGraphDisplay.from_graph>` draws the same
            and keeps its data.
        """
        display = InteractionGraphDisplay.from_graph(self, top_edges=top_edges, ax=ax, **kwargs)
        return display.ax_
