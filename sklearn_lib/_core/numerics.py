"""Numerical settings in one place: tolerances by dtype, memory budgets, thread limits.

Every tolerance the package applies to its own computations lives in
:data:`TOLERANCES`; every chunk of stacked work is sized by
:data:`CHUNK_ELEMENTS`.
"""

import contextlib
import functools
import threading
from dataclasses import dataclass

import numpy as np
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
        never the user's truncation.  float64 eigenvalue noise sits near
        1e-16 of the largest eigenvalue.  A float32 forward pass rounds each
        activation by about 6e-8 of its magnitude; for centred activations
        that noise, spread over every direction, sits near 1e-14 of the
        largest variance (Grams are summed in float64), so 1e-12 keeps the
        directions that matter: on the paper's attention input a cut at 1e-9
        dropped directions whose variance is 1e-11..1e-9 of the largest but
        whose gradients are large, and moved the top Lambda by 0.1% from
        float64's; at 1e-12, by 1e-6.  Activations far from zero carry more
        noise than their spread shows: :meth:`noise_floor` cuts that too.
    closed_form : float
        A closed-form Jacobian (a model's ``lib_section_*`` methods, the
        Linear -> elementwise formula) must agree with autograd to this.
    batch_growth : float
        A section run on stacked copies of activations with the batch grown
        at the cut must agree with the run on repeated inputs to this.
    cut : float
        The cut check: permuted (or halved) batches must give permuted (or
        the same) outputs to this.
    same_points : float
        Activations and their reconstruction from the kept features are the
        same points (so a fit's Jacobian rows serve the edges) when they
        agree to this, relative to the largest activation.
    roundoff : float
        The dtype's unit roundoff: an activation computed in it is off by
        about this much of its magnitude.
    """

    null_space: float
    closed_form: float
    batch_growth: float
    cut: float
    same_points: float
    roundoff: float

    #: Noise variance per direction, in units of ``roundoff**2 * max E[f_i^2]``,
    #: below which a Gram's eigenvalue is rounding: a forward pass rounds many
    #: times over, and a margin.
    NOISE_FACTOR = 100.0

    def noise_floor(self, gram, mean):
        """The variance that rounding alone gives a direction of these activations.

        Rounding errors scale with the activations' magnitude, not their
        spread: ``roundoff * |f|`` per entry.  So for activations far from
        zero (a large mean, as after a ReLU or in a residual stream) the
        noise in each direction's variance is ``~ roundoff^2 * E[f_i^2]``,
        which a cut relative to the largest variance alone does not see.

        Parameters
        ----------
        gram : ndarray of shape (d, d)
            The centred (or uncentred) Gram of the activations.
        mean : ndarray of shape (d,)
            Their mean (zeros for the uncentred Gram).
        """
        second_moment = float(np.max(np.diag(gram) + np.asarray(mean) ** 2))
        return self.NOISE_FACTOR * self.roundoff**2 * second_moment


TOLERANCES = {
    torch.float64: Tolerances(
        null_space=1e-12,
        closed_form=1e-8,
        batch_growth=1e-9,
        cut=1e-8,
        same_points=1e-10,
        roundoff=2.0**-53,
    ),
    torch.float32: Tolerances(
        null_space=1e-12,
        closed_form=1e-3,
        batch_growth=1e-4,
        cut=1e-3,
        same_points=1e-5,
        roundoff=2.0**-24,
    ),
}


def tolerances(dtype):
    """The :class:`Tolerances` of a dtype: float64's, or float32's for every other one.

    Outputs may come in another dtype than the computation (a model that
    casts its logits to bfloat16); they are compared at float32's tolerances.
    """
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


#: Elements in one chunk of stacked work (batched cotangents and gradients,
#: masked copies of a batch): 32 MiB in float64.  Peak memory is set by this
#: and the batch size, never by the number of samples.
CHUNK_ELEMENTS = 1 << 22

#: Jacobian rows a fit may keep for the edges of ``compute_graph=True``,
#: per section, on the compute device.  Rows beyond it are dropped and the
#: section's edges take a pass of their own.
ROW_REUSE_BYTES = 1 << 30

#: Below this size an eigensolve runs on one thread, with numpy's LAPACK.
#: Measured on 128 x 128 right after heavy torch work (2 cores): one thread
#: takes 2-4 ms every time; a thread pool 2-30 ms (its workers are slow to
#: wake), whichever library runs it.
SMALL_EIGH = 512

# numpy's BLAS thread count is process-wide: blocks take turns, so that each
# restores exactly the count it found.
_BLAS_LOCK = threading.Lock()


@functools.cache
def _controller():
    # Finding the loaded thread pools takes milliseconds: do it once.
    return ThreadpoolController()


@contextlib.contextmanager
def blas_threads(n):
    """numpy's (and scipy's) BLAS and LAPACK on ``n`` threads for the block, then restored.

    Only numpy's BLAS is limited, for the block (a small eigensolve on one
    thread, a large one on as many as torch was given): torch's thread
    counts, which belong to each thread (OpenMP, MKL) and which users set
    for their own work, are never touched.
    """
    with _BLAS_LOCK:
        # Never more than they have: a user's OPENBLAS_NUM_THREADS stands.
        now = [info["num_threads"] for info in _controller().select(user_api="blas").info()]
        with _controller().limit(limits=min([n, *now]), user_api="blas"):
            yield


def all_finite(tensor):
    """True when no entry of ``tensor`` is NaN or inf.

    A NaN or inf anywhere makes the sum NaN or inf; only then (or when a sum
    of finite values overflows) is the elementwise check needed.
    """
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def max_relative_error(got, expected):
    """``max |got - expected| / max |expected|`` as a float (0 where both vanish)."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return float((got - expected).abs().max() / scale)
