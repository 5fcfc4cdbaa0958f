"""Independent references for the tests: plain loops and textbook formulas.

Nothing here calls sklearn_lib; the tests compare the library against these.
"""

import numpy as np
import torch

#: Tolerances by dtype for comparisons with independent references.
TOL = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=2e-4, atol=1e-6)}


def activations_of(model, name, X, capture="input"):
    """Activations of module ``name`` with one plain hook, as float64 numpy."""
    module = dict(model.named_modules())[name]
    seen = []
    if capture == "input":
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        with torch.no_grad():
            model(torch.as_tensor(X))
    finally:
        handle.remove()
    return seen[0].double().numpy()


def brute_force_m_prime(tail, acts, basis_next, alphas=(1.0,), weights=(1.0,)):
    """``M'`` from full per-sample Jacobians (torch.autograd.functional.jacobian).

    Parameters
    ----------
    tail : callable
        The section, mapping (1, *shape) activations to (1, *out_shape).
    acts : ndarray of shape (N, *positions, d)
    basis_next : ndarray of shape (d_next, k)
    """
    acts = torch.as_tensor(acts, dtype=torch.float64)
    n, d = acts.shape[0], acts.shape[-1]
    n_pos = acts[0].numel() // d
    C = torch.as_tensor(basis_next, dtype=torch.float64)
    M = torch.zeros(d, d, dtype=torch.float64)
    for f in acts:  # a per-sample loop is fine for a reference
        g = 0
        for a, w in zip(alphas, weights):
            J = torch.autograd.functional.jacobian(lambda z: tail(z[None])[0], a * f)
            J = J.reshape(-1, C.shape[0], n_pos, d)  # (P_out, d_next, P_in, d)
            g = g + w * torch.einsum("tjsd,ji->tisd", J, C).reshape(-1, n_pos, d)
        M += torch.einsum("rsd,rse->de", g, g)
    return (M / (n * n_pos)).numpy()


def reference_lambdas(acts, m_prime, rtol=1e-12, center=True):
    """LIB eigenvalues from activations and ``M'`` by the textbook steps."""
    rows = acts.reshape(-1, acts.shape[-1])
    G = np.cov(rows, rowvar=False, bias=True) if center else rows.T @ rows / len(rows)
    D, U = np.linalg.eigh(G)
    keep = D > rtol * D.max()
    D, U = D[keep], U[:, keep]
    M = np.diag(np.sqrt(D)) @ U.T @ m_prime @ U @ np.diag(np.sqrt(D))
    lam = np.sort(np.linalg.eigvalsh(M))[::-1]
    return lam[lam > rtol * lam[0]]


def sqrtm_psd(A):
    """Symmetric square root of a positive semi-definite matrix."""
    w, V = np.linalg.eigh(A)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def assert_same_columns_up_to_sign(A, B, **tol):
    """Columns of ``A`` equal those of ``B`` up to one sign each."""
    signs = np.sign(np.sum(A * B, axis=0))
    np.testing.assert_allclose(A * signs, B, **tol)


def brute_force_edges(tail, acts, src, dst, alphas=(1.0,), weights=(1.0,)):
    """Squared edges from full per-sample Jacobians of ``F_hat``.

    ``src`` and ``dst`` are NodeBasis-like objects (``mean``, ``kept_matrix``,
    ``kept_pinv``); ``tail`` maps (1, *shape) activations to the next node.
    """
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    acts = t(acts)
    mu, C, Cp = t(src.mean), t(src.kept_matrix), t(src.kept_pinv)
    C_next = t(dst.kept_matrix)
    n_pos = acts[0].numel() // acts.shape[-1]
    E = 0
    for f in acts:  # per-sample loop: fine for a reference
        f_hat = (f - mu) @ C  # (*pos, k_in)

        def F_hat(z):
            return (tail((z @ Cp + mu)[None])[0] @ C_next).reshape(-1, C_next.shape[1])

        g = 0
        for a, w in zip(alphas, weights):
            J = torch.autograd.functional.jacobian(F_hat, a * f_hat)  # (P_out, k_out, *pos, k_in)
            g = g + w * J.reshape(J.shape[0], J.shape[1], n_pos, C.shape[1])
        inner = torch.einsum("tisj,sj->tij", g, f_hat.reshape(n_pos, -1))
        E = E + (inner**2).sum(0)
    return (E / (len(acts) * n_pos)).numpy()


