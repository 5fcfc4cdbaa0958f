"""The edges of an interaction graph (``_analysis.edges``) against brute-force Jacobians.

Bases come from the fit's own functions; the reference edges from
:func:`_refs.brute_force_edges` (per-sample Jacobians of ``F_hat``).
"""

import numpy as np
import pytest
from _refs import activations_of, brute_force_edges, independent_rule
from toy_models import PositionMixer, tanh_mlp

from sklearn_lib._analysis.edges import EdgeAccumulator, graph_sections, interaction_graph
from sklearn_lib._analysis.graph import InteractionGraph
from sklearn_lib._core.nodes import Section
from sklearn_lib._fitting.basis import NodeBasis
from sklearn_lib._fitting.fit import FitSettings, fit_bases, inspect, plan_fit
from sklearn_lib._model.session import ModelSession
from sklearn_lib._model.sources import ArraySource
from sklearn_lib._routes.integration import integration_rule, rule_tensors
from sklearn_lib._routes.table import autograd_route, decide_routes

TOL = dict(rtol=1e-9, atol=1e-13)


def fitted(model, names, X):
    """``(session, source, bases)``: a LIB fit by the fit's functions, bases in forward order."""
    settings = FitSettings()
    session = ModelSession(model, random_state=0)
    source = ArraySource(X, 16)
    probe = session.inputs(X[:16])
    sections = inspect(session, probe, names, settings)
    routes = decide_routes(
        session, probe, sections, rule_tensors(settings.rule, session.device), ("gram", "rows")
    )
    plan = plan_fit(session, source, probe, sections, routes, settings)
    result = fit_bases(session, source, sections, plan, routes, settings)
    return session, source, list(result.bases.values())


def graph_routes(session, X, bases, integration="gradient", n_intervals=0):
    rule = rule_tensors(integration_rule(integration, n_intervals), session.device)
    probe = session.inputs(X[:16])
    return decide_routes(session, probe, graph_sections(bases), rule, ("tangents", "rows"))


@pytest.fixture
def mlp(rng):
    """tanh_mlp fitted at fc2 and fc3, with the sections' tails as plain functions."""
    model = tanh_mlp()
    X = rng.normal(size=(40, 4))
    session, source, bases = fitted(model, ["fc2", "fc3"], X)
    tails = {("fc2", "fc3"): lambda z: model.act2(model.fc2(z)), ("fc3", "output"): model.fc3}
    return model, X, session, source, bases, tails


def test_graph_sections_of_fitted_nodes():
    def node(name, shape):
        d = shape[-1]
        return NodeBasis(name, shape, np.zeros(d), np.eye(d), np.eye(d), np.ones(d), d)

    bases = [node("x", [4, 5]), node("y", (2, 3)), node("output", (7,))]
    assert graph_sections(bases) == (
        Section("x", "y", (4, 5), (2, 3)),
        Section("y", "output", (2, 3), (7,)),
    )
    assert graph_sections(bases[:1]) == ()


@pytest.mark.parametrize("integration", [("gradient", 0), ("trapezoidal", 2)])
def test_interaction_graph_equals_brute_force(mlp, integration):
    model, X, session, source, bases, tails = mlp
    routes = graph_routes(session, X, bases, *integration)
    graph = interaction_graph(
        session, source, bases, routes, integration=integration[0], n_intervals=integration[1]
    )
    assert isinstance(graph, InteractionGraph)
    assert graph.nodes == ["fc2", "fc3", "output"]
    assert graph.info == {
        "basis": "lib",
        "integration": integration[0],
        "n_intervals": integration[1],
        "n_stochastic_sources": None,
        "n_samples": 40,
    }
    alphas, weights = independent_rule(*integration)
    by_name = {b.name: b for b in bases}
    for src, dst in graph.sections:
        acts = activations_of(model, src, X)
        expected = brute_force_edges(
            tails[(src, dst)], acts, by_name[src], by_name[dst], alphas, weights
        )
        assert graph.edges[(src, dst)].shape == (
            by_name[dst].n_components,
            by_name[src].n_components,
        )
        np.testing.assert_allclose(graph.edges[(src, dst)], expected, **TOL)
    for basis in bases:
        np.testing.assert_array_equal(
            graph.lambdas[basis.name], basis.lambdas[: basis.n_components]
        )


