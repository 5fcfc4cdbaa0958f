"""One section's Jacobian products, by the fastest exact route that applies.

For a section ``F`` from node layer ``l`` to ``l+1``, LIB needs, integrated
over the rule's points ``alpha_a`` with weights ``w_a``:

- the *rows* ``g_r(x) = sum_a w_a J(alpha_a f)^T c_r`` for cotangents
  ``c_r`` (the Jacobian of the next node's features, one row per feature
  and output position);
- their *Gram* ``sum_x sum_r g_r g_r^T``, for ``M'``;
- *directional derivatives* ``sum_s <g_r(x)_s, t_{x,s,j}>`` along tangents
  ``t_{x,s,j} = a_{x,s,j} v_j`` (a direction ``v_j`` scaled per sample and
  position), for the edges: ``v_j`` is row ``j`` of ``C_pinv`` and
  ``a_{x,s,j}`` the feature value ``f_hat_{j,s}``.

By default the rows come from autograd, one backward pass per row
(:func:`~sklearn_lib._jacobian.integrated_vjps`), and the other two from the
rows.  A model that knows its sections in closed form may say so with
either or both of two methods (the protocol):

``lib_section_vjp(params, src, dst, capture, points, cotangents, tangents=None)``
    The rows at every point, shape ``(R, m or 1, *positions, d)`` (a point
    axis of size 1: the same at every point); with ``tangents=(v, a)``
    (``v`` of shape ``(J, d)``, ``a`` of shape ``(m, *positions, J)``) the
    directional derivatives, shape ``(R, m, J)``.
``lib_section_gram(params, src, dst, capture, points, weights, cotangents)``
    The Gram ``sum_x sum_r sum_s g g^T`` of the integrated rows, float64
    ``(d, d)``, for alpha-major stacked ``points`` and quadrature ``weights``.

Either returns ``NotImplemented`` for sections it does not cover.  Each is
checked once per section against autograd on the first batch (16 samples;
the first row and two random +-1 combinations of all rows, which test every
output position and feature); a disagreement or an exception warns and falls
back, so a wrong closed form costs speed, not correctness.  See
:meth:`sklearn_lib.models.ModularAdditionTransformer.lib_section_vjp`.
"""

import warnings

import torch

from ._jacobian import _CHUNK_ELEMENTS, integrated_vjps, quadrature_sum, scaled
from ._utils import max_relative_error


