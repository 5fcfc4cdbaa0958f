"""One section's Jacobian products, by the route the route table chose for it.

For a section ``F`` from node layer ``l`` to ``l+1``, LIB needs, integrated
over the rule's points ``alpha_a`` with weights ``w_a``:

- the *rows* ``g_r(x) = sum_a w_a J(alpha_a f)^T c_r`` for cotangents
  ``c_r`` (the Jacobian of the next node's features, one row per feature
  and output position: :class:`~sklearn_lib._routes.cotangents.Cotangents`);
- their *Gram* ``sum_x sum_r g_r g_r^T``, for ``M'``;
- *directional derivatives* ``sum_s <g_r(x)_s, t_{x,s,j}>`` along tangents
  ``t_{x,s,j} = a_{x,s,j} v_j`` (a direction ``v_j`` scaled per sample and
  position), for the edges: ``v_j`` is row ``j`` of ``C_pinv`` and
  ``a_{x,s,j}`` the feature value ``f_hat_{j,s}``.

:class:`SectionJacobian` is the one home of these products, for both ``M'``
and the edges.  Which route serves each kind of product (a closed form, or
autograd) is the section's :class:`~sklearn_lib._routes.table.SectionRoute`,
decided once per call on the probe; nothing here decides it again.

Padding.  With an ``attention_mask`` among the inputs, padded positions
count nowhere (see :mod:`~sklearn_lib._model.inputs`): the autograd route zeroes
the section's outputs at padded output positions (so their rows vanish) and
the gradients or feature values at padded input positions.  Closed forms
know nothing of masks, so the route table gives sections whose positions
the mask covers autograd alone.
"""

import torch

from .._core.gram_sum import GramSum
from .._model.inputs import n_rows, valid_positions
from .autograd import autograd_rows
from .cotangents import scaled
from .products import (
    add_rows,
    fold_positions,
    form_gram,
    form_square_sums,
    masked_inputs,
    offered,
    row_chunks,
    square_sums_of,
)


