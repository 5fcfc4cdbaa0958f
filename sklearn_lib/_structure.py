"""A structure-aware fast path for Linear -> elementwise sections.

For a section ``F(f) = phi(f W^T + b)`` (a Linear layer followed by
elementwise activations, as between the Linear inputs of an MLP), row ``i``
of the Jacobian of ``f_hat_next`` is ``W^T (s * c_i)`` with ``c_i`` a column
of the next basis and ``s = sum_a w_a phi'(alpha_a f W^T + b)`` the
integrated derivative.  Summing over rows,

    sum_rows g g^T = W^T (K * (s s^T)) W,   K = C_next C_next^T,

so ``M'`` needs ``O(N d_next^2)`` work per pass and no backward pass per
output feature.  The path is used only where it is provably the same
computation: the two node layers are inputs of modules of one
``nn.Sequential``, the first is an ``nn.Linear``, and everything between
them is a known elementwise activation.
"""

import torch
from torch import nn

# Modules that act elementwise (Dropout is the identity in eval mode).
_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.ELU,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Mish,
    nn.Hardtanh,
    nn.ReLU6,
)


def linear_elementwise_section(model, src_name, dst_name, capture):
    """``(linear_name, activations)`` if ``src -> dst`` is Linear -> elementwise, else None.

    ``dst_name`` None (the model output) qualifies when ``src`` is in the
    top-level ``nn.Sequential`` that is the model itself.
    """
    if capture != "input":
        return None
    parent_name, _, src_child = src_name.rpartition(".")
    parent = dict(model.named_modules()).get(parent_name)
    if not isinstance(parent, nn.Sequential):
        return None
    names = list(parent._modules)
    if src_child not in names:
        return None
    start = names.index(src_child)
    if dst_name is None:
        if parent is not model:
            return None
        stop = len(names)
    else:
        dst_parent, _, dst_child = dst_name.rpartition(".")
        if dst_parent != parent_name or dst_child not in names:
            return None
        stop = names.index(dst_child)
    between = [parent._modules[n] for n in names[start:stop]]
    if not between or not isinstance(between[0], nn.Linear):
        return None
    if not all(isinstance(m, _ELEMENTWISE) for m in between[1:]):
        return None
    prefix = f"{parent_name}." if parent_name else ""
    return f"{prefix}{src_child}", between[1:]


def integrated_derivative(z_points, activations, weights):
    """``s = sum_a w_a phi'(z_a)`` for elementwise ``phi``; z_points: (A, m, d_next)."""
    z = z_points.detach().requires_grad_(True)
    h = z.clone()  # in-place activations must not touch the leaf
    for module in activations:
        h = module(h)
    # phi is elementwise, so the gradient of sum(phi(z)) is phi'(z) entrywise.
    (derivative,) = torch.autograd.grad(h.sum(), z)
    return torch.einsum("a,amd->md", weights.to(derivative.dtype), derivative)


def structured_gram_batch(
    runner, x, src, linear_name, activations, basis_next, alphas, weights, f=None
):
    """Un-normalised ``M'`` of a Linear -> elementwise section over one batch (float64).

    ``f``: ``src``'s activations on ``x`` where already read.
    """
    if f is None:
        with torch.no_grad():
            (f,) = runner.read(x, [src.module])
    W = runner.state[f"{linear_name}.weight"]  # (d_next, d)
    b = runner.state.get(f"{linear_name}.bias")
    rows = f.reshape(-1, f.shape[-1])  # (n * P, d): positions are independent rows
    view = (-1, 1, 1)
    z = alphas.to(rows.dtype).view(view) * (rows @ W.T).unsqueeze(0)  # (A, m, d_next)
    if b is not None:
        z = z + b  # the bias is not scaled along the path a * f
    with torch.enable_grad():
        s = integrated_derivative(z, activations, weights).to(torch.float64)  # (m, d_next)
    K = basis_next.to(torch.float64) @ basis_next.to(torch.float64).T  # (d_next, d_next)
    W64 = W.to(torch.float64)
    inner = K * (s.T @ s)  # (d_next, d_next): K * sum_x s s^T
    return W64.T @ inner @ W64
