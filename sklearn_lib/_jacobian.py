"""Jacobian rows of one section by batched autograd vector-Jacobian products.

For a section ``F`` from node layer ``l`` to node layer ``l+1`` and the next
layer's LIB matrix ``C_next`` (shape ``(d_next, k_next)``), each row of the
Jacobian of ``f_hat_next = (F(f) - mu_next) @ C_next`` is the vector-Jacobian
product of ``F`` with one cotangent: column ``i`` of ``C_next`` placed at one
output position ``t``.  Samples are independent in eval mode, so one batched
backward pass gives that row's gradient for every sample at once.

How the rows themselves are run depends on the device.  On CUDA they are
batched with ``is_grads_batched`` (``torch.vmap`` over the backward pass), in
chunks that bound memory, which saves kernel launches.  On the CPU a plain
loop over rows is faster: measured on the paper's modular-addition model
(attention section, 256 samples, 128 rows, float64) the loop took 0.49 s and
the vmapped chunks 0.77-1.7 s, because the expanded cotangents cost memory
bandwidth that the CPU does not have to spare.

:class:`~sklearn_lib._section.SectionJacobian` uses these where a model has
no closed form of its own.
"""

import torch

# Elements per chunk of batched cotangents/gradients (float64: 8 bytes each),
# 32 MiB.  Peak memory is set by this and the batch size, never by N.
_CHUNK_ELEMENTS = 1 << 22


def integrated_vjps(out, leaf, cotangent_rows, weights, n_samples, batched_rows):
    """Integrated gradients of many output rows, yielded chunk by chunk.

    Parameters
    ----------
    out : torch.Tensor of shape (A * n, P_out, d_next)
        Section output at the stacked, scaled inputs ``leaf``.
    leaf : torch.Tensor of shape (A * n, *positions, d)
    cotangent_rows : torch.Tensor of shape (R, P_out, d_next)
        One cotangent per Jacobian row, shared by all samples.
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
        chunk = max(1, _CHUNK_ELEMENTS // max(per_row, 1))
    else:
        chunk = 1
    for start in range(0, n_rows, chunk):
        rows = cotangent_rows[start : start + chunk]  # (r, P_out, d_next)
        cot = rows.unsqueeze(1).expand(-1, out.shape[0], -1, -1)  # (r, A*n, P_out, d_next)
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


def cotangent_rows(basis_next, n_positions_out, signs=None):
    """Cotangents, one per Jacobian row, of shape (R, P_out, d_next).

    Without ``signs``: every ``e_t (x) C_next[:, i]``, ``R = P_out * k_next``,
    position-major (row ``t * k_next + i``).  With ``signs`` of shape
    ``(S, P_out)`` (random +-1 "stochastic sources"): ``sum_t r_t e_t (x)
    C_next[:, i]``, ``R = S * k_next`` (row ``s * k_next + i``).  Since
    ``E[r_t r_t'] = delta_tt'``, the square of such a row's contribution is an
    unbiased estimate of the sum over positions.
    """
    d_next, k_next = basis_next.shape
    if signs is None:
        signs = torch.eye(n_positions_out, dtype=basis_next.dtype, device=basis_next.device)
    signs = signs.to(basis_next.dtype)
    # (S, 1, P_out, 1) * (1, k_next, 1, d_next) -> (S, k_next, P_out, d_next)
    rows = signs[:, None, :, None] * basis_next.T[None, :, None, :]
    return rows.reshape(-1, n_positions_out, d_next)


def source_rows(basis_next, signs):
    """Random cotangents over output positions *and* features: (S, P_out, d_next).

    Row ``s`` is ``sum_{t,i} r_{s,t,i} e_t (x) C_next[:, i]`` for signs ``r``
    of shape ``(S, P_out, k_next)``.  Since ``E[r r^T] = I``, the average of
    ``g_s g_s^T`` over sources is an unbiased estimate of the sum over all
    ``P_out * k_next`` rows, at ``S`` backward passes instead.
    """
    return torch.einsum("stk,dk->std", signs.to(basis_next.dtype), basis_next)


def scaled(f, alphas):
    """``alpha_a * f`` stacked along the batch axis, alpha-major: (A * n, ...)."""
    view = (-1,) + (1,) * f.ndim
    return (alphas.to(f.dtype).view(view) * f.unsqueeze(0)).reshape(-1, *f.shape[1:])
