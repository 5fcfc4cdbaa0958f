"""Congruences (``_core.congruence``): ``B^T X B`` kept factored equals the matrix made."""

import numpy as np
import pytest

from sklearn_lib._core.congruence import Congruence, congruent


@pytest.mark.parametrize("k", [2, 6, 9])
def test_the_factored_congruence_is_the_dense_one(k):
    rng = np.random.default_rng(k)
    X = rng.normal(size=(k, k))
    X = X @ X.T
    W, A = rng.normal(size=(k, 6)), rng.normal(size=(6, 4))
    m = Congruence(X, W)
    assert m.shape == (6, 6)
    np.testing.assert_allclose(m.dense(), W.T @ X @ W, rtol=1e-12)
    np.testing.assert_allclose(congruent(m, A), A.T @ (W.T @ X @ W) @ A, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(congruent(m.dense(), A), congruent(m, A), rtol=1e-11, atol=1e-11)


def test_its_work_is_counted_in_products_of_d_by_d_matrices():
    square = Congruence(np.eye(8), np.ones((8, 8)))
    assert square.products(8) == 3.0  # at k = d: three products, one fewer than made dense
    head = Congruence(np.eye(2), np.ones((2, 8)))
    assert head.products(8) < 0.6
