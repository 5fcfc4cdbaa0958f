"""Independent computations the results are checked against.

Nothing here imports sklearn_lib.  Every function works on its own float64,
eval-mode deep copy of the model, reads node layers with plain hooks, and
follows ``LIB-SPEC.md`` step by step: per-sample Jacobians from
``torch.autograd.functional.jacobian``, covariances and eigendecompositions
in numpy.
"""

import contextlib
import copy

import numpy as np
import torch
from _refs import independent_rule
from sklearn.metrics import r2_score

#: Relative eigenvalue below which a direction is numerical null space, for the reference.
NULL_RTOL = 1e-12


def ref_model(model):
    """A float64, eval-mode deep copy: the user's model is never run by a reference."""
    return copy.deepcopy(model).double().eval()


def _as_input(x):
    """A batch as the model takes it: a float64 tensor of floats, ints as they are."""
    if isinstance(x, dict):
        return {k: _as_input(v) for k, v in x.items()}
    # A copy: a model that edits its input in place must not edit the caller's.
    t = torch.tensor(np.asarray(x)) if not torch.is_tensor(x) else x.detach().clone()
    return t.double() if t.is_floating_point() else t


def _take(x, rows):
    if isinstance(x, dict):
        return {k: v[rows] for k, v in x.items()}
    return x[rows]


def _n(x):
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _select(out, output):
    if output is None:
        return out
    if callable(output):
        return output(out)
    if isinstance(output, int):
        return out[output]
    return out[output] if isinstance(out, dict) or hasattr(out, "keys") else getattr(out, output)


@contextlib.contextmanager
def tap(model, name, capture="input", replace=None, store=None):
    """Read (into ``store``) and optionally replace (``replace``) a node layer."""
    module = dict(model.named_modules())[name]
    if capture == "input":

        def hook(mod, args, kwargs):
            if store is not None:
                store.append(args[0])
            if replace is not None:
                return (replace, *args[1:]), kwargs
            return None

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    else:

        def hook(mod, args, out):
            first = out[0] if isinstance(out, tuple) else out
            if store is not None:
                store.append(first)
            if replace is not None:
                return (replace, *out[1:]) if isinstance(out, tuple) else replace
            return None

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def call(model, x, kwargs=None):
    kwargs = kwargs or {}
    if isinstance(x, dict):
        return model(**x, **kwargs)
    return model(x, **kwargs)


def activations(model, X, names, *, capture="input", output=None, kwargs=None):
    """``{name: (N, *shape) float64 tensor}`` and the output, features on their own axes."""
    model = ref_model(model)
    X = _as_input(X)
    stores = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(tap(model, name, capture, store=stores[name]))
        with torch.no_grad():
            out = _select(call(model, X, copy.deepcopy(kwargs)), output)
    return {k: v[0].double() for k, v in stores.items()}, out.double()


def section(model, x, src, dst, *, capture="input", output=None, kwargs=None):
    """``z -> dst activations (or the output)`` for one sample ``x`` (a batch of 1)."""

    def run(z):
        store = []
        with contextlib.ExitStack() as stack:
            stack.enter_context(tap(model, src, capture, replace=z[None]))
            if dst != "output":
                stack.enter_context(tap(model, dst, capture, store=store))
            # Fresh copies per call: a model may edit its inputs and keyword arguments.
            out = _select(call(model, _as_input(x), copy.deepcopy(kwargs)), output)
        return (store[0] if dst != "output" else out)[0]

    return run


def jacobian(fn, z):
    try:
        return torch.autograd.functional.jacobian(fn, z, vectorize=True)
    except RuntimeError:
        return torch.autograd.functional.jacobian(fn, z)


def brute_lib(
    model,
    X,
    nodes,
    *,
    capture="input",
    output=None,
    kwargs=None,
    feature_axis=None,
    center=True,
    rule=((1.0,), (1.0,)),
    threshold=1e-10,
):
    """The LIB bases of ``nodes`` (then the output, identity basis) by brute force.

    Returns ``{node: dict(mean, C, Cpinv, lambdas, acts)}`` in forward order,
    ``C`` the kept columns ``(d, k)`` and ``acts`` ``(N, P, d)`` float64 numpy,
    features last.  ``feature_axis`` is the axis of the features in the
    activations and output (None: the last).
    """
    model = ref_model(model)
    X = _as_input(X)
    acts, out = activations(model, X, nodes, capture=capture, output=output, kwargs=kwargs)
    chain = [*nodes, "output"]
    acts["output"] = out
    d_out = _move_last(out, 1, out.dim() - 1, feature_axis).shape[-1]
    bases = {"output": dict(C=np.eye(d_out), mean=np.zeros(d_out), lambdas=np.ones(d_out))}
    for src, dst in reversed(list(zip(chain[:-1], chain[1:]))):
        f = _move_last(acts[src], 1, acts[src].dim() - 1, feature_axis)  # (N, *pos, d)
        n, d = f.shape[0], f.shape[-1]
        rows = f.reshape(-1, d).numpy()
        mean = rows.mean(0) if center else np.zeros(d)
        gram = (rows - mean).T @ (rows - mean) / len(rows)
        m_prime = _m_prime(
            model,
            X,
            acts[src],
            src,
            dst,
            bases[dst]["C"],
            rule,
            capture,
            output,
            kwargs,
            feature_axis,
        )
        bases[src] = _rotate(gram, m_prime, threshold)
        bases[src].update(mean=mean, acts=f.reshape(n, -1, d).numpy())
    return {name: bases[name] for name in chain}


