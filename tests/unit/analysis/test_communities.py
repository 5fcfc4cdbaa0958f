"""Modules of an interaction graph (``_analysis.communities``) on hand-made graphs.

Two planted chains that share no edge: features 0-1 of every layer form
one, features 2-4 the other.  Modularity is recomputed here from its
definition, on the adjacency matrix.
"""

import importlib.util

import numpy as np
import pytest

from sklearn_lib._analysis.communities import GraphModules, graph_modules, to_networkx
from sklearn_lib._analysis.graph import InteractionGraph

NODES = ["a", "b", "output"]
CHAINS = (np.arange(2), np.arange(2, 5))  # features of the small and the large chain


def two_chains(rng):
    """Every feature of one chain interacts with every one of the next layer's in that chain."""
    edges = {}
    for src, dst in zip(NODES[:-1], NODES[1:]):
        E = np.zeros((5, 5))
        for chain in CHAINS:
            E[np.ix_(chain, chain)] = rng.uniform(0.5, 2.0, size=(len(chain), len(chain)))
        edges[(src, dst)] = E
    lambdas = {node: np.sort(rng.uniform(0.1, 3.0, size=5))[::-1] for node in NODES}
    return InteractionGraph(NODES, lambdas, edges)


def modularity_by_definition(graph, labels, resolution=1.0):
    """Newman's ``Q = 1/(2m) sum_ij (A_ij - gamma k_i k_j / (2m)) [c_i = c_j]``, undirected."""
    index = {(n, j): k for k, (n, j) in enumerate((n, j) for n in NODES for j in range(5))}
    A = np.zeros((len(index), len(index)))
    for (src, dst), E in graph.edges.items():
        for i in range(E.shape[0]):
            for j in range(E.shape[1]):
                A[index[(src, j)], index[(dst, i)]] += E[i, j]
                A[index[(dst, i)], index[(src, j)]] += E[i, j]
    k, two_m = A.sum(1), A.sum()
    community = np.empty(len(index), dtype=int)
    for (node, j), at in index.items():
        community[at] = labels[node][j]
    same = community[:, None] == community[None, :]
    return float(((A - resolution * np.outer(k, k) / two_m) * same).sum() / two_m)


def test_two_planted_chains_are_two_modules(rng):
    graph = two_chains(rng)
    found = graph_modules(graph, random_state=0)
    assert isinstance(found, GraphModules) and found.n_modules == 2
    # Numbered by decreasing size: the chain of three features per layer first.
    for node in NODES:
        np.testing.assert_array_equal(found.labels[node], [1, 1, 0, 0, 0])
    assert {node: list(v) for node, v in found.members(0).items()} == {n: [2, 3, 4] for n in NODES}
    assert {node: list(v) for node, v in found.members(1).items()} == {n: [0, 1] for n in NODES}
    assert found.members(2) == {}
    assert found.modularity == pytest.approx(modularity_by_definition(graph, found.labels))
    expected = "leiden" if importlib.util.find_spec("leidenalg") is not None else "louvain"
    assert found.method == expected
    # The graph's own method gives the same.
    by_method = graph.modules(random_state=0)
    for node in NODES:
        np.testing.assert_array_equal(by_method.labels[node], found.labels[node])


def test_the_same_seed_gives_the_same_modules(rng):
    graph = two_chains(rng)
    # One heavy edge across the chains makes the split a matter of optimisation.
    graph.edges[("a", "b")][0, 2] = 1.5
    for seed in (0, 7):
        first = graph_modules(graph, resolution=1.5, random_state=seed)
        again = graph_modules(graph, resolution=1.5, random_state=seed)
        for node in NODES:
            np.testing.assert_array_equal(first.labels[node], again.labels[node])
        assert first.modularity == again.modularity
        assert first.modularity == pytest.approx(
            modularity_by_definition(graph, first.labels, resolution=1.5)
        )
    state = graph_modules(graph, random_state=np.random.RandomState(3))
    assert state.n_modules >= 1 and all(v.min() >= 0 for v in state.labels.values())


