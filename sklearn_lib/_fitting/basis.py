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

from .._core.congruence import congruent, congruent_products
from .._core.identity import Identity, as_tensor
from .._core.nodes import OUTPUT_NODE, n_positions
from .._core.numerics import SMALL_EIGH, blas_threads
from ..exceptions import user_stacklevel

#: Costs of the linear algebra's steps in multiples of ``d^3`` operations, as timed
#: on 2 CPU cores at d = 4096: a matrix product (2 d^3, 1.3 s) and an
#: eigendecomposition with vectors (6.9 s, as many as ``10 d^3`` at that rate).
PRODUCT_COST, EIGH_COST = 2, 10


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
        For ``kind="identity"``, an implicit identity that acts as the array
        in products, slices and numpy functions, and is never made whole
        (``np.asarray`` makes it).
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
        """``C[:, :k]``, shape (d, k) (``C`` itself where every feature is kept)."""
        return self._kept(self.matrix, 1)

    @property
    def kept_pinv(self):
        """``C+[:k]`` (rows of the full pseudo-inverse), shape (k, d)."""
        return self._kept(self.pinv, 0)

    def _kept(self, matrix, axis):
        """``matrix`` truncated to the kept features along ``axis``; the whole of it where
        they are all kept (an identity stays implicit)."""
        if self.n_components == matrix.shape[axis]:
            return matrix
        return matrix[:, : self.n_components] if axis else matrix[: self.n_components]

    def tensors(self, device, dtype=torch.float64, kept=True):
        """``(mean, matrix, pinv)`` as tensors on ``device``.

        ``kept=True`` gives the kept features, ``C[:, :k]`` and ``C+[:k]``;
        ``kept=False`` the full ``C`` and ``C+``.
        """
        matrix, pinv = (self.kept_matrix, self.kept_pinv) if kept else (self.matrix, self.pinv)
        return tuple(as_tensor(a, device, dtype) for a in (self.mean, matrix, pinv))

    def __repr__(self):
        return (
            f"NodeBasis(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, "
            f"n_components={self.n_components}, n_nonnull={self.lambdas.shape[0]})"
        )


def _eigh(matrix):
    """``(values, vectors)`` ascending, of a symmetric float64 numpy matrix.

    numpy's LAPACK (``syevd``), measured fastest on 2 cores at every width:
    0.044 s at 784 (torch 0.056), 0.92 s at 2048 (torch 1.06, scipy's
    ``evr`` 0.98), 6.9 s at 4096 (torch 9.5); the ``ev`` driver is 3-8x
    slower.  Only the few kept features of a truncation would allow a
    subset (``subset_by_index``: 3x faster for 10 of 2048), but a basis
    keeps every non-null feature so that truncations can change after the
    fit.  On torch's threads (which users set), small matrices on one (see
    :data:`SMALL_EIGH`).
    """
    threads = torch.get_num_threads() if matrix.shape[0] > SMALL_EIGH else 1
    with blas_threads(threads):
        return np.linalg.eigh(matrix)


def eigh_descending(matrix, what="The matrix to eigendecompose"):
    """Eigen-decomposition of a symmetric matrix, eigenvalues descending.

    Eigenvector signs are fixed so that each vector's largest-magnitude entry
    is positive, which makes fits deterministic across runs and machines.
    ``what`` names the matrix in the error raised for NaN or infinite entries.
    One ``d x d`` matrix is made besides LAPACK's output (wide layers hold
    several: see :func:`lib_rotation`).
    """
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{what} has NaN or infinite entries")
    symmetric = np.add(matrix, matrix.T)  # symmetrise away rounding asymmetry
    symmetric *= 0.5
    values, vectors = _eigh(symmetric)
    del symmetric
    values, vectors = values[::-1], vectors[:, ::-1]
    vectors *= column_signs(vectors)  # in place: LAPACK's output is ours
    return values.copy(), vectors  # vectors: a view of LAPACK's columns, reversed


def column_signs(vectors):
    """Per column, the sign of its largest-magnitude entry (of the first, where entries of
    opposite signs tie; 1 for a zero column).

    From each column's largest and smallest entries: ``argmax(|V|, axis=0)``
    walks the columns one by one (0.8 s at 4096 x 4096, against 0.02 s).
    """
    top, bottom = vectors.max(axis=0), vectors.min(axis=0)
    signs = np.where(top >= -bottom, 1.0, -1.0)
    ties = np.flatnonzero(top == -bottom)
    if ties.size:
        pivot = np.argmax(np.abs(vectors[:, ties]), axis=0)
        signs[ties] = np.sign(vectors[pivot, ties])
        signs[signs == 0] = 1
    return signs


def _nonnull_eigh(matrix, rtol, empty_message, what, floor=0.0):
    """Eigenpairs (descending) above ``rtol * max`` and ``floor``; raise if all vanish."""
    values, vectors = eigh_descending(matrix, what)
    if not values[0] > 0:
        raise ValueError(empty_message)
    keep = values > max(rtol * values[0], floor)
    if not keep.any():
        raise ValueError(empty_message)
    # The kept ones lead (descending): a view, no copy.
    n = int(keep.sum())
    return values[:n], vectors[:, :n]


def say_nothing(step, cost):
    """The default of ``say``: a step of the linear algebra (``cost`` in ``d^3``), not said."""


