"""Interaction graph: edge values against references, stochastic sources, persistence."""

import numpy as np
import pytest
from _refs import activations_of, brute_force_edges, independent_rule
from toy_models import CASES, PositionMixer, linear_chain, tanh_mlp

from sklearn_lib import InteractionGraph, LIBTransformer

RULES = [("gradient", 0), ("trapezoidal", 4), ("gauss-legendre", 3)]


def _sections(model, case):
    if case == "mlp":
        return {"fc2": lambda h: model.act2(model.fc2(h)), "fc3": model.fc3}
    return {"mix": model.mix, "head": model.head}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("integration, n_intervals", RULES)
def test_edges_match_brute_force_jacobians(rng, case, integration, n_intervals):
    model, layer, downstream, X = CASES[case](rng)
    X = X[:40]
    lib = LIBTransformer(model, layer, downstream_layers=downstream).fit(X)
    graph = lib.interaction_graph(X, integration=integration, n_intervals=n_intervals)
    alphas, weights = independent_rule(integration, n_intervals)
    sections = _sections(model, case)
    assert graph.nodes == [layer, *downstream, "output"]
    for src, dst in graph.sections:
        expected = brute_force_edges(
            sections[src],
            activations_of(model, src, X),
            lib.bases_[src],
            lib.bases_[dst],
            alphas,
            weights,
        )
        E = graph.edges[(src, dst)]
        assert E.shape == (lib.bases_[dst].n_components, lib.bases_[src].n_components)
        assert np.all(E >= 0)
        np.testing.assert_allclose(E, expected, rtol=1e-9, atol=1e-14 * expected.max())


@pytest.mark.parametrize("integration, n_intervals", RULES)
def test_linear_section_edges_closed_form(rng, integration, n_intervals):
    """``F_hat`` is linear: ``E[i, j] = (C+ W C_next)[j, i]^2 Lambda_j``, for every rule."""
    model = linear_chain()
    X = rng.normal(size=(150, 5))
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"], truncation_threshold=0).fit(X)
    graph = lib.interaction_graph(X, integration=integration, n_intervals=n_intervals)
    for src, dst in graph.sections:
        W = dict(model.named_modules())[src].weight.detach().numpy().T
        A = lib.bases_[src].kept_pinv @ W @ lib.bases_[dst].kept_matrix  # (k_in, k_out)
        expected = (A**2 * lib.bases_[src].lambdas[: A.shape[0], None]).T
        E = graph.edges[(src, dst)]
        np.testing.assert_allclose(E, expected, rtol=1e-9, atol=1e-13 * expected.max())


def test_one_projection_is_exact_with_one_output_position(rng):
    model, X = tanh_mlp(), rng.normal(size=(80, 4))
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
    exact = lib.interaction_graph(X)
    projected = lib.interaction_graph(X, n_stochastic_sources=1, random_state=3)
    for section in exact.sections:
        np.testing.assert_allclose(projected.edges[section], exact.edges[section], rtol=1e-12)


def test_stochastic_sources_converge(rng):
    X = rng.normal(size=(60, 4, 3))
    model = PositionMixer(n_pos_out=6).double()
    lib = LIBTransformer(model, "mix", downstream_layers=["head"]).fit(X)
    exact = lib.interaction_graph(X)
    errors = []
    for n_sources in (1, 64, 2048):
        approx = lib.interaction_graph(X, n_stochastic_sources=n_sources, random_state=0)
        errors.append(
            max(
                np.abs(approx.edges[s] - exact.edges[s]).max() / exact.edges[s].max()
                for s in exact.sections
            )
        )
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.03
    # Same seed, same estimate.
    again = lib.interaction_graph(X, n_stochastic_sources=2, random_state=0)
    first = lib.interaction_graph(X, n_stochastic_sources=2, random_state=0)
    np.testing.assert_array_equal(again.edges[("mix", "head")], first.edges[("mix", "head")])


def test_graph_save_load_round_trip(rng, tmp_path):
    X = rng.normal(size=(50, 4))
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)
    graph = lib.interaction_graph(X)
    path = tmp_path / "graph.npz"
    graph.save(path)
    loaded = InteractionGraph.load(path)
    assert loaded.nodes == graph.nodes and loaded.info == graph.info
    for node in graph.nodes:
        np.testing.assert_array_equal(loaded.lambdas[node], graph.lambdas[node])
    for section in graph.sections:
        np.testing.assert_array_equal(loaded.edges[section], graph.edges[section])
    text = loaded.summary()
    assert "edges 'fc2' -> 'fc3'" in text and "node 'output'" in text
    # The file holds no pickled objects.
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)


def test_graph_of_pca_basis(rng):
    """PCA bases have edges too (the paper's baseline)."""
    X = rng.normal(size=(50, 4))
    pca = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"], basis="pca").fit(X)
    graph = pca.interaction_graph(X)
    assert graph.info["basis"] == "pca"
    assert graph.edges[("fc2", "fc3")].shape == (8, 8)  # fc3.input is 8-dim
    assert graph.edges[("fc3", "output")].shape == (3, 8)


def test_graph_errors(rng):
    X = rng.normal(size=(30, 4))
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    with pytest.raises(ValueError, match="'n_stochastic_sources' parameter"):
        lib.interaction_graph(X, n_stochastic_sources=0)
    with pytest.raises(ValueError, match="needs n_intervals >= 1"):
        lib.interaction_graph(X, integration="trapezoidal")
    with pytest.raises(ValueError, match="X has 3 features"):
        lib.interaction_graph(X[:, :3])
