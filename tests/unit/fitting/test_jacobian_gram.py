"""The ``M'`` accumulator (``_fitting.jacobian_gram``) against brute force, and its kept rows.

A section that mixes positions (:class:`toy_models.PositionMixer`, ``mix``
to the output: 4 input and 2 output positions) in a random next basis;
``M'`` by :func:`_refs.brute_force_m_prime`, the edges by
:func:`_refs.brute_force_edges` and by an :class:`EdgeAccumulator` pass.
"""

import numpy as np
import pytest
import torch
from _refs import activations_of, brute_force_edges, brute_force_m_prime, independent_rule
from toy_models import PositionMixer, tanh_mlp

from sklearn_lib._analysis.edges import EdgeAccumulator
from sklearn_lib._core.nodes import Section
from sklearn_lib._fitting import jacobian_gram
from sklearn_lib._fitting.basis import fit_node_basis, identity_basis
from sklearn_lib._fitting.jacobian_gram import JacobianGram
from sklearn_lib._model.session import ModelSession
from sklearn_lib._model.sources import ArraySource
from sklearn_lib._routes.integration import rule_tensors
from sklearn_lib._routes.table import autograd_route, decide_routes

TOL = dict(rtol=1e-9, atol=1e-13)
SECTION = Section("mix", "output", (4, 5), (2, 3))
PLAIN = ((1.0,), (1.0,))


@pytest.fixture
def mixer(rng):
    """``(model, session, X)``: 16 samples of (4 positions, 3 inputs)."""
    model = PositionMixer().double()
    return model, ModelSession(model, random_state=0), rng.normal(size=(16, 4, 3))


def gram(session, matrix, sources=None, rule=PLAIN, route=None, keep_rows=False):
    return JacobianGram(
        session,
        route or autograd_route(SECTION),
        torch.as_tensor(matrix),
        2,
        sources=sources,
        rule=rule_tensors(rule, session.device),
        keep_rows=keep_rows,
    )


def run(session, X, acc, batch_size=8):
    (result,) = session.run_pass(ArraySource(X, batch_size), [acc], "test pass")
    return result


@pytest.mark.parametrize("integration", [("gradient", 0), ("gauss-legendre", 2)])
def test_exact_m_prime_equals_brute_force(mixer, rng, integration):
    model, session, X = mixer
    C_next = rng.normal(size=(3, 2))
    alphas, weights = independent_rule(*integration)
    rule = (tuple(alphas), tuple(weights))
    acc = gram(session, C_next, rule=rule)
    assert acc.reads == ("mix",) and acc.what == "Jacobians 'mix' -> 'output'"
    m_prime = run(session, X, acc)
    acts = activations_of(model, "mix", X)
    expected = brute_force_m_prime(model.tail("mix"), acts, C_next, alphas, weights)
    np.testing.assert_allclose(m_prime, expected, **TOL)
    # Per row: N * P_in rows (16 samples, 4 positions), whatever the batches.
    assert acc.rows == 16 * 4 and acc.count == 16
    np.testing.assert_allclose(
        run(session, X, gram(session, C_next, rule=rule), 5), expected, **TOL
    )


def test_the_routes_closed_forms_give_the_same_m_prime(rng):
    """tanh_mlp's fc2 -> fc3 (Linear -> Tanh) by the route the table decides."""
    model = tanh_mlp()
    session = ModelSession(model)
    X = rng.normal(size=(40, 4))
    section = Section("fc2", "fc3", (8,), (8,))
    rule = rule_tensors(PLAIN, session.device)
    routes = decide_routes(session, session.inputs(X[:16]), [section], rule, ("gram", "rows"))
    route = routes[section]
    assert route.m_prime != "autograd"
    C_next = rng.normal(size=(8, 3))
    acc = JacobianGram(
        session, route, torch.as_tensor(C_next), 1, sources=None, rule=rule, keep_rows=True
    )
    m_prime = run(session, X, acc)
    acts = activations_of(model, "fc2", X)
    tail = lambda z: model.act2(model.fc2(z))  # noqa: E731
    np.testing.assert_allclose(m_prime, brute_force_m_prime(tail, acts, C_next), **TOL)
    # A closed form gives the Gram without rows: none are kept for the edges.
    assert acc.kept is None


def test_sources_average_to_the_exact_m_prime(mixer, rng):
    model, session, X = mixer
    C_next = rng.normal(size=(3, 2))
    expected = brute_force_m_prime(model.tail("mix"), activations_of(model, "mix", X), C_next)
    acc = gram(session, C_next, sources=4)
    passes = [run(session, X, acc, batch_size=2)]
    for _ in range(79):
        acc.reset(4)
        passes.append(run(session, X, acc, batch_size=2))
    scale = np.linalg.norm(expected)
    # Each pass is an estimate (new draws every batch), off by some 10% ...
    single = np.median([np.linalg.norm(p - expected) for p in passes]) / scale
    assert single > 0.05
    # ... and their average approaches the exact M' (a scale or a bias would not).
    average = np.linalg.norm(np.mean(passes, axis=0) - expected) / scale
    assert average < 0.1 and average < single / 2, (average, single)


