"""Cotangents and autograd Jacobian rows (``_routes``) against brute-force Jacobians."""

import gc
import weakref

import numpy as np
import pytest
import torch
from _refs import activations_of, brute_force_m_prime, independent_rule
from _sections import jacobians
from toy_models import PositionMixer

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.cotangents import (
    Cotangents,
    EveryPositionRows,
    batch_cotangents,
    section_reads,
)


def _rule(integration, n_intervals):
    return tuple(torch.as_tensor(v) for v in independent_rule(integration, n_intervals))


@pytest.mark.parametrize("batched_rows", [True, False])
@pytest.mark.parametrize("integration, n_intervals", [("gradient", 0), ("gauss-legendre", 2)])
def test_jacobian_gram_engines_match_brute_force(rng, batched_rows, integration, n_intervals):
    """``M'`` itself (not only its spectrum), for the vmapped and looped engines."""
    model = PositionMixer().double()
    X = rng.normal(size=(30, 4, 3))
    session = ModelSession(model)
    x = torch.as_tensor(X)
    (f,) = session.read(x, ["mix"])
    basis_next = rng.normal(size=(5, 4))  # any next basis, here not even orthogonal
    _, section = jacobians(session, x, "mix", "head", batched_rows=batched_rows)
    cotangents = Cotangents(torch.as_tensor(basis_next), 2)  # "head" has 2 positions
    got = section.gram_sum(x, f, cotangents, _rule(integration, n_intervals))
    alphas, weights = independent_rule(integration, n_intervals)
    expected = brute_force_m_prime(
        model.mix, activations_of(model, "mix", X), basis_next, alphas, weights
    )
    n_rows = len(X) * 4  # gram_sum returns the unnormalised sum over N * P_in rows
    np.testing.assert_allclose(got.numpy() / n_rows, expected, rtol=1e-10, atol=1e-12)


def test_exact_cotangents_are_position_major():
    C = torch.arange(6.0).reshape(3, 2)  # d_next = 3, k_next = 2
    rows = Cotangents(C, 2).rows  # (P_out * k_next, P_out, d_next)
    assert rows.shape == (4, 2, 3)
    for t in range(2):
        for i in range(2):
            expected = torch.zeros(2, 3)
            expected[t] = C[:, i]
            torch.testing.assert_close(rows[t * 2 + i], expected)
    assert Cotangents(C, 2).exact and Cotangents(C, 2).scale == 1.0


def test_source_cotangents_mix_positions_and_features():
    C = torch.randn(3, 2, dtype=torch.float64)
    signs = torch.tensor([[[1, -1], [-1, -1]]])  # (S=1, P_out=2, k_next=2)
    (row,) = Cotangents(C, 2, signs).rows
    torch.testing.assert_close(row[0], C[:, 0] - C[:, 1])
    torch.testing.assert_close(row[1], -C[:, 0] - C[:, 1])
    position_signs = torch.tensor([[1, -1], [1, 1], [-1, 1]])  # (S=3, P_out=2)
    sampled = Cotangents(C, 2, position_signs)
    assert sampled.rows.shape == (3 * 2, 2, 3) and sampled.scale == pytest.approx(1 / 3)
    torch.testing.assert_close(sampled.rows[1], torch.stack([C[:, 1], -C[:, 1]]))
    # Per next feature: the source average of the per-row values.
    per_row = torch.arange(6.0)[:, None]
    torch.testing.assert_close(sampled.feature_sums(per_row), torch.tensor([[2.0], [3.0]]))


def test_stochastic_sources_are_unbiased(rng):
    """Averaging M' over many random +-1 sources approaches the exact M'."""
    model = PositionMixer(n_pos_out=3).double()
    session = ModelSession(model)
    x = torch.as_tensor(rng.normal(size=(20, 4, 3)))
    (f,) = session.read(x, ["mix"])
    _, section = jacobians(session, x, "mix")
    C = torch.eye(3, dtype=torch.float64)
    rule = _rule("gradient", 0)
    exact = section.gram_sum(x, f, Cotangents(C, 3), rule)
    gen = torch.Generator().manual_seed(0)
    signs = 2 * torch.randint(0, 2, (4000, 3, 3), generator=gen) - 1
    mean = section.gram_sum(x, f, Cotangents(C, 3, signs), rule)
    assert float((mean - exact).abs().max() / exact.abs().max()) < 0.05