def orthogonal_step(gram, rtol, name="layer", floor=0.0, say=say_nothing):
    """``G = U diag(D) U^T`` with the numerical null space dropped.

    Parameters
    ----------
    gram : ndarray of shape (d, d)
    rtol : float
        Eigenvalues at or below ``rtol * max(D)`` are numerical zeros.
    floor : float, default=0.0
        And so are eigenvalues at or below this: the rounding noise of the
        activations themselves (see :meth:`~sklearn_lib._core.numerics.Tolerances.noise_floor`).
    say : callable, optional
        Called with each step's name and cost (in ``d^3`` operations) before it
        runs (progress of wide layers).

    Returns
    -------
    D : ndarray of shape (r,)
    U : ndarray of shape (d, r)
    """
    say("the eigendecomposition of the activations' Gram", EIGH_COST)
    return _nonnull_eigh(
        gram,
        rtol,
        f"The activations of {name!r} have no variance on the fitting data; "
        "there is nothing to find a basis for",
        f"The Gram matrix of the activations of {name!r}",
        floor,
    )


def lib_rotation(D, U, m_prime, rtol, name="layer", say=say_nothing):
    """Rotate the whitened activations onto the Jacobian Gram's eigenvectors.

    Parameters
    ----------
    D, U : output of :func:`orthogonal_step`
        ``U`` is used up (divided in place).
    m_prime : ndarray of shape (d, d) or Congruence
        The averaged Jacobian Gram ``M'`` (a closed form's, factored:
        :class:`~sklearn_lib._core.congruence.Congruence`).
    rtol : float
        Numerical null-space tolerance for ``Lambda``.
    say : callable, optional
        Called with each step's name and cost before it runs.

    Returns
    -------
    lambdas : ndarray of shape (K,)
    C : ndarray of shape (d, K)
    C_pinv : ndarray of shape (K, d)

    Notes
    -----
    Memory: besides ``U``, ``m_prime`` and the results, ``U diag(D)^1/2``
    and ``M`` are held, and during the eigendecomposition of ``M`` its
    symmetrised copy, LAPACK's output and workspace (about three more).
    """
    sqrt_d = np.sqrt(D)
    whitened = U * sqrt_d  # U diag(D)^1/2, shape (d, r)
    say("M in whitened coordinates", congruent_products(m_prime, whitened.shape[1]) * PRODUCT_COST)
    M = congruent(m_prime, whitened)  # (r, r)
    say("the eigendecomposition of M", EIGH_COST)
    lambdas, V = _nonnull_eigh(
        M,
        rtol,
        f"The next node layer does not depend on {name!r} on the fitting data "
        "(all Jacobians vanish), so every LIB feature has zero importance",
        f"The Jacobian Gram M' of {name!r} (from gradients that overflowed or are "
        "undefined, e.g. sqrt at 0)",
    )
    say("C and its pseudo-inverse", 2 * PRODUCT_COST)
    sqrt_l = np.sqrt(lambdas)
    C_pinv = (V / sqrt_l).T @ whitened.T  # diag(Lambda)^-1/2 V^T diag(D)^1/2 U^T
    del whitened
    U /= sqrt_d
    C = U @ V  # U diag(D)^-1/2 V diag(Lambda)^1/2
    C *= sqrt_l
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
    name,
    shape,
    mean,
    gram,
    m_prime,
    *,
    kind,
    n_components,
    threshold,
    rtol,
    floor=0.0,
    say=say_nothing,
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
    m_prime : ndarray of shape (d, d), Congruence or None
        The averaged Jacobian Gram (see :func:`lib_rotation`); None for ``kind="pca"``.
    kind : {"lib", "pca"}
    n_components, threshold
        Truncation, see :func:`n_kept`.
    rtol : float
        The numerical null-space tolerance.
    floor : float, default=0.0
        The Gram's noise floor (see :func:`orthogonal_step`).
    say : callable, optional
        Called with each step's name and cost (in ``d^3`` operations) before it
        runs (progress of wide layers).
    """
    D, U = orthogonal_step(gram, rtol, name, floor, say)
    if kind == "pca":
        C = U.copy()  # U is a view of LAPACK's columns, reversed (a 1 x 1 one too)
        lambdas, C_pinv = D, C.T.copy()
    else:
        lambdas, C, C_pinv = lib_rotation(D, U, m_prime, rtol, name, say)
    k = n_kept(lambdas, n_components, threshold, name)
    return NodeBasis(name, shape, mean, C, C_pinv, lambdas, k, gram_eigenvalues=D, kind=kind)


def identity_basis(shape, mean):
    """The model output's default basis: the identity, never truncated.

    There is no ranking among logits: every output has unit "importance".
    The matrix is an :class:`~sklearn_lib._core.identity.Identity`, never
    made whole: a vocabulary's would take gigabytes.
    """
    d = shape[-1]
    eye = Identity(d)
    return NodeBasis(OUTPUT_NODE, shape, mean, eye, eye, np.ones(d), d, kind="identity")


def pca_output_basis(shape, mean, gram):
    """The model output's PCA basis: orthogonal and untruncated (null directions kept).

    Being orthogonal and complete, it leaves every upstream basis exactly as
    the identity does; it only rotates the last section's edges.
    """
    values, vectors = eigh_descending(gram)
    vectors = vectors.copy()  # a view of LAPACK's columns, reversed (a 1 x 1 one too)
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
