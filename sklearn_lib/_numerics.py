"""Numerical settings in one place: tolerances by dtype, memory budgets, thread limits.

Every tolerance the package applies to its own computations lives in
:data:`TOLERANCES`; every chunk of stacked work is sized by
:data:`CHUNK_ELEMENTS`.
"""

import functools
from dataclasses import dataclass

import torch
from threadpoolctl import ThreadpoolController


@dataclass(frozen=True)
class Tolerances:
    """Relative tolerances for one compute dtype.

    Attributes
    ----------
    null_space : float
        Eigenvalues at or below ``null_space * max`` of the activations' Gram
        and of the rotated Jacobian Gram are numerical zeros.  Numerical only,
        never the user's truncation: float64 eigenvalue noise sits near 1e-16
        of the largest eigenvalue, float32 activations carry rounding noise
        near 1e-13..1e-11, so each cut leaves three orders of magnitude of
        margin.
    closed_form : float
        A closed-form Jacobian (a model's ``lib_section_*`` methods, the
        Linear -> elementwise formula) must agree with autograd to this.
    batch_growth : float
        A section run on stacked copies of activations with the batch grown
        at the cut must agree with the run on repeated inputs to this.
    cut : float
        The cut check: permuted (or halved) batches must give permuted (or
        the same) outputs to this.
    """

    null_space: float
    closed_form: float
    batch_growth: float
    cut: float


TOLERANCES = {
    torch.float64: Tolerances(null_space=1e-12, closed_form=1e-8, batch_growth=1e-9, cut=1e-8),
    torch.float32: Tolerances(null_space=1e-9, closed_form=1e-3, batch_growth=1e-4, cut=1e-3),
}


def tolerances(dtype):
    """The :class:`Tolerances` of a compute dtype (float64 or float32)."""
    return TOLERANCES[dtype]


#: Elements in one chunk of stacked work (batched cotangents and gradients,
#: masked copies of a batch): 32 MiB in float64.  Peak memory is set by this
#: and the batch size, never by the number of samples.
CHUNK_ELEMENTS = 1 << 22

#: Below this size an eigensolve runs on one thread.  Measured on the paper's
#: model (d = 128) right after a fit's batched torch work: one thread takes
#: 1 ms every time; a thread pool takes 1-100 ms (its workers are slow to
#: wake).
SMALL_EIGH = 512


@functools.cache
def _controller():
    # Finding the loaded thread pools takes milliseconds: do it once.
    return ThreadpoolController()


def one_thread():
    """A context in which the calling thread's OpenMP work (torch's LAPACK) uses one thread.

    OpenMP thread counts belong to the calling thread, so the limit is scoped
    twice over: it ends with the block (also on error), and other threads,
    a concurrent fit or the user's own torch work, keep their thread count.
    Measured: a 1500 x 1500 ``torch.linalg.eigh`` takes twice as long inside
    (one thread) while a matrix product in another thread keeps its speed.
    """
    return _controller().limit(limits=1, user_api="openmp")


def max_relative_error(got, expected):
    """``max |got - expected| / max |expected|`` as a float (0 where both vanish)."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return float((got - expected).abs().max() / scale)
