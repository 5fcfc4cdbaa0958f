"""Closed-form Jacobian products of the modular-addition transformer's sections.

Generic LIB takes one autograd backward pass per row of a section's Jacobian
(per next-layer feature), which on this small model is bound by memory
traffic and kernel launches, not arithmetic.  These functions give the same
numbers for every row and every sample at once from the weights, with a
handful of einsums; :meth:`ModularAdditionTransformer.lib_section_vjp` and
``lib_section_gram`` expose them through the protocol of
``sklearn_lib._routes.jacobian``, which checks them against autograd once per
section before use.

The ``*_vjp`` functions take the parameters by their ``state_dict`` names
(in the fit's dtype), ``points`` (the section's input activations, shape
``(m, *positions, d_model)``) and ``cotangents`` of shape ``(R, *output
positions, d_out)``, and return ``grad <cotangent_r, section(point)>`` with
respect to each point: shape ``(R, m, *positions, d_model)``.  Given
``tangents=(v, a)`` (``v`` of shape ``(J, d_model)``, ``a`` of shape ``(m,
*positions, J)``) they return the derivatives along ``a[m, p, j] * v[j]``
instead, shape ``(R, m, J)``, without forming the gradients.  Row vectors
throughout: ``q = resid @ W_Q``.
"""

import torch


def _attention_terms(params, points, cotangents, prefix):
    """What every attention product shares, for rows ``c`` of the cotangents.

    ``out = r_L + sum_h sum_p a_hp (r_p W_V,h + b_V,h) W_O,h + b_O`` with
    ``a_h = softmax_p(q_h . k_hp / sqrt(e))`` and the query at the last
    position ``L`` only (the causal mask hides nothing from it).  For a
    cotangent ``c`` with ``w_h = W_O,h c``, ``u_hp = v_hp . w_h`` and
    ``beta_hp = a_hp (u_hp - sum_p' a_hp' u_hp')`` (the softmax's
    derivative):

        grad_p = sum_h (a_hp X_h + beta_hp Y_h) + delta_pL T

    with the value directions ``X_h = W_V,h w_h``, the key directions
    ``Y_h = W_K,h q_h / sqrt(e)`` and, at ``L``, the residual and query
    ``T = c + sum_h W_Q,h kappa_h / sqrt(e)``, ``kappa_h = sum_p beta_hp k_hp``.
    Layouts put samples first and rows last, so that every contraction is
    one (batched) matrix product on contiguous memory.
    """
    W_Q, W_K, W_V, W_O = (params[prefix + f"W_{name}"] for name in "QKVO")
    b_Q, b_K, b_V = (params[prefix + f"b_{name}"] for name in "QKV")
    n_heads, d, e = W_Q.shape
    m, P = points.shape[:2]
    scale = e**-0.5
    q = torch.einsum("md,hde->mhe", points[:, -1], W_Q) + b_Q  # (m, h, e)
    k = torch.einsum("mpd,hde->mhpe", points, W_K) + b_K[:, None]  # (m, h, P, e)
    v = torch.einsum("mpd,hde->mhpe", points, W_V) + b_V[:, None]
    a = (torch.einsum("mhe,mhpe->mhp", q, k) * scale).softmax(-1)  # (m, h, P)
    c = cotangents.reshape(cotangents.shape[0], -1)  # (R, d)
    R = c.shape[0]
    w = torch.einsum("hed,rd->her", W_O, c)  # W_O,h c: (h, e, R)
    u = (v @ w).transpose(2, 3)  # v_hp . w_h: (m, h, R, P)
    beta = a[:, :, None] * (u - (u * a[:, :, None]).sum(-1, keepdim=True))  # (m, h, R, P)
    # kappa with rows (m, R) and columns (h, e), so sum_h W_Q,h kappa_h is one product.
    kappa = (beta @ k).transpose(1, 2).reshape(m * R, n_heads * e)
    return dict(
        a=a,
        beta=beta,
        kappa=kappa,
        X=torch.einsum("hde,her->hrd", W_V, w),  # (h, R, d)
        Y=scale * torch.einsum("hde,mhe->mhd", W_K, q),  # (m, h, d)
        c=c,
        W_Q=W_Q,
        scale=scale,
    )


