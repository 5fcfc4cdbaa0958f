"""From statistics to a basis (``_basis``), and the scoped thread limit of its eigensolves."""

import threading
import time

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from sklearn_lib._fitting.basis import (
    NodeBasis,
    eigh_descending,
    fit_node_basis,
    n_kept,
    pca_output_basis,
)


def _random_stats(rng, d=6, rank=4):
    A = rng.normal(size=(200, rank)) @ rng.normal(size=(rank, d))  # a null space of d - rank
    gram = np.cov(A, rowvar=False, bias=True)
    B = rng.normal(size=(d, d))
    return A.mean(0), gram, B @ B.T  # mean, G, M'


@pytest.mark.parametrize("kind", ["lib", "pca"])
def test_fitted_basis_satisfies_the_spec(rng, kind):
    mean, gram, m_prime = _random_stats(rng)
    basis = fit_node_basis(
        "h",
        (6,),
        mean,
        gram,
        m_prime if kind == "lib" else None,
        kind=kind,
        n_components=None,
        threshold=0.0,
        rtol=1e-12,
    )
    C, C_pinv, lam = basis.matrix, basis.pinv, basis.lambdas
    assert C.shape == (6, 4) and basis.n_components == 4  # the null space is dropped
    np.testing.assert_allclose(C.T @ gram @ C, np.diag(lam), atol=1e-10 * lam[0])  # E[f^ f^T]
    np.testing.assert_allclose(C_pinv @ C, np.eye(4), atol=1e-10)
    if kind == "lib":
        # The whitened Jacobian Gram is the identity: C+ M' C+^T = I.
        np.testing.assert_allclose(C_pinv @ m_prime @ C_pinv.T, np.eye(4), atol=1e-9)
    assert np.all(np.diff(lam) <= 0)


def test_truncation_by_count_fraction_and_threshold():
    lam = np.array([8.0, 4.0, 2.0, 1.0])
    assert n_kept(lam, None, 0.0) == 4
    assert n_kept(lam, None, 0.3) == 2  # keeps Lambda >= 0.3 * 8
    assert n_kept(lam, 3, 0.0) == 3
    assert n_kept(lam, 0.8, 0.0) == 3  # the fewest holding 80% of 15, as sklearn's PCA
    with pytest.raises(ValueError, match="n_components=5 must be at most 4"):
        n_kept(lam, 5, 0.0, "h")


def test_eigenvectors_have_a_fixed_sign(rng):
    A = rng.normal(size=(5, 5))
    values, vectors = eigh_descending(A @ A.T)
    assert np.all(np.diff(values) <= 0)
    pivots = np.abs(vectors).argmax(0)
    assert np.all(vectors[pivots, np.arange(5)] > 0)
    with pytest.raises(ValueError, match="The test matrix has NaN"):
        eigh_descending(np.full((2, 2), np.nan), "The test matrix")


def test_signs_follow_the_first_largest_entry_where_opposite_signs_tie():
    from sklearn_lib._fitting.basis import column_signs

    h = 2**-0.5
    vectors = np.array(
        [[h, -h, 0.0, 0.3, -0.9], [-h, h, 0.0, -0.9, 0.3], [0.0, 0.0, 0.0, 0.1, 0.1]]
    )
    # As argmax(|V|) picks: the first of tied entries, a zero column kept.
    np.testing.assert_array_equal(column_signs(vectors), [1.0, -1.0, 1.0, -1.0, -1.0])
    rng = np.random.default_rng(0)
    random = rng.normal(size=(40, 30))
    expected = np.sign(random[np.abs(random).argmax(0), np.arange(30)])
    np.testing.assert_array_equal(column_signs(random), expected)


def test_pca_output_basis_is_orthogonal_and_complete(rng):
    A = rng.normal(size=(50, 3)) * [3.0, 1.0, 0.0]  # one direction without variance
    basis = pca_output_basis((3,), A.mean(0), np.cov(A, rowvar=False, bias=True))
    assert basis.n_components == 3 and basis.kind == "pca"
    np.testing.assert_allclose(basis.matrix.T @ basis.matrix, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(basis.pinv, basis.matrix.T)


def test_node_basis_tensors():
    basis = NodeBasis(
        "h", (2, 3), np.arange(3.0), np.ones((3, 2)), np.ones((2, 3)), np.array([2.0, 1.0]), 1
    )
    mean, matrix, pinv = basis.tensors(torch.device("cpu"))
    assert matrix.shape == (3, 1) and pinv.shape == (1, 3) and mean.dtype == torch.float64
    _, matrix, pinv = basis.tensors(torch.device("cpu"), torch.float32, kept=False)
    assert matrix.shape == (3, 2) and pinv.shape == (2, 3) and matrix.dtype == torch.float32
    assert basis.n_positions == 2 and basis.n_features == 3


def _blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_small_eigensolves_limit_numpy_blas_only_and_restore_it(monkeypatch):
    """One BLAS thread inside; torch's count untouched; concurrent solves restore exactly."""
    before, torch_threads = _blas_threads(), torch.get_num_threads()
    seen = {}
    real = np.linalg.eigh

    def watched(matrix):
        seen.setdefault("inside", _blas_threads())
        seen.setdefault("torch", torch.get_num_threads())
        time.sleep(0.02)  # keeps several threads inside at once, were they allowed to be
        return real(matrix)

    monkeypatch.setattr(np.linalg, "eigh", watched)
    workers = [threading.Thread(target=eigh_descending, args=(np.eye(4),)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert seen["inside"] == [1] * len(before)
    assert seen["torch"] == torch_threads
    assert _blas_threads() == before and torch.get_num_threads() == torch_threads


def test_small_eigensolves_agree_with_torch(rng):
    """numpy's LAPACK (small matrices) gives torch's decomposition."""
    A = rng.normal(size=(40, 40))
    values, vectors = eigh_descending(A @ A.T)
    ref_values, ref_vectors = (t.numpy() for t in torch.linalg.eigh(torch.as_tensor(A @ A.T)))
    np.testing.assert_allclose(values, ref_values[::-1], rtol=0, atol=1e-13 * values[0])
    signs = np.sign(np.sum(vectors * ref_vectors[:, ::-1], axis=0))
    np.testing.assert_allclose(vectors, ref_vectors[:, ::-1] * signs, atol=1e-9)


def test_bases_of_one_feature_hold_plain_arrays():
    """The eigenvectors are views of LAPACK's columns, reversed; a stored basis is not."""
    gram = np.array([[2.0]])
    pca = fit_node_basis(
        "h", (1,), np.zeros(1), gram, None, kind="pca", n_components=None, threshold=0, rtol=1e-12
    )
    output = pca_output_basis((1,), np.zeros(1), gram)
    for basis in (pca, output):
        for array in (basis.matrix, basis.pinv):
            assert all(stride > 0 for stride in array.strides)
        mean, C, C_pinv = basis.tensors("cpu")
        torch.testing.assert_close(C, torch.ones(1, 1, dtype=torch.float64))
