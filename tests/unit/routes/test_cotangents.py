"""Cotangents and autograd Jacobian rows (``_routes``) against brute-force Jacobians."""

import numpy as np
import pytest
import torch
from _refs import activations_of, brute_force_m_prime, independent_rule
from _sections import jacobians
from toy_models import PositionMixer

from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.cotangents import Cotangents


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
