"""The Jacobian Gram ``M'`` of one section, by batched vector-Jacobian products.

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
"""

import torch

# Elements per chunk of batched cotangents/gradients (float64: 8 bytes each),
# 32 MiB.  Peak memory is set by this and the batch size, never by N.
_CHUNK_ELEMENTS = 1 << 22


def scaled_inputs(f, alphas):
    """Stack ``alpha_a * f`` along the batch axis, alpha-major.

    Parameters
    ----------
    f : torch.Tensor of shape (n, *positions, d)
    alphas : torch.Tensor of shape (A,)

    Returns
    -------
    torch.Tensor of shape (A * n, *positions, d)
        A leaf that requires grad, so gradients are taken *at* ``alpha * f``.
    """
    view = (-1,) + (1,) * f.ndim
    return (alphas.view(view) * f.unsqueeze(0)).reshape(-1, *f.shape[1:]).requires_grad_(True)


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
    n_alpha = weights.shape[0]
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
        grads = grads.reshape(rows.shape[0], n_alpha, n_samples, -1, leaf.shape[-1])
        # (r, n, P_in, d): the quadrature sum over alpha.
        yield torch.einsum("a,ranpd->rnpd", weights.to(grads.dtype), grads)


def cotangent_rows(basis_next, n_positions_out):
    """All cotangents ``e_t (x) C_next[:, i]``: shape (P_out * k_next, P_out, d_next).

    Rows are ordered position-major: row ``t * k_next + i``.
    """
    d_next, k_next = basis_next.shape
    rows = torch.zeros(
        n_positions_out,
        k_next,
        n_positions_out,
        d_next,
        dtype=basis_next.dtype,
        device=basis_next.device,
    )
    positions = torch.arange(n_positions_out, device=basis_next.device)
    rows[positions, :, positions, :] = basis_next.T
    return rows.reshape(n_positions_out * k_next, n_positions_out, d_next)


def jacobian_gram_batch(runner, x, src, dst, basis_next, alphas, weights, batched_rows=None):
    """Un-normalised ``sum_x sum_rows sum_s g g^T`` over one batch, in float64.

    Parameters
    ----------
    runner : ModelRunner
    x : torch.Tensor
        A batch of model inputs.
    src : NodeLayer
    dst : NodeLayer or None
        None means the model output.
    basis_next : torch.Tensor of shape (d_next, k_next)
        The next node layer's (truncated) LIB matrix.
    alphas, weights : torch.Tensor of shape (A,)
        The integration rule.
    batched_rows : bool or None
        Run Jacobian rows through vmap (True) or a loop (False); None picks
        vmap on CUDA and the loop on the CPU (see the module docstring).

    Returns
    -------
    torch.Tensor of shape (d, d), float64
    """
    n = x.shape[0]
    n_alpha = alphas.shape[0]
    if batched_rows is None:
        batched_rows = x.device.type == "cuda"
    with torch.no_grad():
        (f,) = runner.read(x, [src.module])  # (n, *positions, d)
    leaf = scaled_inputs(f, alphas.to(f.dtype))  # (A*n, *positions, d)
    x_rep = x.repeat(n_alpha, *([1] * (x.ndim - 1)))  # (A*n, ...) alpha-major like leaf
    with torch.enable_grad():
        out = runner.section(x_rep, src.module, leaf, None if dst is None else dst.module)
        out = out.reshape(out.shape[0], -1, basis_next.shape[0])  # (A*n, P_out, d_next)
        rows = cotangent_rows(basis_next.to(out.dtype), out.shape[1])
        d = f.shape[-1]
        gram = torch.zeros(d, d, dtype=torch.float64, device=f.device)
        for g in integrated_vjps(out, leaf, rows, weights, n, batched_rows):
            g = g.reshape(-1, d).to(torch.float64)  # (r * n * P_in, d)
            gram += g.T @ g
    return gram
