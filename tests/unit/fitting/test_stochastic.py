"""Stochastic sources (``_fitting.stochastic``): the draws, their unbiasedness, and every decision.

References are written out here: the exact rows ``e_t (x) C[:, i]`` and
their random +-1 combinations by numpy loops, the rounds' statistics by
numpy, and ``M'`` by :func:`_refs.brute_force_m_prime`.
"""

import dataclasses
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from _refs import activations_of, brute_force_m_prime
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from sklearn_lib._core.nodes import Section
from sklearn_lib._fitting import stochastic
from sklearn_lib._fitting.basis import fit_node_basis
from sklearn_lib._fitting.jacobian_gram import JacobianGram
from sklearn_lib._fitting.stochastic import (
    AUTO_MAX_ROUNDS,
    AUTO_MIN_ROUNDS,
    AUTO_SOURCES,
    SourceRounds,
    _gapped_top,
    auto_stays_exact,
    converged_m_prime,
    edge_sources,
    m_prime_route,
    m_prime_sources,
    round_sources,
)
from sklearn_lib._model.session import ModelSession
from sklearn_lib._model.sources import ArraySource
from sklearn_lib._routes.cotangents import Cotangents
from sklearn_lib._routes.integration import rule_tensors
from sklearn_lib._routes.table import autograd_route

P, D_NEXT, K = 3, 4, 2  # output positions, next width, next kept features
#: A LIB basis that keeps every non-null feature.
LIB_FIT = dict(kind="lib", n_components=None, threshold=0.0, rtol=1e-12)


def exact_cotangents(rng):
    C = torch.as_tensor(rng.normal(size=(D_NEXT, K)))
    return Cotangents(C, P)


def exact_rows(C):
    """``e_t (x) C[:, i]`` for every (t, i), as numpy ``(P * K, P, D_NEXT)``, row ``t * K + i``."""
    rows = np.zeros((P * K, P, D_NEXT))
    for t in range(P):
        for i in range(K):
            rows[t * K + i, t] = C[:, i]
    return rows


# -- the draws ---------------------------------------------------------------------------
def test_no_sources_keep_the_exact_rows(rng):
    exact = exact_cotangents(rng)
    generator = torch.Generator().manual_seed(0)
    assert m_prime_sources(exact, None, generator) is exact
    assert edge_sources(exact, None, generator) is exact
    # Nothing is drawn: the generator is where it was.
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())


@pytest.mark.parametrize(
    "draw, shape",
    [(m_prime_sources, (5, P, K)), (edge_sources, (5, P))],
    ids=["m_prime", "edges"],
)
def test_sources_are_signs_of_the_documented_shape(rng, draw, shape):
    exact = exact_cotangents(rng)
    sampled = draw(exact, 5, torch.Generator().manual_seed(1))
    assert not sampled.exact and sampled.matrix is exact.matrix
    assert sampled.n_positions == P and tuple(sampled.signs.shape) == shape
    assert set(torch.unique(sampled.signs).tolist()) == {-1, 1}
    assert sampled.scale == pytest.approx(1 / 5)
    # Drawn from the generator alone: the same seed, the same signs.
    again = draw(exact, 5, torch.Generator().manual_seed(1))
    assert torch.equal(sampled.signs, again.signs)
    other = draw(exact, 5, torch.Generator().manual_seed(2))
    assert not torch.equal(sampled.signs, other.signs)