class SectionJacobian:
    """Rows, Gram and directional derivatives of one section's Jacobian.

    Parameters
    ----------
    runner : ModelRunner
    src : NodeLayer
    dst : NodeLayer or None
        None means the model output.
    closed_form : bool, default=True
        Use the model's ``lib_section_vjp`` / ``lib_section_gram`` where it
        has them.
    batched_rows : bool or None
        Autograd route: run rows through vmap (True) or a loop (False); None
        picks vmap on CUDA and the loop on the CPU (see ``_jacobian``).
    """

    # Samples on which a closed form is checked against autograd, and random
    # +-1 combinations of all rows checked besides the first row.
    _CHECK_POINTS, _CHECK_COMBINATIONS = 16, 2

    def __init__(self, runner, src, dst, closed_form=True, batched_rows=None):
        self.runner, self.src, self.dst = runner, src, dst
        self.batched_rows = batched_rows
        model = runner.model
        vjp = None if closed_form and hasattr(model, "lib_section_vjp") else False
        gram = None if closed_form and hasattr(model, "lib_section_gram") else False
        # Per closed form: None (not checked yet), True (checked) or False.
        self._use = {"rows": vjp, "tangents": vjp, "gram": gram}

    # -- what the estimators call ------------------------------------------------------
    def gradients(self, x, points, rows, weights):
        """Integrated rows at stacked input points, chunk by chunk.

        Parameters
        ----------
        x : torch.Tensor
            A batch of ``n`` model inputs.
        points : torch.Tensor of shape (A * n, *positions, d)
            Activations at which to take gradients, alpha-major (``A`` points
            of the integration rule per sample).
        rows : torch.Tensor of shape (R, P_out, d_next)
            Cotangents, from :func:`~sklearn_lib._jacobian.cotangent_rows` or
            :func:`~sklearn_lib._jacobian.source_rows`.
        weights : torch.Tensor of shape (A,)
            Quadrature weights.

        Yields
        ------
        torch.Tensor of shape (r, n or 1, P_in, d)
            Chunks of rows, in the order of ``rows``.  A sample axis of size 1
            means the gradient is the same for every sample (an affine section).
        """
        rows = rows.to(points.dtype)
        if self._closed("rows", x, points, rows, weights):
            for start, stop in self._row_chunks(points, rows):
                yield self._closed_rows(points, rows[start:stop], weights, x.shape[0])
            return
        yield from self._autograd_rows(x, points, rows, weights)

    def gram(self, x, points, rows, weights):
        """Un-normalised ``sum_x sum_r sum_s g g^T`` of the integrated rows, float64 (d, d)."""
        rows = rows.to(points.dtype)
        if self._closed("gram", x, points, rows, weights):
            return self._closed_gram(points, rows, weights)
        return _gram_of(self.gradients(x, points, rows, weights), x.shape[0], points.shape[-1])

    def directional_square_sums(self, x, points, rows, weights, directions, coefficients):
        """``sum_x out[r, x, j]^2`` of the integrated directional derivatives, float64 (R, J).

        ``out[r, x, j] = sum_s <g_r(x)_s, coefficients[x, s, j] * directions[j]>``;
        the edges are these sums.

        Parameters
        ----------
        x, points, rows, weights
            As in :meth:`gradients`.
        directions : torch.Tensor of shape (J, d)
        coefficients : torch.Tensor of shape (n, P_in, J), float64
        """
        rows = rows.to(points.dtype)
        tangents = (directions, coefficients)
        if self._closed("tangents", x, points, rows, weights, tangents):
            chunks = [
                self._closed_directional(points, rows[start:stop], weights, tangents)
                for start, stop in self._row_chunks(points, rows)
            ]
            return torch.cat([(out**2).sum(1) for out in chunks])
        return torch.cat(
            [_square_sums(g, *tangents) for g in self.gradients(x, points, rows, weights)]
        )

    # -- routes ------------------------------------------------------------------------
    def _section(self, x, f):
        dst = None if self.dst is None else self.dst.module
        return self.runner.section(x, self.src.module, f, dst)

    def _autograd_rows(self, x, points, rows, weights):
        batched = self.batched_rows
        if batched is None:
            batched = x.device.type == "cuda"
        leaf = points.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self._section(x, leaf)
            out = out.reshape(out.shape[0], *rows.shape[1:])  # (A*n, P_out, d_next)
            yield from integrated_vjps(out, leaf, rows, weights, x.shape[0], batched)

    def _call(self, method, *args, **kwargs):
        """The model's closed form, without autograd; NotImplemented passes through."""
        dst = None if self.dst is None else self.dst.name
        runner = self.runner
        with torch.no_grad():
            return getattr(runner.model, method)(
                runner.state, self.src.name, dst, runner.capture, *args, **kwargs
            )

    @staticmethod
    def _row_chunks(points, rows):
        # A chunk of rows holds a few times points.numel() elements at once.
        chunk = max(1, _CHUNK_ELEMENTS // max(points.numel(), 1))
        return [(s, min(s + chunk, rows.shape[0])) for s in range(0, rows.shape[0], chunk)]

    def _closed_rows(self, points, rows, weights, n_samples):
        g = self._call("lib_section_vjp", points, rows)
        if g is NotImplemented:
            return g
        g = g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])  # (r, A*n or 1, P_in, d)
        if g.shape[1] == 1:  # the same at every point
            return g * weights.sum().to(g.dtype)
        return quadrature_sum(g, weights, n_samples)

    def _closed_gram(self, points, rows, weights):
        gram = self._call("lib_section_gram", points, weights, rows)
        return gram if gram is NotImplemented else gram.to(torch.float64)

    def _closed_directional(self, points, rows, weights, tangents):
        directions, coefficients = (t.to(points.dtype) for t in tangents)
        n = coefficients.shape[0]
        total = 0
        for a in range(weights.shape[0]):
            part = self._call(
                "lib_section_vjp",
                points[a * n : (a + 1) * n],
                rows,
                tangents=(directions, coefficients),
            )
            if part is NotImplemented:
                return part
            total = total + weights[a].to(part.dtype) * part
        return total.to(torch.float64)

    # -- checking a closed form once -----------------------------------------------------
    def _closed(self, kind, x, points, rows, weights, tangents=None):
        """Whether to use the closed form ``kind``; checked on the first call."""
        if self._use[kind] is None:
            self._use[kind] = self._check(kind, x, points, rows, weights, tangents)
        return self._use[kind]

    def _check(self, kind, x, points, rows, weights, tangents):
        n, n_alpha = x.shape[0], weights.shape[0]
        k = min(n, self._CHECK_POINTS)
        rows = _probe_rows(rows, self._CHECK_COMBINATIONS)
        # The first k samples at every point of the rule, still alpha-major.
        points = points.reshape(n_alpha, n, *points.shape[1:])[:, :k].flatten(0, 1)
        try:
            if kind == "rows":
                closed = self._closed_rows(points, rows, weights, k)
            elif kind == "gram":
                closed = self._closed_gram(points, rows, weights)
            else:
                tangents = (tangents[0], tangents[1][:k])
                closed = self._closed_directional(points, rows, weights, tangents)
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
            # E.g. parameters under other names than the closed form expects.
            return self._fall_back(kind, f"it raised {type(exc).__name__}: {exc}")
        if closed is NotImplemented:
            return False
        auto = torch.cat(list(self._autograd_rows(x[:k], points, rows, weights)))
        if kind == "gram":
            auto = _gram_of([auto], k, points.shape[-1])
        elif kind == "tangents":
            auto = _directional(auto, *tangents)
        auto = auto.to(torch.float64)
        error = max_relative_error(closed.to(torch.float64).expand_as(auto), auto)
        if error <= (1e-8 if points.dtype == torch.float64 else 1e-3):
            return True
        return self._fall_back(kind, f"it disagrees with autograd (relative error {error:.2e})")

    def _fall_back(self, kind, why):
        where = "the model output" if self.dst is None else repr(self.dst.name)
        method = "lib_section_gram" if kind == "gram" else "lib_section_vjp"
        warnings.warn(
            f"{type(self.runner.model).__name__}.{method} is not used on the section "
            f"{self.src.name!r} -> {where}: {why}; using autograd instead",
            RuntimeWarning,
            stacklevel=4,
        )
        return False