def test_exact_rows_are_made_chunk_by_chunk():
    """Slices and signed sums of the exact rows equal those of the whole tensor, never made."""
    generator = torch.Generator().manual_seed(0)
    C = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    P = 4
    whole = torch.zeros(P, 3, P, 5, dtype=torch.float64)  # (t, i, t', d): e_t (x) C[:, i]
    for t in range(P):
        whole[t, :, t, :] = C.T
    whole = whole.reshape(P * 3, P, 5)
    rows = Cotangents(C, P).rows
    assert rows.shape == whole.shape and len(rows) == 12
    for start, stop in [(0, 12), (0, 1), (5, 9), (11, 12), (3, 3)]:
        torch.testing.assert_close(rows[start:stop], whole[start:stop])
    torch.testing.assert_close(rows[-1], whole[-1])
    signs = (2 * torch.randint(0, 2, (2, 12), generator=generator) - 1).to(torch.float64)
    torch.testing.assert_close(rows.combine(signs), (signs @ whole.flatten(1)).view(2, P, 5))
    assert rows.to(torch.float32)[0:2].dtype == torch.float32
    # 256 positions x 64 features: 2 GiB whole, nothing until sliced.
    big = Cotangents(torch.eye(64, dtype=torch.float64), 256).rows
    assert big.shape == (256 * 64, 256, 64) and big[100:102].shape == (2, 256, 64)


def test_rows_at_every_position_sum_each_features_exact_rows():
    """Row ``i`` of ``EveryPositionRows`` is the sum over positions of the exact rows of
    feature ``i``: for a section that keeps positions apart, their Gram is the exact one."""
    generator = torch.Generator().manual_seed(0)
    C, P = torch.randn(5, 3, generator=generator, dtype=torch.float64), 4
    rows = EveryPositionRows(C, P)
    assert rows.shape == (3, P, 5) and len(rows) == 3
    exact = _exact_rows(C, P).reshape(P, 3, P, 5).sum(0)
    for start, stop in [(0, 3), (1, 2), (2, 3)]:
        torch.testing.assert_close(rows[start:stop], exact[start:stop])
    with pytest.raises(TypeError, match="contiguous slices"):
        rows[0]
    # The Gram over positions of a position-wise map's rows: that of all P * k exact rows.
    A = torch.randn(P, 5, 6, generator=generator, dtype=torch.float64)  # position t's own map
    apart = torch.einsum("rtd,tde->rte", rows[0:3], A)
    every = torch.einsum("rtd,tde->rte", _exact_rows(C, P), A)
    gram = lambda g: torch.einsum("rte,rtf->ef", g, g)  # noqa: E731
    torch.testing.assert_close(gram(apart), gram(every), rtol=1e-12, atol=1e-12)


# -- sequences of other lengths ------------------------------------------------------------------
def _exact_rows(C, P):
    """``e_t (x) C[:, i]`` at row ``t * k + i``, written out."""
    d, k = C.shape
    rows = torch.zeros(P * k, P, d, dtype=C.dtype)
    for t in range(P):
        for i in range(k):
            rows[t * k + i, t] = C[:, i]
    return rows


@pytest.mark.parametrize("n_positions", [1, 2, 5])
def test_cotangents_at_other_positions_are_those_of_that_length(n_positions):
    C = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = Cotangents(C, 3)
    other = exact.at_positions(n_positions)
    assert other.exact and other.n_positions == n_positions and other.matrix is C
    torch.testing.assert_close(other.rows[:], _exact_rows(C, n_positions), rtol=0, atol=0)
    torch.testing.assert_close(other.rows[:], Cotangents(C, n_positions).rows[:], rtol=0, atol=0)


def test_cotangents_of_each_length_are_made_once():
    exact = Cotangents(torch.eye(3, dtype=torch.float64), 4)
    assert exact.at_positions(4) is exact  # its own length
    assert exact.at_positions(7) is exact.at_positions(7)
    assert exact.at_positions(7) is not exact.at_positions(6)
    assert exact.at_one_position() is exact.at_positions(1)
    assert exact.at_positions(1).n_positions == 1


def test_sampled_cotangents_have_no_other_length():
    signs = torch.ones(2, 3)  # (S, P_out)
    with pytest.raises(AssertionError):
        Cotangents(torch.eye(2), 3, signs).at_positions(5)


@pytest.mark.parametrize(
    "lengths_vary, reads", [(False, ("a",)), (True, ("a", "b")), (None, ("a", "b"))]
)
def test_a_section_reads_its_end_unless_lengths_are_known_not_to_vary(lengths_vary, reads):
    assert section_reads(Section("a", "b", (3, 2), (3, 4)), lengths_vary) == reads


def test_a_section_to_the_output_reads_the_output_to_count_positions():
    section = Section("a", OUTPUT_NODE, (3, 2), (3, 4))
    assert section_reads(section, True) == ("a", OUTPUT_NODE)
    assert section_reads(section, False) == ("a",)


