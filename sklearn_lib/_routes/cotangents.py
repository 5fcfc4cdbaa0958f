"""The cotangents of a section's Jacobian rows, exact or as random sources.

For a section ``F`` from node layer ``l`` to node layer ``l+1`` and the next
layer's LIB matrix ``C_next`` (shape ``(d_next, k_next)``), each row of the
Jacobian of ``f_hat_next = (F(f) - mu_next) @ C_next`` is the vector-Jacobian
product of ``F`` with one cotangent: column ``i`` of ``C_next`` placed at one
output position ``t`` (:class:`Cotangents`).  How the products are taken is
the routes' business (:mod:`~sklearn_lib._routes.autograd` and the closed
forms).
"""

import math

import torch

from .._core.identity import Identity, dense
from .._core.nodes import n_positions as positions_of
from .._core.numerics import CHUNK_ELEMENTS


class Cotangents:
    """The cotangents of the Jacobian rows LIB needs from one section.

    Exact (``signs`` None): one row per next feature ``i`` and output
    position ``t``, ``e_t (x) C_next[:, i]``, position-major (row
    ``t * k_next + i``).  With random +-1 ``signs`` ("stochastic sources"):

    - of shape ``(S, P_out)``: ``sum_t r_st e_t (x) C_next[:, i]``, one row
      per source and feature (row ``s * k_next + i``), for the edges;
    - of shape ``(S, P_out, k_next)``: ``sum_{t,i} r_sti e_t (x) C_next[:, i]``,
      one row per source, for ``M'``, shared by the samples of a batch;
    - of shape ``(S, n, P_out, k_next)``: the same, drawn for each sample
      of the batch apart (:class:`SampledRows` of shape ``(S, n, P_out,
      d_next)``): as much work, ``n`` times the independent draws.

    Since ``E[r r^T] = I``, a sum of squares over sampled rows, times
    :attr:`scale`, is an unbiased estimate of the sum over exact rows.  Signs
    for a section that ends in a final linear map mix fewer features, that
    map's inputs (:meth:`SampledRows.through`).

    Parameters
    ----------
    matrix : torch.Tensor or Identity of shape (d_next, k_next)
    n_positions : int
        Output positions ``P_out`` of the section.
    signs : torch.Tensor or None
    generator : torch.Generator, optional
        Where the signs came from (see :class:`SampledRows`).
    """

    @classmethod
    def identity(cls, shape, dtype, device):
        """The exact cotangents of the identity basis of a node of per-sample ``shape``.

        Every output position and feature once: what the route checks and the
        fit's pricing use where the next basis is not known yet.  The matrix
        is an :class:`~sklearn_lib._core.identity.Identity`, never made whole
        (a vocabulary's would take gigabytes).
        """
        return cls(Identity(shape[-1], dtype, device), math.prod(shape[:-1]))

    def __init__(self, matrix, n_positions, signs=None, generator=None):
        self.matrix = matrix
        self.n_positions = n_positions
        self.signs = signs
        self.generator = generator
        self._rows = None
        # Other lengths' rows; not this one's: a dict holding `self` would make a cycle,
        # and each batch's signs would wait for the garbage collector (gigabytes at width).
        self._lengths = {}

    @property
    def exact(self):
        """True when the rows are the exact ones (no sources)."""
        return self.signs is None

    @property
    def scale(self):
        """``1 / S`` for sampled rows, 1 for exact ones."""
        return 1.0 if self.signs is None else 1.0 / self.signs.shape[0]

    @property
    def rows(self):
        """The cotangents, shape ``(R, P_out, d_next)``, in the matrix' dtype."""
        if self._rows is None:
            self._rows = self._build()
        return self._rows

    def _build(self):
        C = self.matrix
        d_next, k_next = C.shape
        if self.signs is None:
            return ExactRows(C, self.n_positions)  # built chunk by chunk, when used
        if self.signs.ndim >= 3:
            # (S, [n,] P_out, k_next) signs mix features too: (S, [n,] P_out, d_next).
            return SampledRows(self.signs, C, self.generator)  # built chunk by chunk, when used
        signs, C = self.signs.to(C.dtype), dense(C)
        # (S, 1, P_out, 1) * (1, k_next, 1, d_next) -> (S, k_next, P_out, d_next)
        rows = signs[:, None, :, None] * C.T[None, :, None, :]
        return rows.reshape(-1, self.n_positions, d_next)

    def at_positions(self, n_positions):
        """The exact rows of the same next basis at ``n_positions`` output positions.

        Sequences of another length (a batch of a dynamically padded stream)
        have as many output positions as they have; each length's rows are
        made once.
        """
        assert self.exact
        if n_positions == self.n_positions:
            return self
        if n_positions not in self._lengths:
            self._lengths[n_positions] = Cotangents(self.matrix, n_positions)
        return self._lengths[n_positions]

    def at_one_position(self):
        """The exact rows of a section applied to each position separately.

        For a position-wise section (output position ``t`` depends on input
        position ``t`` alone) the exact rows' contributions are those of a
        one-position section on ``n * P`` samples: ``k_next`` rows instead
        of ``P_out * k_next``.
        """
        assert self.exact
        return self.at_positions(1)

    def feature_sums(self, per_row):
        """Sum (exact) or source average of per-row values ``(R, ...)`` per next feature.

        Only for exact rows and ``(S, P_out)`` signs; returns ``(k_next, ...)``.
        """
        k_next = self.matrix.shape[1]
        per_feature = per_row.reshape(-1, k_next, *per_row.shape[1:])
        return per_feature.sum(0) * self.scale


