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

from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

from .._drawing.graph_display import InteractionGraphDisplay, feature_names
from .._files.graph_file import read_graph, write_graph
from .communities import graph_modules, to_networkx


def _values(value, name, ndim):
    """``value`` as a float array of ``ndim`` dimensions, finite and ``>= 0``.

    Float arrays are kept as they are (dtype and memory order: a saved graph
    loads back the same); integer ones become float64.
    """
    try:
        array = np.asarray(value)
    except ValueError as exc:  # a ragged nested list
        raise ValueError(f"{name} is not an array: {exc}") from None
    if array.dtype.kind in "iu":
        array = array.astype(np.float64)
    elif array.dtype.kind != "f":
        raise TypeError(f"{name} must be an array of real numbers; got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")
    if np.any(array < 0):
        raise ValueError(f"{name} holds negative values (the smallest is {array.min():.4g})")
    return array


def _keyed(values, name, expected):
    """``values`` if it is a dict with exactly the keys ``expected``; else TypeError or
    ValueError naming the missing and unexpected keys."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{name} must be a dict; got {type(values).__name__}")
    missing = [key for key in expected if key not in values]
    unexpected = [key for key in values if key not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{name} must have exactly the keys {expected}: missing {missing}, "
            f"unexpected {unexpected}"
        )
    return values


def check_graph(nodes, lambdas, edges, info):
    """``(nodes, lambdas, edges, info)`` of an :class:`InteractionGraph`, checked.

    Node names are distinct strs; each node has a 1-D ``Lambda`` and each
    section ``(src, dst)`` of consecutive nodes a ``(n_dst, n_src)`` edge
    array, all finite and ``>= 0`` (Lambdas are variances, edges squares:
    a negative or NaN one is no measurement, and modules and drawings would
    drop it silently).  Returns a list of nodes and dicts in node order.

    Raises
    ------
    TypeError
        If an argument or array is of the wrong kind.
    ValueError
        If names repeat, keys are missing or unexpected, or an array has the
        wrong shape or holds a negative, NaN or infinite value.
    """
    if isinstance(nodes, str) or not isinstance(nodes, (list, tuple)):
        raise TypeError(f"nodes must be a list of str; got {type(nodes).__name__}")
    if not nodes or not all(isinstance(node, str) for node in nodes):
        raise ValueError(f"nodes must be a non-empty list of str; got {nodes!r}")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"nodes must be distinct; got {nodes!r}")
    if not isinstance(info, dict):
        raise TypeError(f"info must be a dict; got {type(info).__name__}")
    lambdas = _keyed(lambdas, "lambdas", list(nodes))
    lambdas = {node: _values(lambdas[node], f"lambdas[{node!r}]", 1) for node in nodes}
    sections = list(zip(nodes[:-1], nodes[1:]))
    edges = _keyed(edges, "edges", sections)
    checked = {}
    for src, dst in sections:
        name = f"edges[{(src, dst)!r}]"
        checked[(src, dst)] = E = _values(edges[(src, dst)], name, 2)
        expected = (len(lambdas[dst]), len(lambdas[src]))
        if E.shape != expected:
            raise ValueError(
                f"{name} has shape {E.shape}, not {expected} (the features of {dst!r}, "
                f"then those of {src!r}, as their lambdas have them)"
            )
    return list(nodes), lambdas, checked, info


def _check_count(value, name):
    """Raise TypeError unless ``value`` is an int (not a bool), ValueError if negative."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")


@dataclass
class InteractionGraph:
    """Node layers, their features' Lambda, and squared edges between them.

    The constructor checks its arguments (:meth:`load` and the estimators
    build graphs through it too): distinct node names, a Lambda for every
    node and an edge array of shape ``(n_dst_features, n_src_features)`` for
    every section, all finite and ``>= 0``.  Integer arrays become float64.

    Parameters
    ----------
    nodes : list of str
    lambdas : dict of str to array-like
    edges : dict of (str, str) to array-like
    info : dict, default={}
        As the attributes.

    Raises
    ------
    TypeError
        If an argument, or an array's dtype, is of the wrong kind.
    ValueError
        If node names repeat, a node or section lacks its array (or an
        unknown one is given), or an array has the wrong shape or holds a
        negative, NaN or infinite value.

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

    def __post_init__(self):
        self.nodes, self.lambdas, self.edges, self.info = check_graph(
            self.nodes, self.lambdas, self.edges, self.info
        )

    def _checked(self):
        """This graph, its arrays checked again as at construction: they are NumPy
        arrays, the user's to change afterwards (a NaN would make ``summary`` say
        "total nan" and ``plot`` fail inside matplotlib)."""
        check_graph(self.nodes, self.lambdas, self.edges, self.info)
        return self

    @property
    def sections(self):
        """``(src, dst)`` pairs in forward order."""
        return list(zip(self.nodes[:-1], self.nodes[1:]))

    def top_edges(self, section, n_edges):
        """Boolean mask of the ``n_edges`` strongest edges of a section.

        Parameters
        ----------
        section : (str, str)
            One of :attr:`sections` (a tuple or a list).
        n_edges : int
            How many edges to mark, ``>= 0`` (all of them where it exceeds
            their number).

        Returns
        -------
        ndarray of bool, of the section's edges' shape
        """
        E = self._checked().edges[self._section(section)]
        _check_count(n_edges, "n_edges")
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
            Strongest edges listed per section (ties in row-major order),
            ``>= 0``.
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
        _check_count(top, "top")
        self._checked()
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

    def _section(self, section):
        """``section`` as a key of :attr:`edges`, or ValueError."""
        key = tuple(section) if isinstance(section, (list, tuple)) else section
        if not isinstance(key, tuple) or key not in self.edges:
            raise ValueError(f"section={section!r} is not one of the graph's {self.sections}")
        return key

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

        Raises
        ------
        ValueError
            If the edges were changed since the graph was made to hold a
            negative, NaN or infinite value, or to have the wrong shape.
        """
        return to_networkx(self)

    def modules(self, resolution=1.0, random_state=None):
        """Communities of features across layers, by modularity.

        Leiden where ``leidenalg`` is installed, else networkx' Louvain, on the
        undirected graph weighted by the edges.

        Parameters
        ----------
        resolution : float, default=1.0
            Finite and positive: larger values give more, smaller modules.
        random_state : int, RandomState instance or None, default=None
            Seeds the algorithm: the same seed, the same modules.

        Returns
        -------
        GraphModules
            ``labels`` (per node layer, each feature's module, numbered by
            decreasing size), ``modularity`` and ``method``.

        Raises
        ------
        TypeError
            If ``resolution`` is not a real number.
        ValueError
            If ``resolution`` is not finite and positive, ``random_state`` is
            none of the above, the graph has no nonzero edge, or its edges
            were changed since it was made to hold a negative, NaN or
            infinite value.
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
        display = InteractionGraphDisplay.from_graph(
            self._checked(), top_edges=top_edges, ax=ax, **kwargs
        )
        return display.ax_