def _move_last(t, first, ndim, axis):
    """Move the feature ``axis`` (counted in a sample, batch axis 0) of the ``ndim`` sample
    dims starting at dim ``first`` of ``t`` to the end of those dims."""
    if axis is None or ndim < 2:
        return t
    return torch.movedim(t, first + (axis - 1) % ndim, first + ndim - 1)


def _m_prime(model, X, raw, src, dst, C_next, rule, capture, output, kwargs, feature_axis):
    n = raw.shape[0]
    C = torch.as_tensor(C_next)
    in_nd = raw.dim() - 1
    d = raw.shape[1 + (feature_axis - 1) % in_nd] if feature_axis and in_nd > 1 else raw.shape[-1]
    n_pos = raw[0].numel() // d
    M = torch.zeros(d, d, dtype=torch.float64)
    alphas, weights = rule
    for i in range(n):
        x = _take(X, slice(i, i + 1))
        fn = section(model, x, src, dst, capture=capture, output=output, kwargs=kwargs)
        g = 0
        for a, w in zip(alphas, weights):
            J = jacobian(fn, float(a) * raw[i])  # (*out_sample, *in_sample)
            out_nd = J.dim() - in_nd
            J = _move_last(J, 0, out_nd, feature_axis)
            J = _move_last(J, out_nd, in_nd, feature_axis)
            J = J.reshape(-1, C.shape[0], n_pos, d)
            g = g + float(w) * torch.einsum("tjsd,jk->tksd", J, C).reshape(-1, n_pos, d)
        M += torch.einsum("rsd,rse->de", g, g)
    return (M / (n * n_pos)).numpy()


def _rotate(gram, m_prime, threshold):
    D, U = np.linalg.eigh(gram)
    keep = D > NULL_RTOL * D.max()
    D, U = D[keep], U[:, keep]
    root = np.sqrt(D)
    M = (root[:, None] * (U.T @ m_prime @ U)) * root[None, :]
    lam, V = np.linalg.eigh((M + M.T) / 2)
    order = np.argsort(lam)[::-1]
    lam, V = lam[order], V[:, order]
    kept = lam > max(threshold, NULL_RTOL) * lam[0]
    lam, V = lam[kept], V[:, kept]
    C = (U / root) @ V * np.sqrt(lam)
    Cpinv = (V / np.sqrt(lam)).T @ (root[:, None] * U.T)
    return dict(C=C, Cpinv=Cpinv, lambdas=lam)


def brute_pca(rows):
    """Centred PCA of ``rows`` (N, d) with 1/N: ``(variances, components (k, d))``."""
    centred = rows - rows.mean(0)
    D, U = np.linalg.eigh(centred.T @ centred / len(rows))
    order = np.argsort(D)[::-1]
    return D[order], U[:, order].T


def brute_edges(
    model, X, src, dst, bases, *, capture="input", output=None, kwargs=None, rule=((1.0,), (1.0,))
):
    """The squared edges of one section from full per-sample Jacobians of ``F_hat``."""
    model = ref_model(model)
    X = _as_input(X)
    b_src, b_dst = bases[src], bases[dst]
    mu, C, Cp = (torch.as_tensor(b_src[k]) for k in ("mean", "C", "Cpinv"))
    C_next = torch.as_tensor(b_dst["C"])
    mu_next = torch.as_tensor(b_dst["mean"])
    acts = torch.as_tensor(b_src["acts"])  # (N, P, d)
    n, n_pos = acts.shape[0], acts.shape[1]
    E = 0
    for i in range(n):
        fn = section(
            model,
            _take(X, slice(i, i + 1)),
            src,
            dst,
            capture=capture,
            output=output,
            kwargs=kwargs,
        )
        shape = b_src.get("shape", acts.shape[1:])
        f_hat = (acts[i] - mu) @ C  # (P, k_in)

        def F_hat(z, fn=fn, shape=shape):
            y = fn((z @ Cp + mu).reshape(shape))
            return (y.reshape(-1, C_next.shape[0]) - mu_next) @ C_next

        g = 0
        for a, w in zip(*rule):
            J = jacobian(F_hat, float(a) * f_hat)  # (P_out, k_out, P, k_in)
            g = g + float(w) * J
        inner = torch.einsum("tisj,sj->tij", g, f_hat)
        E = E + (inner**2).sum(0)
    return (E / (n * n_pos)).numpy()