class ExactRows:
    """The exact cotangent rows ``e_t (x) C[:, i]`` (row ``t * k + i``), made when sliced.

    Held whole they would take ``P_out^2 * k_next * d_next`` numbers, mostly
    zeros: 2 GiB at 256 positions and 64 features.  A pass only ever uses a
    chunk of rows at a time, so this object gives them chunk by chunk: it
    has the ``shape``, ``dtype``, ``to`` and slicing of the tensor it stands
    for, and :meth:`combine` for signed sums of all rows.  ``rows[:]`` makes
    the whole tensor, for a closed form that takes every row at once.

    Parameters
    ----------
    matrix : torch.Tensor or Identity of shape (d_next, k_next)
    n_positions : int
    """

    def __init__(self, matrix, n_positions):
        self.matrix = matrix
        self.n_positions = n_positions
        d_next, k_next = matrix.shape
        self.shape = torch.Size((n_positions * k_next, n_positions, d_next))
        self.dtype, self.device = matrix.dtype, matrix.device

    def __len__(self):
        return self.shape[0]

    def to(self, dtype):
        """These rows in ``dtype``."""
        return self if dtype == self.dtype else ExactRows(self.matrix.to(dtype), self.n_positions)

    def __getitem__(self, index):
        if isinstance(index, int):
            index %= self.shape[0]
            return self[index : index + 1][0]
        if not isinstance(index, slice):
            raise TypeError("exact rows are taken by an int or a slice")
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            raise ValueError("exact rows are taken by contiguous slices")
        k_next = self.matrix.shape[1]
        r = torch.arange(start, max(start, stop), device=self.device)
        rows = torch.zeros(len(r), *self.shape[1:], dtype=self.dtype, device=self.device)
        rows[torch.arange(len(r), device=self.device), r // k_next] = self.matrix[:, r % k_next].T
        return rows

    def combine(self, signs):
        """``signs @ rows.flatten(1)`` reshaped, ``(c, P_out, d_next)``, without the rows."""
        k_next = self.matrix.shape[1]
        per_position = signs.to(self.dtype).reshape(signs.shape[0], self.n_positions, k_next)
        return per_position @ self.matrix.T


class EveryPositionRows:
    """One row per column of ``C``, at every output position at once: ``(k, P_out, d)``.

    For a section whose output position ``t`` reads input position ``t``
    alone, the gradient of row ``i`` is, at each input position ``t``, that
    of the exact row ``e_t (x) C[:, i]``; the Gram over input positions of
    these ``k`` rows is the exact ``M'`` of all ``P_out * k``.  Made when
    sliced, like :class:`ExactRows`.

    Parameters
    ----------
    matrix : torch.Tensor of shape (d, k)
    n_positions : int
    """

    def __init__(self, matrix, n_positions):
        self.matrix, self.n_positions = matrix, n_positions
        d, k = matrix.shape
        self.shape = torch.Size((k, n_positions, d))
        self.dtype, self.device = matrix.dtype, matrix.device

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("rows at every position are taken by contiguous slices")
        columns = self.matrix.T[index]  # (r, d)
        return columns[:, None, :].expand(-1, self.n_positions, -1)


class SampledRows:
    """Random rows ``signs @ C^T``, ``(S, [n,] P_out, d_next)``, made when sliced.

    Like :class:`ExactRows`: the ``shape``, ``dtype``, ``to`` and slicing of
    the tensor they stand for, made a chunk at a time.  Whole, a
    vocabulary-wide output's would take ``S x n x P_out x 50,257`` numbers.
    Rows with a sample axis (:attr:`per_sample`) hold each sample's own
    draws.

    Parameters
    ----------
    signs : torch.Tensor of shape (S, [n,] P_out, k) of int8
        ``k = k_next``, or fewer where drawn for a final map's factor
        (:attr:`narrowed`, taken :meth:`through` the map).
    matrix : torch.Tensor or Identity of shape (d_next, k_next)
    generator : torch.Generator, optional
        The generator the signs came from, to draw the missing features where
        narrowed signs are wanted as rows of the next basis after all.
    """

    def __init__(self, signs, matrix, generator=None):
        self.signs, self.matrix, self.generator = signs, matrix, generator
        self.shape = torch.Size((*signs.shape[:-1], matrix.shape[0]))
        self.dtype, self.device = matrix.dtype, matrix.device

    @property
    def per_sample(self):
        """Whether each sample of the batch has rows of its own (axis 1)."""
        return self.signs.ndim == 4

    def __len__(self):
        return self.shape[0]

    def to(self, dtype):
        """These rows in ``dtype``."""
        if dtype == self.dtype:
            return self
        return SampledRows(self.signs, self.matrix.to(dtype), self.generator)

    def through(self, factor):
        """Rows of the input ``z`` of a final map ``y = z A``, drawn in its ``factor``.

        ``factor`` is ``R`` with ``R R^T = A C C^T A^T`` and ``r`` columns, no more
        than the signs have features.  The rows ``signs[..., :r] @ R^T`` have the
        expected Gram ``R R^T`` of the rows ``signs @ (A C)^T`` (``E[s s^T] = I``
        either way), from signs of ``r <= d_in`` features instead of ``k_next``
        (a vocabulary's 50,257) and a product that much shorter: the fit draws
        them that narrow (``features`` of
        :func:`~sklearn_lib._fitting.stochastic.m_prime_sources`).
        """
        r = factor.shape[1]
        if self.signs.shape[-1] < r:
            raise ValueError(f"{self.signs.shape[-1]} features of signs for a factor of {r}")
        return SampledRows(self.signs[..., :r], factor.to(self.dtype))

    def _widen(self):
        """Signs of every next feature, where they were drawn for a final map's factor and
        its rows are wanted after all (a batch that the map does not end takes autograd's
        rows): the drawn ones, and the missing features' drawn now from the same
        generator, independent of them."""
        if self.generator is None:
            raise RuntimeError(
                f"random sources of {self.signs.shape[-1]} features, drawn for a final map's "
                f"factor, are not rows of the next basis' {self.matrix.shape[1]}"
            )
        shape = (*self.signs.shape[:-1], self.matrix.shape[1] - self.signs.shape[-1])
        extra = torch.randint(0, 2, shape, generator=self.generator, dtype=torch.int8)
        extra = extra.mul_(2).sub_(1).to(self.signs.device)
        self.signs = torch.cat([self.signs, extra], -1)

    @property
    def narrowed(self):
        """Whether the signs mix fewer features than the matrix has: drawn for a final
        map's factor (:meth:`through`), so rows of that map's input alone."""
        return self.signs.shape[-1] < self.matrix.shape[1]

    def __getitem__(self, index):
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"row {index} of {len(self)}")
            index %= len(self)
            return self[index : index + 1][0]
        if not isinstance(index, slice):
            raise TypeError("sampled rows are taken by an int or a slice")
        if self.narrowed:
            self._widen()
        signs = self.signs[index]
        # (the rows' count spelled out: a final map of zeros has a factor of no columns)
        flat = signs.reshape(math.prod(signs.shape[:-1]), signs.shape[-1])
        # The signs in the rows' dtype a piece at a time: whole, a chunk of a vocabulary's
        # would take 4-8 bytes for each of their 1.
        step = max(1, CHUNK_ELEMENTS // max(flat.shape[1], 1))
        rows = torch.empty(flat.shape[0], self.shape[-1], dtype=self.dtype, device=self.device)
        for start in range(0, flat.shape[0], step):
            piece = flat[start : start + step].to(device=self.device, dtype=self.dtype)
            rows[start : start + step] = piece @ self.matrix.T
        return rows.reshape(*signs.shape[:-1], self.shape[-1])


def expand_to_points(rows, m):
    """Cotangent rows ``(r, P_out, d)`` shared by all points, or ``(r, n, P_out, d)`` per
    sample, as ``(r, m, P_out, d)`` for ``m`` alpha-major points (``m // n`` per sample)."""
    if rows.ndim == 4:
        return rows.repeat(1, m // rows.shape[1], 1, 1)
    return rows.unsqueeze(1).expand(-1, m, -1, -1)


def scaled(f, alphas):
    """``alpha_a * f`` stacked along the batch axis, alpha-major: (A * n, ...)."""
    view = (-1,) + (1,) * f.ndim
    return (alphas.to(f.dtype).view(view) * f.unsqueeze(0)).reshape(-1, *f.shape[1:])


def section_reads(section, lengths_vary):
    """What an accumulator of ``section``'s rows reads: its source, and its end if lengths vary.

    A batch's output positions are those of its sequences: where batches may
    differ in length (``lengths_vary`` not False), the pass reads the
    section's end too, to count them (:func:`batch_cotangents`).
    """
    return (section.src,) if lengths_vary is False else (section.src, section.dst)


def batch_cotangents(exact, section, acts):
    """``exact`` at the output positions of this batch's activations ``acts``.

    Parameters
    ----------
    exact : Cotangents
        Exact rows at the section's probe length.
    section : Section
    acts : dict of str to torch.Tensor
        The pass's activations of the batch (features last).
    """
    out = acts.get(section.dst)
    if out is not None:
        return exact.at_positions(positions_of(out.shape[1:]))
    shape = tuple(acts[section.src].shape[1:])
    if positions_of(shape) != positions_of(section.src_shape):
        raise RuntimeError(
            f"A batch has {shape} activations at {section.src!r}, not the "
            f"{section.src_shape} of the probe, but the pass does not read {section.dst_title} "
            "to count its positions (section_reads)"
        )
    return exact