def test_reset_starts_a_new_round(mixer, rng):
    model, session, X = mixer
    C_next = rng.normal(size=(3, 2))
    acc = gram(session, C_next, keep_rows=True)
    first = run(session, X, acc)
    assert acc.kept is not None  # exact rows, kept
    acc.reset(5)
    assert acc.sources == 5 and acc.rows == 0 and acc.count == 0
    assert acc.kept is None  # sampled rows are not the edges' rows
    assert torch.count_nonzero(acc.sums.total) == 0 and acc.sums.total.dtype == torch.float64
    acc.reset(None)
    # Not added to the first pass: the same M' again.
    np.testing.assert_allclose(run(session, X, acc), first, rtol=1e-12, atol=0)
    assert acc.kept is None  # rows are kept only from the start


def test_reset_with_a_matrix_takes_rows_in_that_basis(mixer, rng):
    """A round in another next basis (a half basis of the next node's rounds): the pass
    gives that basis' M', as a fresh accumulator of it would; a reset without one goes
    back to the basis it was made with (the exact pass after rounds)."""
    model, session, X = mixer
    C_first, C_half = rng.normal(size=(3, 2)), rng.normal(size=(3, 1))
    acc = gram(session, C_first)
    run(session, X, acc)
    acc.reset(None, torch.as_tensor(C_half))
    expected = brute_force_m_prime(model.tail("mix"), activations_of(model, "mix", X), C_half)
    np.testing.assert_allclose(run(session, X, acc), expected, rtol=1e-10, atol=1e-14)
    acc.reset(None)  # no matrix: the one it was made with
    first_again = brute_force_m_prime(model.tail("mix"), activations_of(model, "mix", X), C_first)
    np.testing.assert_allclose(run(session, X, acc), first_again, rtol=1e-10, atol=1e-14)


def fitted_source_basis(model, X, m_prime, n_components=None):
    acts = activations_of(model, "mix", X).reshape(-1, 5)
    mean, cov = acts.mean(0), np.cov(acts, rowvar=False, bias=True)
    settings = dict(kind="lib", n_components=n_components, threshold=0.0, rtol=1e-12)
    return fit_node_basis("mix", (4, 5), mean, cov, m_prime, **settings)


def output_basis(model, X):
    with torch.no_grad():
        outputs = model(torch.as_tensor(X)).numpy()
    return identity_basis((2, 3), outputs.reshape(-1, 3).mean(0))


def test_kept_rows_give_the_edges_of_an_edge_pass(mixer):
    model, session, X = mixer
    dst = output_basis(model, X)
    acc = gram(session, dst.kept_matrix, keep_rows=True)
    m_prime = run(session, X, acc)
    src = fitted_source_basis(model, X, m_prime)
    assert src.n_components == 5  # every direction kept: the rows are the edges' points
    E, n = acc.edges(src)
    assert n == 16 and E.shape == (3, 5)
    assert acc.kept is None  # released
    rule = rule_tensors(PLAIN, session.device)
    edge_acc = EdgeAccumulator(session, autograd_route(SECTION), src, dst, rule)
    (E_pass, n_pass) = run(session, X, edge_acc)
    assert n_pass == 16
    np.testing.assert_allclose(E, E_pass, **TOL)
    expected = brute_force_edges(model.tail("mix"), activations_of(model, "mix", X), src, dst)
    np.testing.assert_allclose(E, expected, **TOL)


def test_no_edges_from_rows_at_other_points(mixer):
    """A truncated basis does not reconstruct the activations the rows were taken at."""
    model, session, X = mixer
    dst = output_basis(model, X)
    acc = gram(session, dst.kept_matrix, keep_rows=True)
    m_prime = run(session, X, acc)
    assert acc.edges(fitted_source_basis(model, X, m_prime, n_components=3)) is None
    assert acc.kept is None
    # Nor without kept rows at all.
    plain = gram(session, dst.kept_matrix)
    run(session, X, plain)
    assert plain.edges(fitted_source_basis(model, X, m_prime)) is None


def test_kept_rows_respect_the_budget(mixer, monkeypatch):
    """Rows are kept up to ROW_REUSE_BYTES; a pass that would go over keeps none."""
    model, session, X = mixer
    dst = output_basis(model, X)
    acc = gram(session, dst.kept_matrix, keep_rows=True)
    m_prime = run(session, X, acc)
    # Each batch keeps its rows (6 rows of its activations' size) and its activations.
    batch_bytes = (1 + 2 * 3) * 8 * 4 * 5 * 8
    assert acc.kept_bytes == 2 * batch_bytes
    src = fitted_source_basis(model, X, m_prime)
    for budget, kept in [(2 * batch_bytes, True), (2 * batch_bytes - 1, False), (1, False)]:
        monkeypatch.setattr(jacobian_gram, "ROW_REUSE_BYTES", budget)
        acc = gram(session, dst.kept_matrix, keep_rows=True)
        np.testing.assert_allclose(run(session, X, acc), m_prime, rtol=1e-12, atol=0)
        assert (acc.kept is not None) is kept, budget
        if kept:
            assert acc.kept_bytes <= budget
        edges = acc.edges(src)
        assert (edges is not None) is kept
