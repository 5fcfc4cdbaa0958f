"""InteractionGraph.to_networkx and .modules (issue 13, part 4)."""

import importlib.util
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_lib import GraphModules, LIBTransformer


def block_diagonal(first, second):
    """One Linear that runs ``first`` on the first inputs and ``second`` on the rest."""
    layer = nn.Linear(
        first.in_features + second.in_features, first.out_features + second.out_features
    )
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[: first.out_features, : first.in_features] = first.weight
        layer.weight[first.out_features :, first.in_features :] = second.weight
        layer.bias.copy_(torch.cat([first.bias, second.bias]))
    return layer


@pytest.fixture(scope="module")
def two_networks():
    """Two independent tanh MLPs side by side: the true modules are the two networks.

    The data is a product grid (every first-network input with every
    second-network input), so the two networks' activations are uncorrelated
    exactly on it, and no LIB feature mixes them.
    """
    torch.manual_seed(0)
    widths = [(3, 6), (6, 5), (5, 2)]
    firsts = [nn.Linear(a, b) for a, b in widths]
    seconds = [nn.Linear(a + 1, b + 1) for a, b in widths]  # unequal halves
    with torch.no_grad():
        seconds[-1].weight.mul_(3.0)  # Lambdas of other sizes: no tie across the networks
    layers = [block_diagonal(f, g) for f, g in zip(firsts, seconds)]
    model = nn.Sequential(
        OrderedDict(fc1=layers[0], act1=nn.Tanh(), fc2=layers[1], act2=nn.Tanh(), out=layers[2])
    ).double()
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(25, 3)), rng.normal(size=(25, 4))
    X = np.concatenate([np.repeat(A, 25, axis=0), np.tile(B, (25, 1))], axis=1)
    lib = LIBTransformer(model, "fc2", downstream_layers=["out"], truncation_threshold=0.0).fit(X)
    graph = lib.interaction_graph(X)
    # Which network each feature belongs to: the half its read-out direction lies in.
    truth = {}
    for name, basis in lib.bases_.items():
        half = {"fc2": 6, "out": 5, "output": 2}[name]
        C = np.abs(basis.kept_matrix)
        assert np.minimum(C[half:].sum(0), C[:half].sum(0)).max() < 1e-8 * C.max()
        truth[name] = (C[half:].sum(0) > C[:half].sum(0)).astype(int)
    return graph, truth


def _same_partition(found, truth, nodes):
    pairs = {(int(a), int(b)) for n in nodes for a, b in zip(found.labels[n], truth[n])}
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.fixture(params=["leiden", "louvain"])
def method(request, monkeypatch):
    """Each algorithm in turn: Leiden where leidenalg is installed, Louvain with it hidden."""
    if request.param == "leiden" and importlib.util.find_spec("leidenalg") is None:
        pytest.skip("needs leidenalg (pip install -e '.[leiden]')")
    if request.param == "louvain":
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "leidenalg" else find_spec(name, *a),
        )
    return request.param


def test_two_independent_networks_are_two_modules(two_networks, method):
    graph, truth = two_networks
    # A low resolution: modules are what modularity cannot split with gain.
    found = graph.modules(resolution=0.1, random_state=0)
    assert isinstance(found, GraphModules) and found.n_modules == 2
    assert _same_partition(found, truth, graph.nodes)
    assert 0.85 < found.modularity <= 1.0
    assert found.method == method
    # At the default resolution modularity splits each network along its
    # strongest paths, but no module ever spans both.
    finer = graph.modules(random_state=0)
    for module in range(finer.n_modules):
        members = finer.members(module)
        assert len({int(truth[n][j]) for n, js in members.items() for j in js}) == 1


def test_the_features_graph_has_the_edges_and_lambdas(two_networks):
    graph, _ = two_networks
    g = graph.to_networkx()
    assert g.number_of_nodes() == sum(len(graph.lambdas[n]) for n in graph.nodes)
    E = graph.edges[("fc2", "out")]
    i, j = np.unravel_index(np.argmax(E), E.shape)
    assert g.edges[("fc2", j), ("out", i)]["weight"] == E[i, j]
    assert g.nodes[("out", 0)]["lambda"] == graph.lambdas["out"][0]
    # No edge joins the two networks: the zero edges are left out.
    assert g.number_of_edges() == sum(int((e > 0).sum()) for e in graph.edges.values())


def test_modules_are_reproducible_and_checked(two_networks):
    graph, _ = two_networks
    a, b = graph.modules(random_state=3), graph.modules(random_state=3)
    assert all(np.array_equal(a.labels[n], b.labels[n]) for n in graph.nodes)
    assert a.members(0) and sum(
        len(v) for m in range(a.n_modules) for v in a.members(m).values()
    ) == sum(len(graph.lambdas[n]) for n in graph.nodes)
    with pytest.raises(ValueError, match="resolution must be positive"):
        graph.modules(resolution=0)


def test_seeds_and_graphs_modularity_cannot_use(two_networks):
    from sklearn_lib import InteractionGraph

    graph, truth = two_networks
    # A RandomState seeds as in scikit-learn: the same state, the same modules.
    a = graph.modules(resolution=0.1, random_state=np.random.RandomState(0))
    b = graph.modules(resolution=0.1, random_state=np.random.RandomState(0))
    assert all(np.array_equal(a.labels[n], b.labels[n]) for n in graph.nodes)
    assert _same_partition(a, truth, graph.nodes)
    with pytest.raises(ValueError, match="random_state must be an int"):
        graph.modules(random_state=0.5)
    lam = np.array([2.0, 1.0])
    empty = InteractionGraph(["a", "b"], {"a": lam, "b": lam}, {("a", "b"): np.zeros((2, 2))})
    with pytest.raises(ValueError, match="no nonzero edge"):
        empty.modules()
