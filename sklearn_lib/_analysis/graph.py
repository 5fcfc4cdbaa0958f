"""Interaction graphs: edges between the LIB features of consecutive node layers.

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
"""

import json
from dataclasses import dataclass, field

import numpy as np

from .._core.nodes import OUTPUT_NODE
from .._files.npz import (
    CONTENT_ERRORS,
    as_path,
    check_float_dtype,
    json_default,
    read_npz,
    write_atomically,
)
from .._fitting.stats import row_average
from .._model.session import outside_inference_mode
from .._routes.cotangents import Cotangents
from .._routes.integration import integration_rule, rule_tensors
from .._routes.jacobian import SectionJacobian
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

    def summary(self, top=5):
        """A short text description: features, edge totals and the strongest edges."""
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
                lines.append(f"    {src}[{j}] -> {dst}[{i}]: {E[i, j]:.4g}")
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
        path = as_path(path)
        arrays = _graph_arrays(self)
        write_atomically(path, lambda file: np.savez_compressed(file, **arrays))

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
        path = as_path(path)
        with open(path, "rb") as file:
            try:
                arrays = read_npz(file, rank=_read_order, expected_shape=_expected_shape)
                if "meta" not in arrays:
                    raise ValueError("no 'meta' array")
                nodes, info = _parse_meta(str(arrays.pop("meta")[()]))
                _check_arrays(nodes, arrays)
            except CONTENT_ERRORS as exc:
                raise ValueError(f"{path!r} is not a saved InteractionGraph: {exc}") from exc
        lambdas = {node: arrays[f"lambdas_{i}"] for i, node in enumerate(nodes)}
        sections = zip(nodes[:-1], nodes[1:])
        edges = {section: arrays[f"edges_{i}"] for i, section in enumerate(sections)}
        return cls(nodes, lambdas, edges, info)

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
            ``max_features`` and ``cmap`` of
            :meth:`InteractionGraphDisplay.from_graph
            <sklearn_lib.InteractionGraphDisplay.from_graph>`.

        Returns
        -------
        matplotlib Axes
            The drawing; :meth:`InteractionGraphDisplay.from_graph
            <sklearn_lib.InteractionGraphDisplay.from_graph>` draws the same
            and keeps its data.
        """
        from .._drawing.graph_display import InteractionGraphDisplay

        display = InteractionGraphDisplay.from_graph(self, top_edges=top_edges, ax=ax, **kwargs)
        return display.ax_


# -- persistence -----------------------------------------------------------------------
_FORMAT_VERSION = 1  # files written before versioning have no "version" field: also 1
_META_FIELDS = ("nodes", "info", "version")


def _graph_arrays(graph):
    """The arrays that :meth:`InteractionGraph.save` writes, checked as ``load`` checks them."""
    meta = json.dumps(
        {"nodes": graph.nodes, "info": graph.info, "version": _FORMAT_VERSION},
        default=json_default,
    )
    try:
        # The same checks as ``load``: a graph that saves also loads.
        nodes, _ = _parse_meta(meta)
        arrays = {f"lambdas_{i}": np.asarray(graph.lambdas[n]) for i, n in enumerate(nodes)}
        arrays.update(
            {f"edges_{i}": np.asarray(graph.edges[s]) for i, s in enumerate(graph.sections)}
        )
        _check_arrays(nodes, arrays)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"cannot save this InteractionGraph: {exc}") from exc
    return {"meta": np.array(meta), **arrays}


def _read_order(key):
    # meta, then the lambdas (which fix the edges' shapes), then the rest.
    kind, _, index = key.partition("_")
    return ({"meta": 0, "lambdas": 1}.get(kind, 2), int(index) if index.isdigit() else 0, key)


def _expected_shape(key, arrays):
    """The shape ``edges_<i>`` must have, from the lambdas read before it (else None)."""
    kind, _, index = key.partition("_")
    if kind != "edges" or not index.isdigit():
        return None
    i = int(index)
    src, dst = arrays.get(f"lambdas_{i}"), arrays.get(f"lambdas_{i + 1}")
    if src is None or dst is None or src.ndim != 1 or dst.ndim != 1:
        return None  # reported by the full check
    return (dst.shape[0], src.shape[0])


def _parse_meta(meta):
    """``(nodes, info)`` from the ``meta`` JSON string, checked."""
    try:
        fields = json.loads(meta)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"'meta' is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"'meta' is a JSON {type(fields).__name__}, not an object")
    missing = [name for name in _META_FIELDS[:2] if name not in fields]
    unexpected = sorted(set(fields) - set(_META_FIELDS))
    if missing or unexpected:
        raise ValueError(f"'meta' lacks fields {missing} or has unexpected ones {unexpected}")
    version = fields.get("version", _FORMAT_VERSION)
    if type(version) is not int or version != _FORMAT_VERSION:
        raise ValueError(f"'meta' has format version {version!r}; this reads {_FORMAT_VERSION}")
    nodes, info = fields["nodes"], fields["info"]
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ValueError(f"'meta' nodes must be a non-empty list of str, not {nodes!r}")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"'meta' nodes must be distinct: {nodes}")
    if not isinstance(info, dict):
        raise ValueError(f"'meta' info must be a JSON object, not {info!r}")
    return nodes, info


def _check_arrays(nodes, arrays):
    """Raise ValueError unless ``arrays`` are exactly the lambdas and edges of ``nodes``."""
    expected = {f"lambdas_{i}" for i in range(len(nodes))}
    expected |= {f"edges_{i}" for i in range(len(nodes) - 1)}
    missing, unexpected = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
    if missing or unexpected:
        raise ValueError(
            f"the {len(nodes)} nodes {nodes} need arrays lambdas_0.. and edges_0..: "
            f"missing {missing}, unexpected {unexpected}"
        )
    for key, values in arrays.items():
        check_float_dtype(key, values.dtype)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"array {key!r} has non-finite values")
        if np.any(values < 0):
            raise ValueError(f"array {key!r} has negative values")
    n_features = []
    for i, node in enumerate(nodes):
        shape = arrays[f"lambdas_{i}"].shape
        if len(shape) != 1:
            raise ValueError(f"array 'lambdas_{i}' of node {node!r} has shape {shape}, not 1-D")
        n_features.append(shape[0])
    for i, (src, dst) in enumerate(zip(nodes[:-1], nodes[1:])):
        shape, expected_shape = arrays[f"edges_{i}"].shape, (n_features[i + 1], n_features[i])
        if shape != expected_shape:
            raise ValueError(
                f"array 'edges_{i}' of {src!r} -> {dst!r} has shape {shape}, not "
                f"{expected_shape} (features of {dst!r}, features of {src!r})"
            )


class EdgeAccumulator:
    """Accumulator of the squared edges of one section (see ``_session`` for the protocol).

    Parameters
    ----------
    session : ModelSession
    src, dst : NodeBasis
        The section's fitted nodes (``dst`` may be the output node).
    rule : (torch.Tensor, torch.Tensor)
        Integration points and weights on the session's device.
    n_stochastic_sources : int or None
        Random +-1 projections over the output positions per batch, instead
        of the exact sum over them.
    jacobian : {"auto", "autograd"}
    """

    def __init__(self, session, src, dst, rule, n_stochastic_sources=None, jacobian="auto"):
        self.session, self.src, self.rule = session, src, rule
        self.reads = (src.name,)
        self.key = (src.name, dst.name)
        self.sources = n_stochastic_sources
        dst_name = None if dst.name == OUTPUT_NODE else dst.name
        self.section = SectionJacobian(session, src.name, dst_name, jacobian)
        self.src_tensors = src.tensors(session.device)
        self.exact = Cotangents(dst.tensors(session.device, session.dtype)[1], dst.n_positions)
        self.total = 0
        self.rows = 0
        self.count = 0

    def update(self, batch, acts):
        cotangents = self.exact.sampled(self.sources, self.session.generator, False)
        f = acts[self.src.name]
        self.total = self.total + self.section.edge_sums(
            batch.x, f, self.src_tensors, cotangents, self.rule
        )
        self.rows += batch.n_rows(f.shape[1:])
        self.count += batch.n

    def result(self):
        """Edges ``(k_out, k_in)`` averaged over all ``N * P_in`` rows (valid ones), and N."""
        return row_average(self.total, self.rows, self.count)


@outside_inference_mode
def interaction_graph(
    session,
    source,
    bases,
    *,
    integration="gradient",
    n_intervals=0,
    n_stochastic_sources=None,
    jacobian="auto",
    known=None,
):
    """The interaction graph of consecutive fitted nodes, from one pass over the data.

    Parameters
    ----------
    session : ModelSession
    source : ArraySource or StreamSource
    bases : list of NodeBasis
        In forward order, the last one the model output's.
    integration, n_intervals
        The integration rule (:func:`~sklearn_lib.integration_rule`).
    n_stochastic_sources : int or None
    jacobian : {"auto", "autograd"}
    known : dict, optional
        Edges ``(E, N)`` of sections found already on the same data and
        rule, by ``(src, dst)`` names (a fit's, see
        :func:`~sklearn_lib._fitting.fit.fit_bases`); only the others take the pass,
        and none is run when every section is known.

    Returns
    -------
    InteractionGraph
    """
    rule = rule_tensors(integration_rule(integration, n_intervals), session.device)
    found = dict(known or {})
    accumulators = [
        EdgeAccumulator(session, src, dst, rule, n_stochastic_sources, jacobian)
        for src, dst in zip(bases[:-1], bases[1:])
        if (src.name, dst.name) not in found
    ]
    if accumulators:
        # One forward pass per batch reads every section's input.
        what = "edges " + ", ".join(f"{acc.key[0]!r} -> {acc.key[1]!r}" for acc in accumulators)
        results = session.run_pass(source, accumulators, what)
        found.update((acc.key, result) for acc, result in zip(accumulators, results))
    keys = [(src.name, dst.name) for src, dst in zip(bases[:-1], bases[1:])]
    edges = {key: found[key][0] for key in keys}
    nodes = [basis.name for basis in bases]
    lambdas = {basis.name: basis.lambdas[: basis.n_components].copy() for basis in bases}
    info = {
        "basis": bases[0].kind,
        "integration": integration,
        "n_intervals": int(n_intervals),
        "n_stochastic_sources": n_stochastic_sources,
        "n_samples": found[keys[0]][1],
    }
    return InteractionGraph(nodes, lambdas, edges, info)