def test_batch_cotangents_count_the_positions_of_the_batchs_output():
    C = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    section = Section("a", "b", (3, 5), (3, 4))
    exact = Cotangents(C, 3)
    longer = {"a": torch.zeros(2, 7, 5), "b": torch.zeros(2, 7, 4)}
    got = batch_cotangents(exact, section, longer)
    assert got is exact.at_positions(7)
    torch.testing.assert_close(got.rows[:], _exact_rows(C, 7), rtol=0, atol=0)
    # Positions of several axes count as their product; the probe's length is ``exact``.
    grid = {"a": torch.zeros(2, 3, 5), "b": torch.zeros(2, 2, 3, 4)}
    assert batch_cotangents(exact, section, grid).n_positions == 6
    same = {"a": torch.zeros(2, 3, 5), "b": torch.zeros(2, 3, 4)}
    assert batch_cotangents(exact, section, same) is exact


def test_batch_cotangents_without_the_end_only_at_the_probes_positions():
    section = Section("a", OUTPUT_NODE, (3, 5), (3, 4))
    exact = Cotangents(torch.eye(4, dtype=torch.float64), 3)
    assert batch_cotangents(exact, section, {"a": torch.zeros(2, 3, 5)}) is exact
    # (The shape shows as torch.Size([7, 5]) today; a tuple would match too.)
    message = r"7, 5\S* activations at 'a', not the \(3, 5\).*does not read the model output"
    with pytest.raises(RuntimeError, match=message):
        batch_cotangents(exact, section, {"a": torch.zeros(2, 7, 5)})
    named = Section("a", "b", (3, 5), (3, 4))
    with pytest.raises(RuntimeError, match=r"does not read 'b' to count its positions"):
        batch_cotangents(exact, named, {"a": torch.zeros(2, 4, 5)})


def test_sampled_rows_are_made_a_piece_at_a_time_alike(monkeypatch):
    """Signs turned into rows a few at a time (a vocabulary's would not fit at once)."""
    from sklearn_lib._routes import cotangents

    C = torch.randn(5, 4, dtype=torch.float64)
    signs = (2 * torch.randint(0, 2, (3, 2, 6, 4)) - 1).to(torch.int8)  # (S, n, P, k)
    expected = signs.to(torch.float64) @ C.T
    monkeypatch.setattr(cotangents, "CHUNK_ELEMENTS", 7)  # one sign row of 4 a piece
    rows = cotangents.SampledRows(signs, C)
    assert rows.shape == (3, 2, 6, 5) and rows.per_sample and len(rows) == 3
    torch.testing.assert_close(rows[:], expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(rows[1:3], expected[1:3], rtol=0, atol=1e-15)
    torch.testing.assert_close(rows[-1], expected[2], rtol=0, atol=1e-15)
    with pytest.raises(IndexError):
        rows[3]
    assert rows.to(torch.float32)[:].dtype == torch.float32


def test_sampled_rows_through_a_factor_of_no_columns_are_zero():
    """A final map of zeros has a factor of no columns: its rows are zero (the fit's
    pricing of such a section raised, found when that stopped being silent)."""
    from sklearn_lib._routes import cotangents

    signs = (2 * torch.randint(0, 2, (3, 6, 4)) - 1).to(torch.int8)  # (S, P, k)
    rows = cotangents.SampledRows(signs, torch.randn(4, 4, dtype=torch.float64))
    narrow = rows.through(torch.zeros(5, 0, dtype=torch.float64))  # (d_in, 0)
    assert narrow.shape == (3, 6, 5)
    torch.testing.assert_close(narrow[:2], torch.zeros(2, 6, 5, dtype=torch.float64))


def test_cotangents_go_with_their_last_reference():
    """No reference cycle: a batch's signs (gigabytes at a vocabulary's width) are freed
    when the batch is done, not at the garbage collector's next run (which counts
    objects, not bytes: peak memory grew a batch's signs at a time)."""
    gc.disable()
    try:
        exact = Cotangents(torch.randn(5, 3, dtype=torch.float64), 4)
        same, other = exact.at_positions(4), exact.at_positions(6)
        assert same is exact and other.n_positions == 6 and exact.at_positions(6) is other
        sampled = Cotangents(exact.matrix, 4, torch.ones(2, 3, 4, 3, dtype=torch.int8))
        sampled.rows[:1]
        refs = [weakref.ref(t) for t in (exact, other, sampled, sampled.signs)]
        del exact, same, other, sampled
        assert [r() for r in refs] == [None] * 4
    finally:
        gc.enable()