class SectionJacobian:
    """Rows, Gram and directional derivatives of one section's Jacobian.

    Parameters
    ----------
    session : ModelSession
    route : SectionRoute
        The section and the closed form (or autograd) for each kind of product.
    batched_rows : bool or None
        Autograd route: run rows through vmap (True) or a loop (False); None
        picks vmap on CUDA and the loop on the CPU (see ``_routes.autograd``).
    """

    def __init__(self, session, route, batched_rows=None):
        self.session, self.route, self.section = session, route, route.section
        self.batched_rows = batched_rows

    # -- what the analyses call --------------------------------------------------------
    def gram_sum(self, x, f, cotangents, rule, keep=None, into=None):
        """Un-normalised ``M'`` contribution of one batch: ``sum_x sum_rows sum_s g g^T``.

        Gradients are taken at ``alpha * f`` (raw activations), as in the spec.

        Parameters
        ----------
        x : torch.Tensor or dict of torch.Tensor
            The batch of model inputs.
        f : torch.Tensor of shape (n, *positions, d)
            The source's activations on ``x``.
        cotangents : Cotangents
        rule : (torch.Tensor, torch.Tensor)
            Integration points ``alphas`` and ``weights``.
        keep : callable or None
            Offered each chunk of rows ``(r, n or 1, P_in, d)`` as it is made,
            so that the edges can reuse them (:meth:`edge_sums` with
            ``rows=``), until it returns False; never called where a closed
            form gives the Gram without rows.
        into : GramSum or None
            A running sum to add the batch's Gram to (in the products it
            certifies, see :class:`~sklearn_lib._core.gram_sum.GramSum`);
            None: float64 products, returned.

        Returns
        -------
        torch.Tensor of shape (d, d), float64, or None
            Scaled by ``cotangents.scale`` (an average over sources); None
            where added ``into``.
        """
        alphas, weights = rule
        points = scaled(f, alphas)
        rows = cotangents.rows.to(points.dtype)
        form = self.route.form("gram")
        gram = NotImplemented
        if form is not None and form.position_wise and cotangents.exact:
            one = cotangents.at_one_position().rows.to(points.dtype)
            gram = form_gram(form, x, fold_positions(points), weights, one)
        elif form is not None:
            gram = form_gram(form, x, points, weights, rows)
        sums = GramSum(f.shape[-1], f.device) if into is None else into
        if gram is not NotImplemented:
            sums.add_matrix(gram, alpha=cotangents.scale)
        else:
            # No form, or one found (by running the section) not to cover this
            # batch: the rows, as the check against autograd had them.
            chunks = masked_inputs(self.gradients(x, points, rows, weights), x, f.shape[1:])
            if keep is not None:
                chunks = offered(chunks, keep)
            add_rows(sums, chunks, n_rows(x), scale=cotangents.scale)
        return sums.total if into is None else None

    def edge_sums(self, x, f, src, cotangents, rule, rows=None):
        """Un-normalised squared edges of one batch, shape (k_out, k_in), float64.

        ``sum_x sum_t (sum_s sum_a w_a dF_hat_{i,t}/df_hat_{j,s}(a f_hat) f_hat_{j,s})^2``:
        the derivative along row ``j`` of ``C_pinv``, scaled by the feature's
        value at each input position, squared.

        Parameters
        ----------
        x, f
            As in :meth:`gram_sum`.
        src : (mean, matrix, pinv)
            The source's kept basis as float64 tensors (:meth:`NodeBasis.tensors`).
        cotangents : Cotangents
            Exact, or with ``(S, P_out)`` signs (sources over output positions).
        rule : (torch.Tensor, torch.Tensor)
        rows : list of torch.Tensor or None
            The rows of ``cotangents`` at these points, made already (by a
            fit's :meth:`gram_sum` at the same points): no Jacobian work then.
        """
        alphas, weights = rule
        mean, C, C_pinv = src
        f_hat = (f.to(torch.float64) - mean) @ C  # (n, *positions, k_in)
        coefficients = f_hat.reshape(f.shape[0], -1, C.shape[1])  # (n, P_in, k_in)
        valid = valid_positions(x, f.shape[1:])
        if valid is not None:  # padded input positions count nowhere
            coefficients = coefficients * valid.reshape(f.shape[0], -1, 1).to(torch.float64)
        tangents = (C_pinv, coefficients)
        if rows is not None:
            return cotangents.feature_sums(square_sums_of(rows, tangents, len(cotangents.rows)))
        # Points a * f_hat in feature space, mapped back to activations.
        points = (scaled(f_hat, alphas) @ C_pinv + mean).to(f.dtype)  # (A*n, *positions, d)
        form = self.route.form("tangents")
        if form is not None and form.position_wise and cotangents.exact:
            # Folded rows are the exact rows of every position at once, so the
            # square sums come out per next feature already.
            folded = (C_pinv, coefficients.reshape(-1, 1, coefficients.shape[-1]))
            rows = cotangents.at_one_position().rows
            return form_square_sums(form, x, fold_positions(points), rows, weights, folded)
        sums = self.directional_square_sums(x, points, cotangents.rows, weights, *tangents)
        return cotangents.feature_sums(sums)

    def directional_square_sums(self, x, points, rows, weights, directions, coefficients):
        """``sum_x out[r, x, j]^2`` of the integrated directional derivatives, float64 (R, J).

        ``out[r, x, j] = sum_s <g_r(x)_s, coefficients[x, s, j] * directions[j]>``.

        Parameters
        ----------
        x, points, rows, weights
            As in :meth:`gradients`.
        directions : torch.Tensor of shape (J, d)
        coefficients : torch.Tensor of shape (n, P_in, J), float64
        """
        rows = rows.to(points.dtype)
        tangents = (directions, coefficients)
        form = self.route.form("tangents")
        if form is None:
            chunks = self.gradients(x, points, rows, weights)
            return square_sums_of(chunks, tangents, rows.shape[0])
        return form_square_sums(form, x, points, rows, weights, tangents)

    def gradients(self, x, points, rows, weights):
        """Integrated rows at stacked input points, chunk by chunk.

        Parameters
        ----------
        x : torch.Tensor or dict of torch.Tensor
            A batch of ``n`` model inputs.
        points : torch.Tensor of shape (A * n, *positions, d)
            Activations at which to take gradients, alpha-major (``A`` points
            of the integration rule per sample).
        rows : torch.Tensor of shape (R, P_out, d_next)
            Cotangents.
        weights : torch.Tensor of shape (A,)
            Quadrature weights.

        Yields
        ------
        torch.Tensor of shape (r, n or 1, P_in, d)
            Chunks of rows, in the order of ``rows``.  A sample axis of size 1
            means the gradient is the same for every sample (an affine section).
        """
        rows = rows.to(points.dtype)
        form = self.route.form("rows")
        if form is None:
            yield from autograd_rows(
                self.session, self.section, x, points, rows, weights, batched=self.batched_rows
            )
        else:
            yield from form.rows(x, points, rows, weights, row_chunks(points, rows))
