"""Running Gram sums ``sum_b rows_b^T rows_b``: float64 sums, products as cheap as is exact enough.

Every Gram the package accumulates (the activations', the slopes' of a
closed form, the Jacobian rows' of ``M'``) is a float64 sum of per-batch
products.  A float64 product costs twice a float32 one, and a fit in
float32 has float32 rows anyway, so :class:`GramSum` multiplies in the
fit's dtype where that is *certified* and in float64 where it is not.

The certificate.  A Gram ``G`` taken with error ``E`` gives LIB's
importances ``Lambda`` (the eigenvalues of ``M'^1/2 G M'^1/2``) and PCA's
variances within a relative ``eta`` of the exact ones whenever
``-eta G <= E <= eta G`` in the Loewner order: then ``(1 - eta) G <= G + E
<= (1 + eta) G``, and eigenvalues are monotone in that order.  (A Schur
product with the PSD ``C C^T`` keeps the order, so the same holds for the
slope Gram of ``M' = W^T ((C C^T) * S) W``.)  The first rows added at once
that number at least the Gram's width (a batch, or the first chunk of a
batch's Jacobian rows) are multiplied both ways; both ``eta G - E`` and
``eta G + E`` must have a Cholesky factor on the Gram's support (see
:func:`loewner_within`), which proves the bound for those rows with
:data:`LOW_PRECISION_RTOL`.  A layer as ill-conditioned as the paper's
attention input (variances at 1e-11 of the largest) fails it and stays in
float64; rows before them are multiplied in float64.  Later rows are taken
to be alike: that is the one assumption, and the float64 sums add no
rounding of their own.  The bound is per Gram: ``Lambda`` depends on two
(``G`` and ``M'``) and, through the next basis, on those of the layers
after it, each of which adds its own.

:data:`LOW_PRECISION_RTOL` is 1e-5: a float32 forward pass already moves
each activation by about 6e-8 of its magnitude, and the rounding of float32
rows alone gives a Loewner error of 3e-6 on a ReLU layer of 512 units.
Measured on the 784-512-512-10 MLP: every Lambda within 2.4e-7 of the same
float32 fit with float64 products.

float64 products are added in place (``addmm_``): the sum then agrees
however the rows are split into chunks and batches, to the last bit on some
CPUs (MKL's kernels on one Xeon) and to a few units in the last place on
others (an AVX-512 one), so routes that make the same rows in other chunks
agree to rounding.
"""

import torch

from .distributed import all_reduce_sum

#: The relative accuracy (in the Loewner order) that a Gram taken with
#: products in a lower precision must be proved to have on its first batch.
LOW_PRECISION_RTOL = 1e-5


class GramSum:
    """A float64 running sum of ``rows^T rows`` over batches.

    Parameters
    ----------
    width : int
        Columns of the rows, ``d``: the sum is ``(d, d)``.
    device : torch.device
    low : torch.dtype or None, default=None
        A dtype to multiply in where certified (see the module docstring):
        the fit's compute dtype when it is not float64.  None: float64
        products always.

    Attributes
    ----------
    precision : torch.dtype or None
        The dtype of the products, once decided on the first rows added at
        once that number at least ``width`` (rows before them are multiplied
        in float64).
    why : str
        Why, in words (empty before the decision).
    used : dict of (torch.dtype, str) to None
        The dtypes products were taken in, with why, in order (:attr:`words`).
    total : torch.Tensor of shape (d, d)
        The float64 sum.
    """

    def __init__(self, width, device, low=None):
        self.width = width
        self.device = torch.device(device)
        self.low = None if low == torch.float64 else low
        self.precision = None if self.low is not None else torch.float64
        self.why = "" if self.low is not None else "the fit's dtype"
        self.used = {}
        # Only the upper triangle is summed (a symmetric product costs 62% of a full one
        # in panels): :attr:`total` mirrors it.
        self._upper = torch.zeros(width, width, dtype=torch.float64, device=device)
        self._total = None

    @property
    def total(self):
        """The float64 sum, ``(d, d)``, symmetric."""
        if self._total is None:
            self._total = _mirrored(self._upper)
        return self._total

    def add(self, rows, alpha=1.0, exact=None):
        """Add ``alpha * rows^T rows`` for rows ``(m, d)`` of any float dtype.

        ``exact``: a dtype in which this batch's products are known to be
        exact (0/1 entries, counts below 2^24 in float32), used as it is.
        """
        rows = rows.detach()
        if rows.shape[0] == 0:
            return
        if exact is not None:
            product = _upper_product(rows, exact)
            self._add_product(product, alpha, exact, "exact: 0/1 entries")
        elif self.precision is None and rows.shape[0] >= self.width:
            self.precision, self.why, product = self._decide(rows)
            self._add_product(product, alpha, self.precision, self.why)
        elif self.precision is None:  # too few rows to decide on: exact, until some can
            self._add_rows(rows, alpha, f"rows fewer than its width ({self.width:,}) to certify "
                           "float32 on")  # fmt: skip
        elif self.precision == torch.float64:
            self._add_rows(rows, alpha, self.why)
        else:
            product = _upper_product(rows, self.precision)
            self._add_product(product, alpha, self.precision, self.why)

    def _add_rows(self, rows, alpha, why):
        """Add rows multiplied in float64, in place: the sum then agrees however the rows
        are chunked (see the module docstring)."""
        self.used[(torch.float64, why)] = None
        self._total = None
        add_gram_(self._upper, rows.to(torch.float64), alpha)

    def _add_product(self, product, alpha, dtype, why):
        """Add a product taken in ``dtype`` (its upper triangle is read)."""
        self.used[(dtype, why)] = None
        self._total = None
        self._upper.add_(product.to(torch.float64), alpha=alpha)

    def _decide(self, rows):
        """``(dtype, why, product)`` for every later batch, from these rows' certificate.

        The product of these rows to add: the certified low-precision one, or
        the float64 one the certificate made (each made once).
        """
        exact = _upper_product(rows, torch.float64)
        cheap = _upper_product(rows, self.low)
        error = _mirrored(cheap.to(torch.float64) - exact)
        where = f"on its first {rows.shape[0]:,} rows"
        if loewner_within(_mirrored(exact), error, LOW_PRECISION_RTOL):
            return self.low, f"certified within {LOW_PRECISION_RTOL:g} {where}", cheap
        why = (
            f"{_name(self.low)} products not within {LOW_PRECISION_RTOL:g} of the Gram "
            f"in every direction {where}"
        )
        return torch.float64, why, exact

    def add_matrix(self, matrix, alpha=1.0):
        """Add ``alpha * matrix``, a symmetric ``(d, d)`` Gram made by a closed form."""
        self._add_product(matrix, alpha, matrix.dtype, "made by its closed form")

    def reduce(self):
        """Sum over ranks (in place; a no-op in a single process)."""
        self._total = None
        all_reduce_sum(self._upper)
        return self

    @property
    def words(self):
        """The products' dtype(s) in words, and why: ``"float32 (certified ...)"``.

        This process's: the ranks of a distributed fit decide each on its own
        first rows (every rank's sums stay float64, so they add up alike).
        """
        said = [f"{_name(dtype)} ({why})" for dtype, why in self.used]
        return " and ".join(said) or "none (no rows)"


