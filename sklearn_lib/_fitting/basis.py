"""From sufficient statistics to a basis: pure float64 linear algebra.

Notation of the spec (row vectors): ``f_hat = (f - mu) @ C``.

    G  = U diag(D) U^T                         orthogonal step (null space dropped)
    M  = diag(D)^1/2 U^T M' U diag(D)^1/2      Jacobian Gram in whitened coordinates
    M  = V diag(Lambda) V^T
    C  = U diag(D)^-1/2 V diag(Lambda)^1/2
    C+ = diag(Lambda)^-1/2 V^T diag(D)^1/2 U^T

:class:`NodeBasis` is the package's one notion of a node: a node layer (or
the model output) with its fitted basis.
"""

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .._core.nodes import OUTPUT_NODE, n_positions
from .._core.numerics import SMALL_EIGH, one_blas_thread
from ..exceptions import user_stacklevel

#: Name of the model-output node in ``bases_`` and in interaction graphs.


@dataclass(frozen=True, eq=False)
class NodeBasis:
    """The fitted basis of one node layer.

    Attributes
    ----------
    name : str
        Module name of the node layer, or ``"output"`` for the model output.
    shape : tuple
        Per-sample activation shape ``(*positions, d)``.
    mean : ndarray of shape (d,)
        ``mu``; zeros when fitted with ``center=False``.
    matrix : ndarray of shape (d, K)
        ``C`` with every numerically non-null feature, most important first.
    pinv : ndarray of shape (K, d)
        The pseudo-inverse ``C+`` of the *full* ``matrix``: keeping the top
        ``k`` features reconstructs with ``pinv[:k]``.
    lambdas : ndarray of shape (K,)
        Importance of each feature, descending (variances for PCA).
    n_components : int
        Number of features kept by the truncation (``k <= K``).
    gram_eigenvalues : ndarray of shape (r,)
        Eigenvalues ``D`` of the activations' Gram above the null-space cut.
    kind : {"lib", "pca", "identity"}
    """

    name: str
    shape: tuple
    mean: np.ndarray
    matrix: np.ndarray
    pinv: np.ndarray
    lambdas: np.ndarray
    n_components: int
    gram_eigenvalues: np.ndarray = field(default_factory=lambda: np.empty(0))
    kind: str = "lib"

    @property
    def n_features(self):
        """Width ``d`` of the activations."""
        return self.matrix.shape[0]

    @property
    def n_positions(self):
        """Number of positions sharing this basis."""
        return n_positions(self.shape)

    @property
    def kept_matrix(self):
        """``C[:, :k]``, shape (d, k)."""
        return self.matrix[:, : self.n_components]

    @property
    def kept_pinv(self):
        """``C+[:k]`` (rows of the full pseudo-inverse), shape (k, d)."""
        return self.pinv[: self.n_components]

    def tensors(self, device, dtype=torch.float64, kept=True):
        """``(mean, matrix, pinv)`` as tensors on ``device``.

        ``kept=True`` gives the kept features, ``C[:, :k]`` and ``C+[:k]``;
        ``kept=False`` the full ``C`` and ``C+``.
        """
        matrix, pinv = (self.kept_matrix, self.kept_pinv) if kept else (self.matrix, self.pinv)
        return tuple(
            torch.as_tensor(a, device=device, dtype=dtype) for a in (self.mean, matrix, pinv)
        )

    def __repr__(self):
        return (
            f"NodeBasis(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, "
            f"n_components={self.n_components}, n_nonnull={self.lambdas.shape[0]})"
        )


def _eigh(matrix):
    """``(values, vectors)`` ascending, of a symmetric float64 numpy matrix."""
    if matrix.shape[0] > SMALL_EIGH:
        return tuple(t.numpy() for t in torch.linalg.eigh(torch.from_numpy(matrix)))
    with one_blas_thread():
        return np.linalg.eigh(matrix)