def _at_last(t):
    """``T`` of every sample and row: the residual and the query path, (m, R, d)."""
    n_heads, d, e = t["W_Q"].shape
    query = t["kappa"] @ t["W_Q"].transpose(1, 2).reshape(n_heads * e, d)  # (m R, d)
    return query.view(-1, *t["c"].shape).mul_(t["scale"]).add_(t["c"])


def attention_vjp(params, points, cotangents, tangents=None, prefix="blocks.0.attn."):
    """Section from the attention input ``(m, P, d)`` to the last position of its output.

    See :func:`_attention_terms` for the formula.
    """
    t = _attention_terms(params, points, cotangents, prefix)
    a, beta, X, Y = t["a"], t["beta"], t["X"], t["Y"]
    (m, n_heads, R, P), d = beta.shape, X.shape[-1]
    if tangents is None:
        # value path: (m P, h) @ (h, R d); key path added in place: (m, P R, h) @ (m, h, d).
        grads = (a.transpose(1, 2).reshape(m * P, n_heads) @ X.reshape(n_heads, -1)).view(
            m, P * R, d
        )
        grads.baddbmm_(beta.permute(0, 3, 2, 1).reshape(m, P * R, n_heads), Y)
        grads = grads.view(m, P, R, d)
        grads[:, -1] += _at_last(t)
        return grads.permute(2, 0, 1, 3)  # (R, m, P, d), a view
    # The same three paths, each contracted with the tangents before anything
    # of size (R, m, P, d) exists.
    v_dirs, coef = tangents  # (J, d), (m, P, J)
    # value: sum_h (sum_p a_hp coef_pj) (X_hr . v_j), as J batched products (m, h) @ (h, R).
    weighted = (a @ coef).permute(2, 0, 1)  # (J, m, h)
    value = (weighted @ (X @ v_dirs.T).permute(2, 0, 1)).permute(1, 2, 0)  # (m, R, J)
    along_key = (Y @ v_dirs.T)[:, :, None, :] * coef[:, None]  # (m, h, P, J)
    key = beta.transpose(1, 2).reshape(m, R, n_heads * P) @ along_key.reshape(m, n_heads * P, -1)
    along_query = torch.einsum("hde,jd->hej", t["W_Q"], v_dirs).reshape(-1, v_dirs.shape[0])
    at_last = (t["kappa"] @ along_query).view(m, R, -1).mul_(t["scale"])
    at_last += t["c"] @ v_dirs.T  # (m, R, J)
    total = key.add_(value).addcmul_(coef[:, -1, None, :], at_last)
    return total.permute(1, 0, 2)  # (R, m, J)


def attention_gram(params, points, weights, cotangents, prefix="blocks.0.attn."):
    """``sum_m sum_p sum_r g g^T`` of the attention section, without forming every ``g``.

    At the last position the rows are formed (``m R`` of them); at the other
    positions ``g = sum_h a_hp X_h + beta_hp Y_h`` and the sums over samples,
    positions and rows factor through ``h x h`` weights:

        sum X X^T  = sum_hh' A_hh' X_h^T X_h'      A_hh' = sum_mp a_mhp a_mh'p
        sum Y Y^T  = sum_m Y_m^T B_m Y_m           B_m,hh' = sum_rp beta_mhrp beta_mh'rp
        sum X Y^T  = sum_hr X_hr Psi_hr^T          Psi_hr = sum_mh' (sum_p a_mhp beta_mh'rp) Y_mh'

    Only the plain gradient (one point of the rule) factors this way;
    integrated rules return NotImplemented and use the rows.
    """
    if weights.shape[0] != 1:
        return NotImplemented
    t = _attention_terms(params, points, cotangents, prefix)
    a, beta, X, Y = t["a"][..., :-1], t["beta"], t["X"], t["Y"]
    m, n_heads, R, _ = beta.shape
    last = beta[..., -1]  # (m, h, R)
    beta = beta[..., :-1]  # positions before L
    # Position L: the rows themselves.
    rows = torch.einsum("mh,hrd->mrd", t["a"][..., -1], X) + last.transpose(1, 2) @ Y
    rows = (rows + _at_last(t)).reshape(m * R, -1)
    gram = rows.T @ rows
    X_flat = X.reshape(n_heads * R, -1)
    A = torch.einsum("mhp,mkp->hk", a, a)
    gram += X_flat.T @ (A @ X.reshape(n_heads, -1)).view(n_heads * R, -1)
    B = beta.reshape(m, n_heads, -1) @ beta.reshape(m, n_heads, -1).transpose(1, 2)  # (m, h, h)
    gram += Y.reshape(m * n_heads, -1).T @ (B @ Y).reshape(m * n_heads, -1)
    gamma = torch.einsum("mhp,mkrp->hrmk", a, beta).reshape(n_heads * R, m * n_heads)
    cross = X_flat.T @ (gamma @ Y.reshape(m * n_heads, -1))
    gram += cross + cross.T
    return float(weights[0]) ** 2 * gram.to(torch.float64)