class PassCounter:
    def __init__(self, monkeypatch):
        self.passes = []
        original = ModelSession.run_pass

        def run_pass(session, source, accumulators, what):
            self.passes.append((what, [type(acc).__name__ for acc in accumulators]))
            return original(session, source, accumulators, what)

        monkeypatch.setattr(ModelSession, "run_pass", run_pass)


def test_known_edges_take_no_pass(mlp, monkeypatch):
    model, X, session, source, bases, tails = mlp
    routes = graph_routes(session, X, bases)
    full = interaction_graph(session, source, bases, routes)
    counter = PassCounter(monkeypatch)
    # Every section known: no pass at all, the known edges and N as given.
    known = {key: (np.full(E.shape, 7.0), 123) for key, E in full.edges.items()}
    graph = interaction_graph(session, source, bases, routes, known=known)
    assert counter.passes == []
    for key in full.edges:
        np.testing.assert_array_equal(graph.edges[key], known[key][0])
    assert graph.info["n_samples"] == 123
    # One known: one pass, of the other section only.
    known = {("fc3", "output"): known[("fc3", "output")]}
    graph = interaction_graph(session, source, bases, routes, known=known)
    assert counter.passes == [("edges 'fc2' -> 'fc3'", ["EdgeAccumulator"])]
    np.testing.assert_array_equal(graph.edges[("fc3", "output")], known[("fc3", "output")][0])
    np.testing.assert_allclose(graph.edges[("fc2", "fc3")], full.edges[("fc2", "fc3")], **TOL)
    assert graph.info["n_samples"] == 40  # of the first section, computed here
    assert known == {("fc3", "output"): known[("fc3", "output")]}  # not filled in
    # None known: one pass for both sections.
    interaction_graph(session, source, bases, routes)
    assert counter.passes[-1] == (
        "edges 'fc2' -> 'fc3', 'fc3' -> 'output'",
        ["EdgeAccumulator", "EdgeAccumulator"],
    )


def run(session, X, acc, batch_size=16):
    (result,) = session.run_pass(ArraySource(X, batch_size), [acc], "edges")
    return result


def test_edge_accumulator_with_positions_equals_brute_force(rng):
    model = PositionMixer().double()
    X = rng.normal(size=(24, 4, 3))
    session, _, bases = fitted(model, ["mix", "head"], X)
    rule = rule_tensors(((1.0,), (1.0,)), session.device)
    for src, dst in zip(bases[:-1], bases[1:]):
        section = Section(src.name, dst.name, src.shape, dst.shape)
        acc = EdgeAccumulator(session, autograd_route(section), src, dst, rule)
        assert acc.reads == (src.name,) and acc.key == (src.name, dst.name)
        E, n = run(session, X, acc, batch_size=10)
        assert n == 24
        acts = activations_of(model, src.name, X)
        tail = {"mix": model.mix, "head": model.head}[src.name]  # to the next node only
        expected = brute_force_edges(tail, acts, src, dst)
        np.testing.assert_allclose(E, expected, **TOL)
        assert (E >= 0).all()


def test_sources_over_one_output_position_are_exact(mlp):
    """+-1 projections over a single output position square to the exact edges."""
    model, X, session, source, bases, tails = mlp
    src, dst = bases[1], bases[2]
    rule = rule_tensors(((1.0,), (1.0,)), session.device)
    route = autograd_route(Section(src.name, dst.name, src.shape, dst.shape))
    exact, _ = run(session, X, EdgeAccumulator(session, route, src, dst, rule))
    sampled, _ = run(
        session, X, EdgeAccumulator(session, route, src, dst, rule, n_stochastic_sources=3)
    )
    np.testing.assert_allclose(sampled, exact, **TOL)
    acts = activations_of(model, "fc3", X)
    expected = brute_force_edges(tails[("fc3", "output")], acts, src, dst)
    np.testing.assert_allclose(exact, expected, **TOL)