def _probe_rows(rows, n_combinations):
    """The first row and seeded random +-1 combinations of all rows.

    Jacobian products are linear in the cotangent, so a combination of every
    row tests every output position and feature at once: a closed form wrong
    at any of them fails the check.
    """
    generator = torch.Generator().manual_seed(0)
    signs = 2 * torch.randint(0, 2, (n_combinations, rows.shape[0]), generator=generator) - 1
    mixed = (signs.to(rows) @ rows.flatten(1)).view(n_combinations, *rows.shape[1:])
    return torch.cat([rows[:1], mixed])


def _gram_of(chunks, n_samples, d):
    """``sum g g^T`` over chunks of rows ``(r, n or 1, P, d)``, float64."""
    gram = 0
    for g in chunks:
        # A sample axis of size 1: the same rows for all n samples.
        count = n_samples if g.shape[1] == 1 else 1
        g = _as_rows(g.to(torch.float64))  # (r * n * P_in, d)
        gram = gram + count * (g.T @ g)
    return gram


def _as_rows(g):
    """``g`` as a matrix of rows ``(-1, d)``, in memory order where that avoids a copy.

    The Gram does not depend on the order of the rows, and closed forms may
    return permuted views.
    """
    order = sorted(range(g.ndim - 1), key=lambda i: -g.stride(i))
    return g.permute(*order, g.ndim - 1).reshape(-1, g.shape[-1])


def _directional(g, directions, coefficients):
    """Directional derivatives from rows ``g`` of shape (r, n, P, d): (r, n, J)."""
    along = g.to(torch.float64) @ directions.T  # (r, n, P, J)
    return (along * coefficients).sum(2)


def _square_sums(g, directions, coefficients):
    """``sum_x`` of the squared directional derivatives of rows ``g`` (r, n or 1, P, d): (r, J).

    Rows that are the same for every sample (an affine section) need no
    per-sample product: ``sum_x (sum_s a_sj c_xsj)^2 = sum_ss' a_sj a_s'j F_ss'j``
    with ``F_ss'j = sum_x c_xsj c_xs'j``.
    """
    if g.shape[1] > 1:
        return (_directional(g, directions, coefficients) ** 2).sum(1)
    along = g[:, 0].to(torch.float64) @ directions.T  # (r, P, J)
    F = torch.einsum("xsj,xtj->jst", coefficients, coefficients)  # (J, P, P)
    return torch.einsum("rsj,jst,rtj->rj", along, F, along)


def jacobian_gram_batch(section, x, rows, alphas, weights, f=None):
    """Un-normalised ``M'`` contribution ``sum_x sum_rows sum_s g g^T`` of one batch.

    Gradients are taken at ``alpha * f`` (raw activations), as in the spec.

    Parameters
    ----------
    section : SectionJacobian
    x : torch.Tensor
        A batch of model inputs.
    rows : torch.Tensor of shape (R, P_out, d_next)
        Cotangents built from the next node layer's (truncated) LIB matrix:
        :func:`~sklearn_lib._jacobian.cotangent_rows` (exact) or
        :func:`~sklearn_lib._jacobian.source_rows` (stochastic).
    alphas, weights : torch.Tensor of shape (A,)
        The integration rule.
    f : torch.Tensor of shape (n, *positions, d), optional
        The source's activations on ``x``, where already read.

    Returns
    -------
    torch.Tensor of shape (d, d), float64
    """
    if f is None:
        with torch.no_grad():
            (f,) = section.runner.read(x, [section.src.module])
    return section.gram(x, scaled(f, alphas), rows, weights)