def independent_rule(integration, n):
    """The spec's rules written out directly (numpy only)."""
    if integration == "gradient":
        return [1.0], [1.0]
    if integration == "trapezoidal":
        eps = 1e-3 / (n + 1)
        alphas = np.linspace(eps, 1 - eps, n + 1)
        weights = np.array([0.5] + [1.0] * (n - 1) + [0.5]) / n
        return alphas, weights
    x, w = np.polynomial.legendre.leggauss(n + 1)
    return (x + 1) / 2, w / 2


def masked_brute_force_m_prime(
    section, acts, basis_next, mask=None, out_mask=None, alphas=(1.0,), weights=(1.0,)
):
    """``M'`` over the valid positions only, from full per-sample Jacobians.

    Padded positions (mask 0) are neither output rows nor input positions:
    ``M' = 1 / (number of valid input rows) * sum_x sum_{valid t} sum_rows
    sum_{valid s} g g^T``.  Without masks every position is valid (the plain
    ``M'`` of :func:`brute_force_m_prime`).

    The Jacobians are taken for the whole batch at once, one backward pass per
    output row (position, next-layer feature): the section must treat samples
    independently (a model in eval mode does), so the gradient of the batch
    sum of one output row is every sample's own Jacobian row.

    Parameters
    ----------
    section : callable
        Maps (N, T, d) activations (the shape of ``acts``) to the
        (N, T_out, d_next) (or any (N, *positions, d_next)) activations of
        the next node (it may close over per-sample inputs such as an
        attention mask).
    acts : ndarray of shape (N, T, d) or (N, *positions, d)
    basis_next : ndarray of shape (d_next, k)
    mask : array of shape (N, T) or (N, *positions), optional
        1 for a real position, 0 for padding; all ones by default.
    out_mask : array of shape (N, T_out) or (N, *positions_out), optional
        Valid output positions; ``mask`` by default (all ones without it).
    """
    acts = torch.as_tensor(acts, dtype=torch.float64)
    n, d = acts.shape[0], acts.shape[-1]
    n_pos = acts[0].numel() // d
    C = torch.as_tensor(basis_next, dtype=torch.float64)
    mask = torch.ones(n, n_pos) if mask is None else torch.as_tensor(np.asarray(mask))
    mask = mask.reshape(n, n_pos)
    g = 0
    for a, w in zip(alphas, weights):
        z = (a * acts).detach().requires_grad_(True)
        out = section(z).reshape(n, -1, C.shape[0]) @ C  # (N, T_out, k)
        rows = [
            torch.autograd.grad(out[:, t, i].sum(), z, retain_graph=True)[0]
            for t in range(out.shape[1])
            for i in range(out.shape[2])
        ]
        g = g + w * torch.stack(rows, 1).reshape(n, out.shape[1], out.shape[2], n_pos, d)
    if out_mask is None:
        out_mask = mask if g.shape[1] == n_pos else torch.ones(n, g.shape[1])
    out_mask = torch.as_tensor(np.asarray(out_mask)).to(torch.float64).reshape(n, -1)
    valid = mask.to(torch.float64)
    g = g * out_mask[:, :, None, None, None] * valid[:, None, None, :, None]  # masks are 0/1
    g = g.reshape(-1, d)
    return (g.T @ g / valid.sum()).numpy()


def masked_reference_lambdas(acts, mask, m_prime, rtol=1e-12, center=True):
    """:func:`reference_lambdas` with means and Grams over the valid (mask 1) rows only."""
    rows = np.asarray(acts)[np.asarray(mask).astype(bool)]  # (n_valid, d)
    return reference_lambdas(rows, m_prime, rtol=rtol, center=center)


def brute_force_top(E, n):
    """The mask of the ``n`` largest entries of ``E``, ties broken by (row, column)."""
    order = sorted((-E[i, j], i, j) for i in range(E.shape[0]) for j in range(E.shape[1]))
    mask = np.zeros(E.shape, dtype=bool)
    for _, i, j in order[:n]:
        mask[i, j] = True
    return mask