def mlp_vjp(params, points, cotangents, tangents=None, prefix="blocks.0.mlp."):
    """Residual ReLU MLP ``r + relu(r W_in + b_in) W_out + b_out`` on ``(m, d)``.

    ``grad = c + W_in (relu'(z) * (W_out c))`` with ``relu'(0) = 0``, as
    autograd has it.
    """
    W_in, b_in, W_out = (params[prefix + name] for name in ("W_in", "b_in", "W_out"))
    active = (points @ W_in + b_in > 0).to(points.dtype)  # (m, d_mlp)
    c = cotangents.reshape(cotangents.shape[0], -1)  # (R, d)
    w = c @ W_out.T  # (R, d_mlp)
    if tangents is None:
        return c[:, None, :] + (w[:, None, :] * active) @ W_in.T  # (R, m, d)
    v_dirs, coef = tangents  # (J, d), (m, 1, J) or (m, J)
    coef = coef.reshape(points.shape[0], -1)
    # <W_in (s * w_r), v_j> = sum_k s_mk (w_rk (v_j W_in)_k): one product (m, k) @ (k, R J).
    pairs = w.T[:, :, None] * (v_dirs @ W_in).T[:, None, :]  # (d_mlp, R, J)
    through = (active @ pairs.reshape(pairs.shape[0], -1)).view(-1, *pairs.shape[1:])
    return coef[None] * ((c @ v_dirs.T)[:, None, :] + through.transpose(0, 1))  # (R, m, J)


def mlp_gram(params, points, weights, cotangents, prefix="blocks.0.mlp."):
    """``sum_m G_m K G_m^T`` of the MLP's integrated Jacobian, in ``O(m d_mlp^2)``.

    With ``s_m = sum_a w_a relu'(alpha_a z_m)`` (points alpha-major) and
    ``G_m = W I + W_in diag(s_m) W_out``, ``W = sum_a w_a``:

        sum_m G K G^T = n W^2 K + W (A + A^T) + W_in ((W_out K W_out^T) * S^T S) W_in^T,
        A = W_in diag(sum_m s_m) W_out K,

    so no per-sample ``(d, d)`` product is ever formed.
    """
    W_in, b_in, W_out = (params[prefix + name] for name in ("W_in", "b_in", "W_out"))
    n_alpha = weights.shape[0]
    active = (points @ W_in + b_in > 0).to(torch.float64)  # (A * m, d_mlp)
    s = torch.einsum(
        "a,amk->mk", weights.to(torch.float64), active.reshape(n_alpha, -1, W_in.shape[1])
    )
    c = cotangents.reshape(cotangents.shape[0], -1).to(torch.float64)
    K = c.T @ c  # sum_r c_r c_r^T
    W_in, W_out = W_in.to(torch.float64), W_out.to(torch.float64)
    total = float(weights.sum())
    cross = (W_in * s.sum(0)) @ (W_out @ K)  # (d, d)
    inner = (W_out @ K @ W_out.T) * (s.T @ s)  # (d_mlp, d_mlp)
    return s.shape[0] * total**2 * K + total * (cross + cross.T) + W_in @ inner @ W_in.T


def unembed_vjp(params, points, cotangents, tangents=None, prefix="unembed."):
    """The affine readout ``r W_U + b_U``: ``grad = W_U c``, the same at every point.

    Returned with a point axis of size 1, which tells the engine so (the
    engine then forms directional derivatives itself, cheaply).
    """
    if tangents is not None:
        return NotImplemented
    c = cotangents.reshape(cotangents.shape[0], -1)  # (R, n_vocab)
    return (c @ params[prefix + "W_U"].T)[:, None, :]  # (R, 1, d)