def eigh_descending(matrix, what="The matrix to eigendecompose"):
    """Eigen-decomposition of a symmetric matrix, eigenvalues descending.

    Eigenvector signs are fixed so that each vector's largest-magnitude entry
    is positive, which makes fits deterministic across runs and machines.
    ``what`` names the matrix in the error raised for NaN or infinite entries.
    """
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{what} has NaN or infinite entries")
    matrix = (matrix + matrix.T) / 2  # symmetrise away rounding asymmetry
    values, vectors = _eigh(matrix)
    values, vectors = values[::-1], vectors[:, ::-1]
    pivot = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[pivot, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return values.copy(), vectors * signs


def _nonnull_eigh(matrix, rtol, empty_message, what, floor=0.0):
    """Eigenpairs (descending) above ``rtol * max`` and ``floor``; raise if all vanish."""
    values, vectors = eigh_descending(matrix, what)
    if not values[0] > 0:
        raise ValueError(empty_message)
    keep = values > max(rtol * values[0], floor)
    if not keep.any():
        raise ValueError(empty_message)
    return values[keep], vectors[:, keep]


def orthogonal_step(gram, rtol, name="layer", floor=0.0):
    """``G = U diag(D) U^T`` with the numerical null space dropped.

    Parameters
    ----------
    gram : ndarray of shape (d, d)
    rtol : float
        Eigenvalues at or below ``rtol * max(D)`` are numerical zeros.
    floor : float, default=0.0
        And so are eigenvalues at or below this: the rounding noise of the
        activations themselves (see :meth:`~sklearn_lib._core.numerics.Tolerances.noise_floor`).

    Returns
    -------
    D : ndarray of shape (r,)
    U : ndarray of shape (d, r)
    """
    return _nonnull_eigh(
        gram,
        rtol,
        f"The activations of {name!r} have no variance on the fitting data; "
        "there is nothing to find a basis for",
        f"The Gram matrix of the activations of {name!r}",
        floor,
    )


def lib_rotation(D, U, m_prime, rtol, name="layer"):
    """Rotate the whitened activations onto the Jacobian Gram's eigenvectors.

    Parameters
    ----------
    D, U : output of :func:`orthogonal_step`
    m_prime : ndarray of shape (d, d)
        The averaged Jacobian Gram ``M'``.
    rtol : float
        Numerical null-space tolerance for ``Lambda``.

    Returns
    -------
    lambdas : ndarray of shape (K,)
    C : ndarray of shape (d, K)
    C_pinv : ndarray of shape (K, d)
    """
    sqrt_d = np.sqrt(D)
    whitened = U * sqrt_d  # U diag(D)^1/2, shape (d, r)
    M = whitened.T @ m_prime @ whitened  # (r, r)
    lambdas, V = _nonnull_eigh(
        M,
        rtol,
        f"The next node layer does not depend on {name!r} on the fitting data "
        "(all Jacobians vanish), so every LIB feature has zero importance",
        f"The Jacobian Gram M' of {name!r} (from gradients that overflowed or are "
        "undefined, e.g. sqrt at 0)",
    )
    sqrt_l = np.sqrt(lambdas)
    C = (U / sqrt_d) @ V * sqrt_l  # U diag(D)^-1/2 V diag(Lambda)^1/2
    C_pinv = (V / sqrt_l).T @ whitened.T  # diag(Lambda)^-1/2 V^T diag(D)^1/2 U^T
    return lambdas, C, C_pinv


def n_kept(lambdas, n_components, threshold, name="layer"):
    """Number of leading features kept by ``n_components`` and ``threshold``.

    ``n_components``: None (all), an int, or a float in (0, 1) for the
    smallest ``k`` whose features hold that fraction of ``sum(Lambda)``.
    ``threshold``: drop features with ``Lambda < threshold * max(Lambda)``.
    Both apply; the smaller count wins.
    """
    total = lambdas.shape[0]
    k = int(np.sum(lambdas >= threshold * lambdas[0]))
    if n_components is None:
        return k
    if isinstance(n_components, float) and 0 < n_components < 1:
        ratio = np.cumsum(lambdas) / lambdas.sum()
        # Same rule as sklearn.decomposition.PCA for a float n_components.
        by_fraction = int(np.searchsorted(ratio, n_components, side="right")) + 1
        return min(k, by_fraction, total)
    if n_components > total:
        raise ValueError(
            f"n_components={n_components} must be at most {total}, the number of "
            f"non-null features of {name!r}"
        )
    if k < n_components:
        warnings.warn(
            f"n_components={n_components} asks for {n_components} features of {name!r}, but "
            f"only {k} have Lambda at or above truncation_threshold={threshold:g} times the "
            f"largest: {k} kept (lower truncation_threshold to keep more)",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return min(k, int(n_components))


def fit_node_basis(
    name, shape, mean, gram, m_prime, *, kind, n_components, threshold, rtol, floor=0.0
):
    """The :class:`NodeBasis` of one node layer from its statistics.

    Parameters
    ----------
    name : str
    shape : tuple
        Per-sample activation shape ``(*positions, d)``.
    mean : ndarray of shape (d,)
        ``mu`` (zeros for an uncentred fit).
    gram : ndarray of shape (d, d)
        The activations' Gram ``G``.
    m_prime : ndarray of shape (d, d) or None
        The averaged Jacobian Gram; None for ``kind="pca"``.
    kind : {"lib", "pca"}
    n_components, threshold
        Truncation, see :func:`n_kept`.
    rtol : float
        The numerical null-space tolerance.
    floor : float, default=0.0
        The Gram's noise floor (see :func:`orthogonal_step`).
    """
    D, U = orthogonal_step(gram, rtol, name, floor)
    if kind == "pca":
        lambdas, C, C_pinv = D, U, U.T.copy()
    else:
        lambdas, C, C_pinv = lib_rotation(D, U, m_prime, rtol, name)
    k = n_kept(lambdas, n_components, threshold, name)
    return NodeBasis(name, shape, mean, C, C_pinv, lambdas, k, gram_eigenvalues=D, kind=kind)


def identity_basis(shape, mean):
    """The model output's default basis: the identity, never truncated.

    There is no ranking among logits: every output has unit "importance".
    """
    d = shape[-1]
    eye = np.eye(d)
    return NodeBasis(OUTPUT_NODE, shape, mean, eye, eye, np.ones(d), d, kind="identity")


def pca_output_basis(shape, mean, gram):
    """The model output's PCA basis: orthogonal and untruncated (null directions kept).

    Being orthogonal and complete, it leaves every upstream basis exactly as
    the identity does; it only rotates the last section's edges.
    """
    values, vectors = eigh_descending(gram)
    # Eigenvalues can be slightly negative from rounding, hence the clip.
    values = np.clip(values, 0, None)
    return NodeBasis(
        OUTPUT_NODE,
        shape,
        mean,
        vectors,
        vectors.T.copy(),
        values,
        shape[-1],
        gram_eigenvalues=values,
        kind="pca",
    )
