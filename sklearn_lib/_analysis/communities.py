"""Modules of an interaction graph: communities of features across node layers.

The paper looks for modular structure in its interaction graphs: groups of
features, across layers, that interact among themselves far more than with
the rest.  :func:`graph_modules` finds them by modularity on the graph of
features (nodes) and edges (weights ``E[i, j]``, undirected): with
``leidenalg`` where it is installed (the Leiden algorithm, which never
returns a badly connected community), else with networkx' Louvain.
networkx comes with torch, so nothing extra is needed.
"""

import importlib.util
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np


@dataclass(frozen=True)
class GraphModules:
    """Communities of an interaction graph's features.

    Attributes
    ----------
    labels : dict of str to ndarray of int
        Per node layer, the module of each of its features (in feature
        order); modules are numbered from 0 by decreasing size.
    modularity : float
        Newman's modularity of the partition, on the undirected graph
        weighted by the edges.
    method : str
        ``"leiden"`` or ``"louvain"``.
    """

    labels: dict
    modularity: float
    method: str

    @property
    def n_modules(self):
        """The number of modules."""
        return 1 + max((int(v.max()) for v in self.labels.values() if v.size), default=-1)

    def members(self, module):
        """``{layer: feature indices}`` of one module."""
        return {
            layer: np.flatnonzero(labels == module)
            for layer, labels in self.labels.items()
            if (labels == module).any()
        }


def to_networkx(graph):
    """The graph of features: a ``networkx.DiGraph`` with nodes ``(layer, feature)``.

    Nodes carry ``layer``, ``feature`` and ``lambda``; an edge from
    ``(src, j)`` to ``(dst, i)`` carries ``weight = E[i, j]`` (zero edges are
    left out).

    Raises
    ------
    ValueError
        If an edge array has been changed, since the graph was made, to hold
        a negative, NaN or infinite value or to have a shape other than its
        section's: such an edge would be left out without a word.
    """
    import networkx as nx

    out = nx.DiGraph()
    for node in graph.nodes:
        for j, value in enumerate(graph.lambdas[node]):
            out.add_node((node, j), layer=node, feature=j, **{"lambda": float(value)})
    for src, dst in graph.sections:
        E = _weights(graph, src, dst)
        for i, j in zip(*np.nonzero(E > 0)):
            out.add_edge((src, int(j)), (dst, int(i)), weight=float(E[i, j]))
    return out


def _weights(graph, src, dst):
    """The edges of a section as weights: checked again, as a graph's arrays can be
    changed after its constructor checked them."""
    E = np.asarray(graph.edges[(src, dst)])
    expected = (len(graph.lambdas[dst]), len(graph.lambdas[src]))
    if E.shape != expected:
        raise ValueError(f"edges[{(src, dst)!r}] has shape {E.shape}, not {expected}")
    if not np.all(np.isfinite(E)) or np.any(E < 0):
        raise ValueError(
            f"edges[{(src, dst)!r}] holds negative, NaN or infinite values (changed after "
            "the graph was made?): edges are finite squares, >= 0"
        )
    return E


def graph_modules(graph, resolution=1.0, random_state=None):
    """Communities of ``graph``'s features by modularity (see the module docstring).

    Parameters
    ----------
    graph : InteractionGraph
    resolution : float, default=1.0
        Modularity's resolution, finite and positive: larger values give
        more, smaller modules.
    random_state : int, RandomState instance or None, default=None
        Seeds the algorithm's random order; the same seed gives the same
        modules (a ``RandomState`` gives a seed from its stream, as
        scikit-learn's estimators take it).

    Returns
    -------
    GraphModules
    """
    import networkx as nx
    from networkx.algorithms.community import louvain_communities, modularity

    # An infinite resolution makes every partition's modularity -inf.
    if isinstance(resolution, (bool, np.bool_)) or not isinstance(resolution, Real):
        raise TypeError(f"resolution must be a real number, got {resolution!r}")
    if not (resolution > 0 and np.isfinite(resolution)):
        raise ValueError(f"resolution must be positive and finite, got {resolution!r}")
    if isinstance(random_state, np.random.RandomState):
        # Both algorithms take an int seed; a RandomState gives one from its stream.
        random_state = int(random_state.randint(2**31 - 1))
    elif random_state is not None and (
        isinstance(random_state, bool) or not isinstance(random_state, Integral)
    ):
        raise ValueError(
            f"random_state must be an int, a RandomState instance or None; got {random_state!r}"
        )
    directed = to_networkx(graph)
    if directed.number_of_edges() == 0:
        raise ValueError(
            "the interaction graph has no nonzero edge: modularity is undefined "
            "(every feature would be a module of its own)"
        )
    undirected = nx.Graph()
    undirected.add_nodes_from(directed.nodes)
    undirected.add_weighted_edges_from((a, b, w) for a, b, w in directed.edges(data="weight"))
    if importlib.util.find_spec("leidenalg") is not None:
        communities, method = _leiden(undirected, resolution, random_state), "leiden"
    else:
        communities = louvain_communities(
            undirected, weight="weight", resolution=resolution, seed=random_state
        )
        method = "louvain"
    communities = sorted(communities, key=lambda c: (-len(c), min(c)))
    labels = {node: np.full(len(graph.lambdas[node]), -1, dtype=int) for node in graph.nodes}
    for module, members in enumerate(communities):
        for layer, feature in members:
            labels[layer][feature] = module
    score = modularity(undirected, communities, weight="weight", resolution=resolution)
    return GraphModules(labels, float(score), method)


def _leiden(graph, resolution, random_state):
    import igraph
    import leidenalg

    nodes = list(graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    edges = [(index[a], index[b]) for a, b in graph.edges]
    weights = [w for _, _, w in graph.edges(data="weight")]
    g = igraph.Graph(n=len(nodes), edges=edges)
    partition = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights=weights,
        resolution_parameter=resolution,
        seed=random_state,
    )
    return [{nodes[i] for i in members} for members in partition]
