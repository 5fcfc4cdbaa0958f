"""A symmetric matrix kept as a congruence ``B^T X B``: how a closed form hands over ``M'``.

LIB reads ``M'`` only whitened, as ``A^T M' A`` for the activations'
``A = U diag(D)^1/2`` (``d x r``).  Where a closed form's ``M'`` is
``W^T X W`` (the Linear -> elementwise form: ``X = (C C^T) * S`` of the
next layer's ``k`` units), forming ``M'`` and then whitening it takes four
products of ``d x d`` matrices at ``k = d``; ``(W A)^T X (W A)`` takes
three, and hardly any where ``k`` is small (a layer before a 10-way head:
two ``d^2 k`` products instead of ``2 d^3``).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Congruence:
    """``outer^T inner outer``, float64.

    Attributes
    ----------
    inner : ndarray of shape (k, k)
        Symmetric.
    outer : ndarray of shape (k, d)
    """

    inner: np.ndarray
    outer: np.ndarray

    @property
    def shape(self):
        d = self.outer.shape[1]
        return (d, d)

    def dense(self):
        """The ``(d, d)`` matrix itself."""
        return self.outer.T @ (self.inner @ self.outer)

    def products(self, width):
        """The work of :func:`congruent` with ``A`` of ``width`` columns, in ``d^3`` matrix
        products (``d x d`` times ``d x d``: 1)."""
        k, d = self.outer.shape
        return (k * d * width + k * k * width + width * k * width) / d**3


def congruent_products(matrix, width):
    """The work of :func:`congruent` with ``A`` of ``width`` columns, in ``d^3`` matrix
    products: two for a dense ``matrix``."""
    return matrix.products(width) if isinstance(matrix, Congruence) else 2


def congruent(matrix, A):
    """``A^T matrix A`` for a dense ``matrix`` or a :class:`Congruence` (then as
    ``(outer A)^T inner (outer A)``)."""
    if isinstance(matrix, Congruence):
        B = matrix.outer @ A
        return B.T @ (matrix.inner @ B)
    return (A.T @ matrix) @ A