def test_a_larger_resolution_gives_no_fewer_modules(rng):
    graph = two_chains(rng)
    coarse = graph_modules(graph, resolution=0.5, random_state=0)
    fine = graph_modules(graph, resolution=20.0, random_state=0)
    assert fine.n_modules >= coarse.n_modules and fine.n_modules > 2
    assert fine.modularity == pytest.approx(
        modularity_by_definition(graph, fine.labels, resolution=20.0)
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(resolution=0.0), "resolution must be positive and finite, got 0.0"),
        (dict(resolution=-1), "resolution must be positive"),
        (dict(random_state="0"), "random_state must be an int, a RandomState instance or None"),
        (dict(random_state=True), "random_state must be an int"),
        (dict(random_state=1.5), "random_state must be an int"),
    ],
)
def test_bad_arguments_are_refused(rng, kwargs, message):
    with pytest.raises(ValueError, match=message):
        graph_modules(two_chains(rng), **kwargs)


@pytest.mark.parametrize("resolution", [np.inf, -np.inf, np.nan, np.float64(np.inf)])
def test_a_resolution_that_is_not_finite_is_refused(rng, resolution):
    # An infinite resolution made every partition's modularity -inf.
    with pytest.raises(ValueError, match=r"resolution must be positive and finite, got "):
        graph_modules(two_chains(rng), resolution=resolution)


@pytest.mark.parametrize("resolution", ["1", None, True, [1.0], 1 + 0j])
def test_a_resolution_that_is_not_a_real_number_is_refused(rng, resolution):
    with pytest.raises(TypeError, match=r"resolution must be a real number, got "):
        graph_modules(two_chains(rng), resolution=resolution)


@pytest.mark.parametrize("resolution", [np.float32(0.5), 2, np.int64(3)])
def test_numpy_and_int_resolutions_are_taken(rng, resolution):
    graph = two_chains(rng)
    modules = graph_modules(graph, resolution=resolution, random_state=0)
    assert np.isfinite(modules.modularity)
    assert modules.modularity == pytest.approx(
        modularity_by_definition(graph, modules.labels, float(resolution))
    )


@pytest.mark.parametrize("bad", [np.nan, -1.0, np.inf, -1e-300])
@pytest.mark.parametrize("function", [to_networkx, graph_modules], ids=["networkx", "modules"])
def test_edges_changed_to_bad_values_after_construction_are_refused(rng, bad, function):
    """Not dropped as a zero edge would be: a graph's arrays can be changed in place."""
    graph = two_chains(rng)
    graph.edges[("a", "b")][1, 0] = bad
    with pytest.raises(ValueError, match=r"edges\[\('a', 'b'\)\] holds negative, NaN or inf"):
        function(graph)


def test_edges_changed_to_the_wrong_shape_are_refused(rng):
    graph = two_chains(rng)
    graph.edges[("b", "output")] = np.ones((5, 4))
    with pytest.raises(ValueError, match=r"edges\[\('b', 'output'\)\] has shape \(5, 4\), not"):
        to_networkx(graph)


def test_a_graph_without_edges_has_no_modules(rng):
    graph = two_chains(rng)
    for key in graph.edges:
        graph.edges[key] = np.zeros_like(graph.edges[key])
    with pytest.raises(ValueError, match="no nonzero edge: modularity is undefined"):
        graph_modules(graph)


def test_n_modules_and_members_of_given_labels():
    modules = GraphModules({"a": np.array([0, 2, 2]), "b": np.array([1])}, 0.3, "louvain")
    assert modules.n_modules == 3
    assert {k: list(v) for k, v in modules.members(2).items()} == {"a": [1, 2]}
    assert GraphModules({"a": np.zeros(0, dtype=int)}, 0.0, "louvain").n_modules == 0


def test_to_networkx_nodes_and_weights(rng):
    graph = two_chains(rng)
    g = to_networkx(graph)
    assert g.is_directed() and g.number_of_nodes() == 15
    for node in NODES:
        for j in range(5):
            data = g.nodes[(node, j)]
            assert data == {"layer": node, "feature": j, "lambda": graph.lambdas[node][j]}
            assert isinstance(data["lambda"], float)
    edges = {(u, v): w for u, v, w in g.edges(data="weight")}
    expected = {}
    for (src, dst), E in graph.edges.items():
        for i, j in zip(*np.nonzero(E)):
            expected[((src, int(j)), (dst, int(i)))] = E[i, j]
    assert edges == expected
    assert len(edges) == 2 * (2 * 2 + 3 * 3)  # zero edges across the chains left out
    assert all(isinstance(w, float) for w in edges.values())
