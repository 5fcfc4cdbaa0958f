"""The autograd route: a section's Jacobian rows by vector-Jacobian products.

For a section ``F`` from node layer ``l`` to node layer ``l+1`` and the next
layer's LIB matrix ``C_next`` (shape ``(d_next, k_next)``), each row of the
Jacobian of ``f_hat_next = (F(f) - mu_next) @ C_next`` is the vector-Jacobian
product of ``F`` with one cotangent: column ``i`` of ``C_next`` placed at one
output position ``t`` (:class:`Cotangents`).  Samples are independent in
eval mode, so one batched backward pass gives that row's gradient for every
sample at once (:func:`integrated_vjps`).

How the rows themselves are run depends on the device.  On CUDA they are
batched with ``is_grads_batched`` (``torch.vmap`` over the backward pass), in
chunks that bound memory, which saves kernel launches.  On the CPU a plain
loop over rows is faster: measured on the paper's modular-addition model
(attention section, 256 samples, 128 rows, float64) the loop took 0.49 s and
the vmapped chunks 0.77-1.7 s, because the expanded cotangents cost memory
bandwidth that the CPU does not have to spare.

:class:`~sklearn_lib._routes.jacobian.SectionJacobian` uses these where a model has
no closed form of its own.
"""

import math

import torch

from .._core.numerics import CHUNK_ELEMENTS
from .._model.inputs import n_rows, point_mask
from .cotangents import expand_to_points


def autograd_rows(session, section, x, points, rows, weights, *, batched=None):
    """Integrated rows of ``section`` at ``points``, by autograd, chunk by chunk.

    Parameters
    ----------
    session : ModelSession
    section : Section
    x : torch.Tensor or dict of torch.Tensor
        The batch of ``n`` model inputs.
    points : torch.Tensor of shape (A * n, *positions, d)
        Alpha-major activations at ``section.src``.
    rows : torch.Tensor, ExactRows or SampledRows of shape (R, [n,] P_out, d_next)
        Shared by all samples, or (with the sample axis) each sample's own.
    weights : torch.Tensor of shape (A,)
    batched : bool or None
        Rows through vmap (True) or a loop (False); None: vmap on CUDA only.

    Yields
    ------
    torch.Tensor of shape (r, n, P_in, d)
    """
    if batched is None:
        batched = points.device.type == "cuda"
    leaf = points.detach().requires_grad_(True)
    n = n_rows(x)
    with torch.enable_grad():
        out = session.section(x, section.src, leaf, section.dst)
        mask = point_mask(x, out.shape[1:], out.shape[0], out.dtype)
        if mask is not None:
            # Rows of padded output positions vanish: their outputs are zeroed
            # (per sample, at every point of the rule).
            out = out * mask
        out = out.reshape(out.shape[0], *rows.shape[-2:])  # (A*n, P_out, d_next)
        yield from integrated_vjps(out, leaf, rows, weights, n, batched)


def integrated_vjps(out, leaf, cotangent_rows, weights, n_samples, batched_rows):
    """Integrated gradients of many output rows, yielded chunk by chunk.

    Parameters
    ----------
    out : torch.Tensor of shape (A * n, P_out, d_next)
        Section output at the stacked, scaled inputs ``leaf``.
    leaf : torch.Tensor of shape (A * n, *positions, d)
    cotangent_rows : torch.Tensor of shape (R, [n,] P_out, d_next)
        One cotangent per Jacobian row, shared by all samples or (with the
        sample axis) each sample's own.
    weights : torch.Tensor of shape (A,)
        Quadrature weights.
    n_samples : int
    batched_rows : bool
        Batch rows with ``is_grads_batched`` (vmap) instead of looping.

    Yields
    ------
    torch.Tensor of shape (r, n, P_in, d)
        ``g = sum_a w_a * grad(row)(alpha_a f)`` for a chunk of ``r`` rows.
    """
    n_rows = cotangent_rows.shape[0]
    if batched_rows:
        per_row = out.shape[0] * max(out[0].numel(), leaf[0].numel())
        chunk = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    else:
        chunk = 1
    # Rows are made a block at a time (exact rows exist only when sliced, see
    # ExactRows), a block of at most CHUNK_ELEMENTS, and run a chunk at a time.
    row_size = max(math.prod(cotangent_rows.shape[1:]), 1)
    block_rows = max(chunk, CHUNK_ELEMENTS // row_size // chunk * chunk)
    for start in range(0, n_rows, block_rows):
        block = cotangent_rows[start : start + block_rows]
        yield from _vjp_chunks(
            out, leaf, block, weights, n_samples, batched_rows=batched_rows, chunk=chunk
        )


def _vjp_chunks(out, leaf, cotangent_rows, weights, n_samples, *, batched_rows, chunk):
    """:func:`integrated_vjps` of one block of rows held in memory."""
    for start in range(0, cotangent_rows.shape[0], chunk):
        rows = cotangent_rows[start : start + chunk]  # (r, [n,] P_out, d_next)
        cot = expand_to_points(rows, out.shape[0])  # (r, A*n, P_out, d_next)
        if batched_rows:
            (grads,) = torch.autograd.grad(
                out, leaf, cot.to(out.dtype), retain_graph=True, is_grads_batched=True
            )
        else:
            (grads,) = torch.autograd.grad(out, leaf, cot[0].to(out.dtype), retain_graph=True)
        # (r, A*n, P_in, d) whether rows were batched or not
        grads = grads.reshape(rows.shape[0], out.shape[0], -1, leaf.shape[-1])
        yield quadrature_sum(grads, weights, n_samples)


def quadrature_sum(grads, weights, n_samples):
    """``sum_a w_a g_a`` of gradients at alpha-major stacked points.

    Parameters
    ----------
    grads : torch.Tensor of shape (r, A * n, P, d)
    weights : torch.Tensor of shape (A,)
    n_samples : int

    Returns
    -------
    torch.Tensor of shape (r, n, P, d)
    """
    grads = grads.reshape(grads.shape[0], weights.shape[0], n_samples, *grads.shape[2:])
    if weights.shape[0] == 1:  # the plain gradient: no sum, and no copy for a unit weight
        return grads[:, 0] if float(weights[0]) == 1.0 else grads[:, 0] * weights[0]
    return torch.einsum("a,ran...->rn...", weights.to(grads.dtype), grads)