def test_m_prime_sources_combine_every_row(rng):
    """One row per source: ``sum_{t,i} r_sti e_t (x) C[:, i]``."""
    exact = exact_cotangents(rng)
    sampled = m_prime_sources(exact, 6, torch.Generator().manual_seed(0))
    signs, rows = sampled.signs.numpy(), exact_rows(exact.matrix.numpy())
    expected = np.einsum("sr,rpd->spd", signs.reshape(6, P * K), rows)
    assert sampled.rows.shape == expected.shape
    np.testing.assert_allclose(sampled.rows[:].numpy(), expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(sampled.rows[2:4].numpy(), expected[2:4], rtol=0, atol=1e-15)


def test_sources_per_sample_are_each_samples_own(rng):
    """``(S, n, P, K)`` signs: sample ``j``'s rows combine every row with its own signs."""
    exact = exact_cotangents(rng)
    sampled = m_prime_sources(exact, 6, torch.Generator().manual_seed(0), n_samples=3)
    assert tuple(sampled.signs.shape) == (6, 3, P, K) and sampled.rows.per_sample
    signs, rows = sampled.signs.numpy(), exact_rows(exact.matrix.numpy())
    expected = np.einsum("snr,rpd->snpd", signs.reshape(6, 3, P * K), rows)
    assert sampled.rows.shape == expected.shape
    np.testing.assert_allclose(sampled.rows[1:5].numpy(), expected[1:5], rtol=0, atol=1e-15)
    assert not np.array_equal(signs[:, 0], signs[:, 1])  # independent draws
    # Through a final map's factor R (r <= K columns): the first r signs of each
    # position, made alike (FinalLinear's rows of the map's input).
    R = torch.as_tensor(rng.normal(size=(4, K - 1)))
    expected = np.einsum("snpr,dr->snpd", signs[..., : K - 1], R.numpy())
    np.testing.assert_allclose(sampled.rows.through(R)[:].numpy(), expected, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="features of signs for a factor"):
        sampled.rows.through(torch.ones(4, K + 1, dtype=torch.float64))


def test_edge_sources_combine_positions_per_feature(rng):
    """Row ``s * K + i``: ``sum_t r_st e_t (x) C[:, i]``, one per source and next feature."""
    exact = exact_cotangents(rng)
    sampled = edge_sources(exact, 6, torch.Generator().manual_seed(0))
    signs, C = sampled.signs.numpy(), exact.matrix.numpy()
    expected = np.zeros((6 * K, P, D_NEXT))
    for s in range(6):
        for i in range(K):
            for t in range(P):
                expected[s * K + i, t] = signs[s, t] * C[:, i]
    np.testing.assert_allclose(sampled.rows.numpy(), expected, rtol=0, atol=1e-15)


def test_m_prime_sources_are_unbiased(rng):
    """The average Gram of sampled rows, through a Jacobian, approaches the exact rows' Gram."""
    exact = exact_cotangents(rng)
    A = rng.normal(size=(P * D_NEXT, 5))  # a "Jacobian": row -> gradient of 5 inputs
    g = exact_rows(exact.matrix.numpy()).reshape(P * K, -1) @ A
    expected = g.T @ g
    generator = torch.Generator().manual_seed(0)
    draws, estimate = 2000, 0
    for _ in range(draws):
        sampled = m_prime_sources(exact, 4, generator)
        signs = sampled.signs.numpy().reshape(4, P * K)
        g = signs @ exact_rows(exact.matrix.numpy()).reshape(P * K, -1) @ A
        estimate = estimate + sampled.scale * g.T @ g
    estimate /= draws
    error = np.linalg.norm(estimate - expected) / np.linalg.norm(expected)
    assert error < 0.05, error
    # One draw alone is far off: the agreement is the average's.
    single = signs @ exact_rows(exact.matrix.numpy()).reshape(P * K, -1) @ A
    assert np.linalg.norm(single.T @ single / 4 - expected) / np.linalg.norm(expected) > 0.1


def test_edge_sources_are_unbiased_per_feature(rng):
    """Per next feature, the squared directional derivatives summed over output positions."""
    exact = exact_cotangents(rng)
    A = rng.normal(size=(P * D_NEXT, 5))
    C = exact.matrix.numpy()
    expected = np.zeros((K, 5))
    for i in range(K):
        for t in range(P):
            row = np.zeros((P, D_NEXT))
            row[t] = C[:, i]
            expected[i] += (row.reshape(-1) @ A) ** 2
    generator = torch.Generator().manual_seed(0)
    draws, estimate = 2000, 0
    for _ in range(draws):
        sampled = edge_sources(exact, 3, generator)
        per_row = torch.as_tensor((sampled.rows.numpy().reshape(3 * K, -1) @ A) ** 2)
        estimate = estimate + sampled.feature_sums(per_row).numpy()
    estimate /= draws
    np.testing.assert_allclose(estimate, expected, rtol=0.06)


# -- the decisions -----------------------------------------------------------------------
def section(n_rows):
    """A section to the output whose exact ``M'`` has ``n_rows`` rows (one position)."""
    return Section("a", "output", (4,), (n_rows,))


def test_auto_stays_exact_up_to_the_fewest_rounds_of_sources():
    assert AUTO_MIN_ROUNDS * AUTO_SOURCES == 64  # the documented boundary
    assert auto_stays_exact(1) and auto_stays_exact(63) and auto_stays_exact(64)
    assert not auto_stays_exact(65) and not auto_stays_exact(10_000)


@pytest.mark.parametrize(
    "setting, shape, row_free, sources, why",
    [
        (None, (8, 100), False, None, "exact"),
        (None, (2,), True, None, "exact"),
        (5, (8, 100), False, 5, "5 random sources per batch"),
        (5, (2,), True, None, "exact: 2 rows per batch, no more than the 5 sources asked"),
        (
            10**6,
            (3,),
            False,
            None,
            "exact: 3 rows per batch, no more than the 1000000 sources asked",
        ),
        (3, (3,), False, None, "exact: 3 rows per batch, no more than the 3 sources asked"),
        (2, (3,), False, 2, "2 random sources per batch"),
        ("auto", (8, 100), True, None, "exact: its route needs no backward pass per row"),
        ("auto", (8, 8), False, None, "exact: 64 rows cost no more than 4 rounds"),
        ("auto", (3,), False, None, "exact: 3 rows cost no more than 4 rounds"),
        ("auto", (5, 13), False, "auto", "rounds of random sources until the basis stops moving"),
    ],
)
def test_m_prime_route_says_how_and_why(setting, shape, row_free, sources, why):
    s = Section("a", "b", (4,), shape)
    assert m_prime_route(setting, s, row_free) == (sources, why)


def test_auto_counts_output_positions_times_the_next_width():
    # 65 rows as 65 positions of one feature, or one position of 65: both over the bound.
    assert m_prime_route("auto", Section("a", "b", (4,), (65, 1)), False)[0] == "auto"
    assert m_prime_route("auto", section(65), False)[0] == "auto"
    assert m_prime_route("auto", section(64), False)[0] is None


def test_source_rounds_is_a_frozen_record():
    rounds = SourceRounds(n_sources=64, rounds=4, lambda_error=0.001, cosine=0.999, converged=True)
    assert [f.name for f in dataclasses.fields(SourceRounds)] == [
        "n_sources",
        "rounds",
        "lambda_error",
        "cosine",
        "converged",
        "exact",
    ]
    assert rounds == SourceRounds(64, 4, 0.001, 0.999, True, False)  # a saved fit's has none
    with pytest.raises(dataclasses.FrozenInstanceError):
        rounds.rounds = 5


def test_the_top_features_grow_past_ties():
    assert _gapped_top(np.array([64, 49, 36, 25, 16, 16, 4, 1.0]), 0.0) == 6
    assert _gapped_top(np.array([64, 49, 36, 25, 16, 8, 4, 1.0]), 0.0) == 5
    assert _gapped_top(np.array([64, 49, 36, 25, 16, 10, 2, 1.0]), 7.0) == 6  # within the error
    assert _gapped_top(np.array([3.0, 2.9]), 0.0) == 2 and _gapped_top(np.array([1.0]), 0.0) == 1


def test_a_round_takes_as_few_sources_as_give_its_draws():
    """Drawn per sample, a round takes ceil(4096 / N) sources per batch, 1 to 16; shared by
    a batch (or on a stream of unknown size), 16.  Fewer sources lower the count of exact
    rows that stay exact (4 rounds' worth)."""
    assert stochastic.AUTO_ROUND_DRAWS == 4096
    assert [round_sources(True, n) for n in (1, 256, 257, 1024, 4096, 10**6)] == [
        16, 16, 16, 4, 1, 1
    ]  # fmt: skip
    assert round_sources(False, 10**6) == 16 and round_sources(True, None) == 16
    # Rounds are passes whatever their sources: the rows that stay exact do not shrink.
    assert auto_stays_exact(64) and not auto_stays_exact(65)
    section = Section("a", "b", (8, 4), (8, 4))  # 32 exact rows
    assert m_prime_route("auto", section, False)[0] is None


# -- rounds: converged_m_prime -----------------------------------------------------------
def basis_of_identity_gram(d):
    """``basis_of`` for whitened activations: Lambda are the eigenvalues of ``M'`` itself."""

    def basis_of(m_prime):
        return fit_node_basis("a", (d,), np.zeros(d), np.eye(d), m_prime, **LIB_FIT)

    return basis_of


class ScriptedRounds:
    """A session and accumulator whose rounds give the ``M'`` of a script, in order."""

    what = "Jacobians 'a' -> 'output'"

    def __init__(self, matrices):
        self.matrices = list(matrices)
        self.given = []
        self.resets = []
        self.matrices_given = []
        self.passes = []

    def reset(self, sources, matrix=None):
        self.resets.append(sources)
        self.matrices_given.append(matrix)

    def run_pass(self, source, accumulators, what):
        assert accumulators == [self]
        self.passes.append(what)
        self.given.append(self.matrices[len(self.given)])
        return [self.given[-1]]


def test_identical_rounds_stop_after_the_fewest(rng):
    A = rng.normal(size=(6, 6))
    m = A @ A.T
    script = ScriptedRounds([m] * AUTO_MAX_ROUNDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        m_prime, report, _ = converged_m_prime(script, "source", script, basis_of_identity_gram(6))
    np.testing.assert_allclose(m_prime, m, rtol=1e-14)
    # Two checks in a row must pass, and at least the fewest rounds run.
    assert report == SourceRounds(AUTO_MIN_ROUNDS * AUTO_SOURCES, AUTO_MIN_ROUNDS, 0.0, 1.0, True)
    assert script.resets == [AUTO_SOURCES] * AUTO_MIN_ROUNDS
    assert script.passes == [f"{script.what} (round {r})" for r in range(1, AUTO_MIN_ROUNDS + 1)]


def test_two_checks_in_a_row_must_pass():
    """Rounds 1 and 2 disagree on the top Lambda by 2%: the check after 2 rounds fails, those
    after 4 and 6 pass (the spread's standard error shrinks); the rounds stop at 6, not 4."""
    base = np.diag([10.0, 6.0, 3.0, 1.0])
    shift = np.diag([0.1, 0.0, 0.0, 0.0])  # the eigenvectors stay: cosines are 1
    rounds = [base + shift, base - shift] + [base] * (AUTO_MAX_ROUNDS - 2)
    script = ScriptedRounds(rounds)
    m_prime, report, _ = converged_m_prime(script, "source", script, basis_of_identity_gram(4))
    assert report.rounds == 6 and report.converged and len(script.given) == 6
    np.testing.assert_allclose(m_prime, base, rtol=1e-14)
    for n, passes in [(2, False), (4, True), (6, True)]:
        tops = [np.diag(m)[0] for m in rounds[:n]]
        error = np.std(tops, ddof=1) / np.sqrt(n) / 10.0  # one standard error
        margin = stochastic.LAMBDA_MARGIN * error
        assert bool(margin <= stochastic.AUTO_LAMBDA_TOLERANCE) is passes, (n, error)
    assert report.lambda_error == pytest.approx(error, rel=1e-9)


def test_rounds_that_never_agree_run_out_and_warn(rng):
    """Very noisy rounds: all 64 run, the mean is returned, and the estimate is the spread's."""
    d = 6
    base = np.diag([6.0, 5, 4, 3, 2, 1])
    noisy = []
    for _ in range(AUTO_MAX_ROUNDS):
        A = rng.normal(size=(d, d))
        noisy.append(base + 2.0 * A @ A.T)
    script = ScriptedRounds(noisy)
    message = r"did not converge on Jacobians .* after 64 rounds"
    with pytest.warns(ConvergenceWarning, match=message):
        m_prime, report, _ = converged_m_prime(script, "source", script, basis_of_identity_gram(d))
    np.testing.assert_allclose(m_prime, np.mean(noisy, axis=0), rtol=1e-12)
    assert report.rounds == AUTO_MAX_ROUNDS and not report.converged
    assert report.n_sources == AUTO_MAX_ROUNDS * AUTO_SOURCES
    # The Lambda error: the standard error of the rounds' top-5 Lambdas (the largest),
    # relative to the largest Lambda of their mean.
    tops = np.array([np.sort(np.linalg.eigvalsh(m))[::-1][:5] for m in noisy])
    top_mean = np.sort(np.linalg.eigvalsh(np.mean(noisy, axis=0)))[::-1][0]
    expected = tops.std(axis=0, ddof=1).max() / np.sqrt(AUTO_MAX_ROUNDS) / top_mean
    assert report.lambda_error == pytest.approx(expected, rel=1e-9)
    assert stochastic.LAMBDA_MARGIN * report.lambda_error > stochastic.AUTO_LAMBDA_TOLERANCE
    assert 0 < report.cosine <= 1


def test_a_chain_alternates_the_next_halves_and_counts_their_difference():
    """Rounds alternate between the next node's two half bases; rounds that agree
    within each half but differ between them (the next basis moved this one) give
    an error no own spread would: the halves' largest top-Lambda difference."""
    base = np.diag([10.0, 6.0, 3.0, 1.0])
    shift = np.diag([0.1, 0.0, 0.0, 0.0])
    script = ScriptedRounds([base + shift, base - shift] * (AUTO_MAX_ROUNDS // 2))
    halves = ("half A", "half B")
    with pytest.warns(ConvergenceWarning):  # 2% > 1%
        m_prime, report, own_halves = converged_m_prime(
            script, "source", script, basis_of_identity_gram(4), next_halves=halves
        )
    assert script.matrices_given[:4] == ["half A", "half B", "half A", "half B"]
    np.testing.assert_allclose(m_prime, base, rtol=1e-14)
    # Largest difference 0.2 of the largest Lambda 10 (the mean's): twice the mean's error.
    assert report.lambda_error == pytest.approx(0.01, rel=1e-9)
    # The halves' bases come back, for the section before.
    np.testing.assert_allclose(own_halves[0].lambdas, [10.1, 6, 3, 1], rtol=1e-12)
    np.testing.assert_allclose(own_halves[1].lambdas, [9.9, 6, 3, 1], rtol=1e-12)


def test_a_chain_whose_error_is_inherited_stops_and_says_so():
    """No own spread at all, a 2% difference between halves: more rounds cannot
    help, so the rounds stop after two settled checks (the own spread is known
    from 2 rounds per half: checks at 4 and 6 rounds) and warn why."""
    base = np.diag([10.0, 6.0, 3.0, 1.0])
    shift = np.diag([0.1, 0.0, 0.0, 0.0])
    script = ScriptedRounds([base + shift, base - shift] * (AUTO_MAX_ROUNDS // 2))
    with pytest.warns(ConvergenceWarning, match="comes from the next node's basis"):
        _, report, _ = converged_m_prime(
            script, "source", script, basis_of_identity_gram(4), next_halves=(1, 2)
        )
    assert report.rounds == 6 and not report.converged


def test_the_exact_pass_after_chained_rounds_takes_the_whole_basis_and_passes_the_chain_on():
    """Rounds in the next node's half bases, then the exact pass where a third pair would
    pass 40 rows: that pass resets to the accumulator's own (whole) next basis, and the
    rounds' halves go on to the section before."""
    base = np.diag([10.0, 6.0, 3.0, 1.0])
    script = ScriptedRounds([base] * 3)
    m_prime, report, halves = converged_m_prime(
        script, "source", script, basis_of_identity_gram(4), exact_rows=40, next_halves=(1, 2)
    )
    assert script.resets == [AUTO_SOURCES, AUTO_SOURCES, None]
    assert script.matrices_given == [1, 2, None]  # None: the basis it was made with
    assert report.exact and report.rounds == 2 and halves is not None
    assert report.converged  # its estimate (identical halves: none) within the tolerances
    np.testing.assert_allclose(halves[0].lambdas, [10, 6, 3, 1], rtol=1e-12)


def test_an_exact_pass_that_inherits_too_much_says_so():
    """Halves 2% apart, then the exact pass: none of its own error, but what it inherits
    is past the tolerance: reported unconverged, with the warning that says why."""
    base = np.diag([10.0, 6.0, 3.0, 1.0])
    shift = np.diag([0.1, 0.0, 0.0, 0.0])
    script = ScriptedRounds([base + shift, base - shift, base])
    with pytest.warns(ConvergenceWarning, match="comes from the next node's basis"):
        _, report, _ = converged_m_prime(
            script, "source", script, basis_of_identity_gram(4), exact_rows=40, next_halves=(1, 2)
        )
    assert report.exact and not report.converged
    assert report.lambda_error == pytest.approx(0.01, rel=1e-9)


def test_unchained_rounds_ignore_the_halves_difference():
    """The same rounds without a chain: their spread is the own noise (all share the
    next basis), its standard error over all rounds."""
    base = np.diag([10.0, 6.0, 3.0, 1.0])
    shift = np.diag([0.1, 0.0, 0.0, 0.0])
    rounds = [base + shift, base - shift] * (AUTO_MAX_ROUNDS // 2)
    script = ScriptedRounds(rounds)
    _, report, halves = converged_m_prime(script, "source", script, basis_of_identity_gram(4))
    assert script.matrices_given == [None] * report.rounds
    tops = [np.diag(m)[0] for m in rounds[: report.rounds]]
    expected = np.std(tops, ddof=1) / np.sqrt(report.rounds) / 10.0
    assert report.lambda_error == pytest.approx(expected, rel=1e-9)
    assert halves is not None


def test_a_rounds_own_angle_is_counted(rng):
    """Rounds whose top eigenvector turns from round to round (same Lambdas): the
    halves may agree by chance, the rounds' own angles to their mean do not."""
    d = 6
    rounds = []
    for _ in range(AUTO_MAX_ROUNDS):
        Q, _ = np.linalg.qr(np.eye(d) + 0.3 * rng.normal(size=(d, d)))
        rounds.append(Q @ np.diag([6.0, 5, 4, 3, 2, 1]) @ Q.T)
    # Make the halves agree exactly: the same rounds in the same order in each.
    paired = [m for m in rounds[: AUTO_MAX_ROUNDS // 2] for _ in (0, 1)]
    script = ScriptedRounds(paired)
    _, report, _ = converged_m_prime(script, "source", script, basis_of_identity_gram(d))
    # The halves alone (and the Lambdas, all alike) would have stopped at the fewest.
    assert report.rounds > AUTO_MIN_ROUNDS
    assert report.converged and report.cosine >= stochastic.AUTO_COSINE


def one_output_model():
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(4, 6), act=nn.Tanh(), fc2=nn.Linear(6, 1))
    ).double()


def test_rounds_on_a_model_with_one_output_row_are_exact(rng):
    """One output row: each source is +-that row, whose Gram is exact; rounds agree at once."""
    model = one_output_model()
    X = rng.normal(size=(48, 4))
    session = ModelSession(model, random_state=0)
    s = Section("fc1", "output", (4,), (1,))
    rule = rule_tensors(((1.0,), (1.0,)), session.device)
    acc = JacobianGram(
        session, autograd_route(s), torch.eye(1, dtype=torch.float64), 1, sources=3, rule=rule
    )
    acts = activations_of(model, "fc1", X)
    mean, gram = acts.mean(0), np.cov(acts, rowvar=False, bias=True)

    def basis_of(m_prime):
        return fit_node_basis("fc1", (4,), mean, gram, m_prime, **LIB_FIT)

    m_prime, report, _ = converged_m_prime(session, ArraySource(X, 16), acc, basis_of)
    expected = brute_force_m_prime(model, acts, np.eye(1))
    np.testing.assert_allclose(m_prime, expected, rtol=1e-10, atol=1e-14)
    assert report.converged and report.rounds == AUTO_MIN_ROUNDS
    assert report.lambda_error == pytest.approx(0.0, abs=1e-12)
    assert report.cosine == pytest.approx(1.0)
    assert acc.sources == AUTO_SOURCES  # each round reset it