def loewner_within(gram, error, rtol):
    """Whether ``-rtol G <= E <= rtol G`` in the Loewner order.

    Both ``rtol G - E`` and ``rtol G + E`` must have a Cholesky factor, on
    the Gram's support: directions with no variance at all (a dead unit, a
    constant pixel) have ``G`` and ``E`` exactly zero there, products of zeros
    being exact, and are left out (taken to stay without variance in later
    rows); an error in them fails the certificate.  No error at all passes;
    a Gram of zeros fails (it shows nothing).
    """
    support = torch.diagonal(gram) > 0
    if not bool(support.any()):
        return False  # rows of zeros prove nothing of the rows to come
    if not bool(error.any()):
        return True  # exact, whatever the Gram's rank
    outside = ~support
    if bool(outside.any()):
        if bool(error[outside].any()) or bool(error[:, outside].any()):
            return False
        gram, error = gram[support][:, support], error[support][:, support]
    scaled = rtol * gram
    return all(
        int(torch.linalg.cholesky_ex(scaled + sign * error).info) == 0 for sign in (1.0, -1.0)
    )


def _upper_product(rows, dtype):
    """The upper triangle of ``rows^T rows``, multiplied in ``dtype`` (see :func:`add_gram_`)."""
    low = rows.to(dtype)
    product = low.new_zeros(low.shape[1], low.shape[1])
    add_gram_(product, low)
    return product


def symmetric_gram(rows):
    """``rows^T rows`` in the rows' dtype, by the panels of its upper triangle."""
    return _mirrored(_upper_product(rows, rows.dtype))


def _mirrored(upper):
    """The symmetric matrix whose upper triangle is ``upper``'s."""
    return torch.triu(upper) + torch.triu(upper, 1).mT


#: Columns per panel of :func:`add_gram_` at least (narrower Grams are one product).
PANEL_WIDTH = 128


def add_gram_(target, rows, alpha=1.0):
    """Add ``alpha * rows^T rows`` to ``target``'s upper triangle, in place, in panels.

    Rows ``[a, b)`` of the product take every column from ``a`` on: up to 4
    panels of about equal width, 62% of the full product's work at 4, and
    each an in-place ``addmm_`` (its sum the same however the rows are
    chunked, to rounding: see the module docstring).  Measured on 4096 rows (2
    cores): 784 wide 61 -> 47 ms in float64, 512 wide 12 -> 9 ms in float32.
    Entries below the diagonal are left partly unset: read the upper triangle.
    """
    d = rows.shape[1]
    n = max(1, min(4, d // PANEL_WIDTH))
    edges = [round(i * d / n) for i in range(n + 1)]
    for start, stop in zip(edges, edges[1:]):
        target[start:stop, start:].addmm_(rows[:, start:stop].T, rows[:, start:], alpha=alpha)


def _name(dtype):
    return str(dtype).removeprefix("torch.")