def ablated_outputs(
    model,
    X,
    node,
    mean,
    C_k,
    Cpinv_k,
    *,
    capture="input",
    output=None,
    kwargs=None,
    feature_axis=None,
):
    """The model's outputs with ``node`` rebuilt from its first ``k`` features."""
    model = ref_model(model)
    X = _as_input(X)
    mean, C_k, Cpinv_k = (
        torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (mean, C_k, Cpinv_k)
    )
    module = dict(model.named_modules())[node]

    def rebuild(raw):
        nd = raw.dim() - 1
        f = _move_last(raw.double(), 1, nd, feature_axis)
        g = ((f - mean) @ C_k) @ Cpinv_k + mean
        if feature_axis is None or nd < 2:
            return g
        return torch.movedim(g, -1, 1 + (feature_axis - 1) % nd)

    if capture == "input":
        handle = module.register_forward_pre_hook(
            lambda m, args, kw: ((rebuild(args[0]), *args[1:]), kw), with_kwargs=True
        )
    else:
        handle = module.register_forward_hook(
            lambda m, args, out: (
                (rebuild(out[0]), *out[1:]) if isinstance(out, tuple) else rebuild(out)
            )
        )
    try:
        with torch.no_grad():
            return _select(call(model, X, copy.deepcopy(kwargs)), output).double()
    finally:
        handle.remove()


def outputs(model, X, *, output=None, kwargs=None):
    model = ref_model(model)
    with torch.no_grad():
        return _select(call(model, _as_input(X), copy.deepcopy(kwargs)), output).double()


def accuracy(y, out):
    return float(np.mean(np.asarray(out).argmax(-1) == np.asarray(y)))


def pooled_r2(orig, ablated):
    d = orig.shape[-1]
    return float(
        r2_score(
            np.asarray(orig).reshape(-1, d),
            np.asarray(ablated).reshape(-1, d),
            multioutput="variance_weighted",
        )
    )


def integration_rule(method, n):
    """The spec's quadrature rules, written out (numpy only): the tests' own, as arrays."""
    alphas, weights = independent_rule(method, n)
    return np.asarray(alphas, dtype=float), np.asarray(weights, dtype=float)


# -- comparisons ----------------------------------------------------------------------------


def compare_lambdas(got, expected, rtol=1e-7, floor=1e-8):
    """None if the Lambdas above ``floor * max`` agree to ``rtol * max``, else the reason."""
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    top = max(abs(expected).max(initial=0), 1e-300)
    g, e = got[got > floor * top], expected[expected > floor * top]
    if len(g) != len(e):
        return f"{len(g)} Lambdas above {floor:g} of the largest, expected {len(e)}"
    err = np.abs(g - e).max(initial=0) / top
    if err > rtol:
        return f"Lambdas differ by {err:.2e} of the largest (tolerance {rtol:g})"
    return None


def compare_features(Z, Z_ref, lambdas, rtol=1e-6, gap=1e-3):
    """None if feature columns agree up to a rotation within each group of near-equal
    Lambdas (compared as ``Z_g Z_g^T``), else the reason."""
    Z, Z_ref = np.asarray(Z, dtype=float), np.asarray(Z_ref, dtype=float)
    if Z.shape != Z_ref.shape:
        return f"features of shape {Z.shape}, expected {Z_ref.shape}"
    lam = np.asarray(lambdas, dtype=float)
    start = 0
    scale = max(np.abs(Z_ref).max(initial=0) ** 2, 1e-300)
    for j in range(1, len(lam) + 1):
        if j < len(lam) and abs(lam[j] - lam[j - 1]) <= gap * lam[0]:
            continue
        a, b = Z[:, start:j], Z_ref[:, start:j]
        err = np.abs(a @ a.T - b @ b.T).max(initial=0) / scale
        if err > rtol:
            return f"features {start}..{j - 1} differ by {err:.2e} (tolerance {rtol:g})"
        start = j
    return None


def close(a, b, rtol=1e-9, atol=1e-12, what="result"):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return f"{what} of shape {a.shape}, expected {b.shape}"
    same_nan = np.array_equal(np.isnan(a), np.isnan(b))
    if not same_nan:
        return f"{what}: NaN in other places"
    ok = np.isnan(a) | np.isclose(a, b, rtol=rtol, atol=atol)
    if not ok.all():
        i = np.argmax(~ok)
        return (
            f"{what} differs at {np.unravel_index(i, a.shape)}: {a.flat[i]:.6g} vs "
            f"{b.flat[i]:.6g} (max abs diff {np.nanmax(np.abs(a - b)):.2e})"
        )
    return None
