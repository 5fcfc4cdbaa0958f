"""One section's Jacobian products, by the fastest exact route that applies.

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

:class:`SectionJacobian` is the one home of these products, for both
``M'`` and the edges.  Three routes give them:

1. **autograd** (any model): one backward pass per row, applied to the whole
   batch at once (:func:`~sklearn_lib._routes.cotangents.integrated_vjps`);
2. **the Linear -> elementwise formula** for such sections of an
   ``nn.Sequential`` (:class:`~sklearn_lib._routes.forms.linear_elementwise.LinearElementwise`);
3. **a model's own closed forms**, an optional protocol of two methods:

   ``lib_section_vjp(params, src, dst, capture, points, cotangents, tangents=None)``
       The rows at every point, shape ``(R, m or 1, *positions, d)`` (a
       point axis of size 1: the same at every point); with
       ``tangents=(v, a)`` (``v`` of shape ``(J, d)``, ``a`` of shape
       ``(m, *positions, J)``) the directional derivatives, ``(R, m, J)``.
   ``lib_section_gram(params, src, dst, capture, points, weights, cotangents)``
       The Gram ``sum_x sum_r sum_s g g^T`` of the integrated rows, float64
       ``(d, d)``, for alpha-major stacked ``points`` and quadrature
       ``weights``.

   Either returns ``NotImplemented`` for sections it does not cover.

Padding.  With an ``attention_mask`` among the inputs, padded positions
count nowhere (see :mod:`~sklearn_lib._model.inputs`): the autograd route zeroes
the section's outputs at padded output positions (so their rows vanish) and
the gradients or feature values at padded input positions.  Closed forms
know nothing of masks, so only autograd runs on such batches.

Routes 2 and 3 are *closed forms*, under one policy: each is checked once per
section and product against autograd on the first batch (16 samples; the
first row and two random +-1 combinations of all rows, which test every
output position and feature).  A disagreement or an exception warns and
falls back, so a wrong closed form costs speed, never correctness.  With
``jacobian="autograd"`` only route 1 runs.
"""

import warnings

import torch

from .._core.nodes import OUTPUT_NODE
from .._core.numerics import CHUNK_ELEMENTS, max_relative_error
from .._model.failures import is_out_of_memory
from .._model.inputs import attention_mask, n_rows, repeat_rows, take_rows, valid_positions
from ..exceptions import user_stacklevel
from .cotangents import ExactRows, integrated_vjps, quadrature_sum, scaled
from .forms.linear_elementwise import LinearElementwise
from .forms.residual_mlp import ResidualMLP, is_affine_section

JACOBIAN_ROUTES = ("auto", "autograd")


class _AffineForm:
    """How warnings name the affine route."""

    @staticmethod
    def name(kind):
        return "The affine-section route (rows of one sample for all)"


_AFFINE = _AffineForm()


def _quietly(detect, session, src, dst):
    """``detect(session, src, dst)``, silenced: what fx says of user code is no news."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return detect(session, src, dst)


def row_free_route(session, src, dst):
    """How the section's ``M'`` is served without a backward pass per row, or None.

    ``"closed form"`` where a closed form passed its check, ``"affine"``
    where the section was shown and checked affine (decided on the probe,
    see ``_fit.find_routes``).
    """
    structures = session.structures
    if structures.get(("route", "gram", src, dst)) is not None:
        return "closed form"
    if structures.get(("affine", src, dst)) and structures.get(("affine checked", src, dst)):
        return "affine"
    return None


class ModelClosedForm:
    """A model's own ``lib_section_vjp`` / ``lib_section_gram`` for one section."""

    position_wise = False

    def __init__(self, session, src, dst):
        self.session, self.src, self.dst = session, src, dst

    def name(self, kind):
        method = "lib_section_gram" if kind == "gram" else "lib_section_vjp"
        return f"{type(self.session.model).__name__}.{method}"

    def _call(self, method, *args, **kwargs):
        function = getattr(self.session.model, method, None)
        if function is None:
            return NotImplemented
        session = self.session
        return function(session.params, self.src, self.dst, session.capture, *args, **kwargs)

    def vjp(self, points, cotangents, tangents=None):
        return self._call("lib_section_vjp", points, cotangents, tangents=tangents)

    def gram(self, points, weights, cotangents):
        return self._call("lib_section_gram", points, weights, cotangents)


def closed_forms(session, src, dst):
    """The closed forms that may serve the section ``src -> dst``, most specific first."""
    forms = []
    model = session.model
    if hasattr(model, "lib_section_vjp") or hasattr(model, "lib_section_gram"):
        forms.append(ModelClosedForm(session, src, dst))
    structure = _structure(session, src, dst)
    if structure is not None:
        forms.append(structure)
    return forms


def _structure(session, src, dst):
    """The structural closed form of a section, or None; found once per session.

    Recognising a residual MLP traces the model with ``torch.fx``, which
    takes a fraction of a second: every pass of a fit asks again.
    """
    key = (src, dst)
    if key not in session.structures:
        # The formulas apply Linear layers along the last axis of the model's
        # own layout, which is not the feature axis once feature_axis moves it.
        moved = any(session.axis_of(node) not in (None, -1) for node in (src, dst or OUTPUT_NODE))
        found = None
        if not moved:
            found = LinearElementwise.detect(session.model, src, dst, session.capture)
        if found is None and not moved:
            found = _quietly(ResidualMLP.detect, session, src, dst)
        session.structures[key] = found
    return session.structures[key]


class SectionJacobian:
    """Rows, Gram and directional derivatives of one section's Jacobian.

    Parameters
    ----------
    session : ModelSession
    src : str
        The section's source node layer.
    dst : str or None
        Its destination node layer; None means the model output.
    jacobian : {"auto", "autograd"}, default="auto"
        ``"auto"`` uses closed forms where they apply (checked once);
        ``"autograd"`` only autograd.
    batched_rows : bool or None
        Autograd route: run rows through vmap (True) or a loop (False); None
        picks vmap on CUDA and the loop on the CPU (see ``_jacobian``).
    """

    # Samples on which a closed form is checked against autograd, and random
    # +-1 combinations of all rows checked besides the first row.
    _CHECK_POINTS, _CHECK_COMBINATIONS = 16, 2

    def __init__(self, session, src, dst, jacobian="auto", batched_rows=None):
        self.session, self.src, self.dst = session, src, dst
        self.batched_rows = batched_rows
        self._forms = [] if jacobian == "autograd" else closed_forms(session, src, dst)
        # Per product kind: the closed form that passed its check, or None (autograd).
        self._chosen = {}
        # Never looked for with jacobian="autograd": whether the Jacobian is the
        # same at every point (see is_affine), and the last rows made so.
        self._affine_allowed = jacobian != "autograd"
        self._affine_rows = (None, None)

    def route(self, kind):
        """The closed form in use for ``kind`` ("rows", "tangents", "gram"), None for autograd.

        None also before the first batch has decided it.
        """
        return self._chosen.get(kind)

    # -- what the analyses call --------------------------------------------------------
    def gram_sum(self, x, f, cotangents, rule, keep=None):
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
            Offered each chunk of rows ``(r, n or 1, P_in, d)`` as it is made
            (the autograd route), so that the edges can reuse them
            (:meth:`edge_sums` with ``rows=``), until it returns False; never
            called where a closed form gives the Gram without rows.

        Returns
        -------
        torch.Tensor of shape (d, d), float64
            Scaled by ``cotangents.scale`` (an average over sources).
        """
        alphas, weights = rule
        points = scaled(f, alphas)
        rows = cotangents.rows.to(points.dtype)
        form = self._closed("gram", x, points, rows, weights)
        if form is None:
            chunks = self.gradients(x, points, rows, weights)
            valid = valid_positions(x, f.shape[1:])
            if valid is not None:  # padded input positions count nowhere
                view = valid.reshape(1, valid.shape[0], -1, 1)
                chunks = (g * view.to(g.dtype) for g in chunks)
            if keep is not None:
                chunks = _offered(chunks, keep)
            gram = _gram_of(chunks, n_rows(x), points.shape[-1])
        elif form.position_wise and cotangents.exact:
            rows = cotangents.at_one_position().rows.to(points.dtype)
            gram = self._closed_gram(form, _fold_positions(points), rows, weights)
        else:
            gram = self._closed_gram(form, points, rows, weights)
        return cotangents.scale * gram

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
            return cotangents.feature_sums(_square_sums_of(rows, tangents, len(cotangents.rows)))
        # Points a * f_hat in feature space, mapped back to activations.
        points = (scaled(f_hat, alphas) @ C_pinv + mean).to(f.dtype)  # (A*n, *positions, d)
        form = self._closed("tangents", x, points, cotangents.rows, weights, tangents)
        if form is not None and form.position_wise and cotangents.exact:
            # Folded rows are the exact rows of every position at once, so the
            # square sums come out per next feature already.
            folded = (C_pinv, coefficients.reshape(-1, 1, coefficients.shape[-1]))
            rows = cotangents.at_one_position().rows
            return self._directional(form, _fold_positions(points), rows, weights, folded)
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
        form = self._closed("tangents", x, points, rows, weights, tangents)
        if form is None:
            chunks = self.gradients(x, points, rows, weights)
            return _square_sums_of(chunks, tangents, rows.shape[0])
        return self._directional(form, points, rows, weights, tangents)

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
        form = self._closed("rows", x, points, rows, weights)
        if form is None and self.is_affine(x, points, rows, weights):
            yield from self._rows_of_affine(x, points, rows, weights)
            return
        if form is None:
            yield from self._autograd_rows(x, points, rows, weights)
            return
        for start, stop in _row_chunks(points, rows):
            yield self._closed_rows(form, points, rows[start:stop], weights, n_rows(x))

    # -- routes ------------------------------------------------------------------------
    def _autograd_rows(self, x, points, rows, weights, batched=None):
        if batched is None:
            batched = self.batched_rows
        if batched is None:
            batched = points.device.type == "cuda"
        leaf = points.detach().requires_grad_(True)
        n = n_rows(x)
        with torch.enable_grad():
            out = self.session.section(x, self.src, leaf, self.dst)
            valid = valid_positions(x, out.shape[1:])
            if valid is not None:
                # Rows of padded output positions vanish: their outputs are zeroed
                # (per sample, at every point of the rule).
                copies = out.shape[0] // n
                out = out * repeat_rows(valid, copies).unsqueeze(-1).to(out.dtype)
            out = out.reshape(out.shape[0], *rows.shape[1:])  # (A*n, P_out, d_next)
            yield from integrated_vjps(out, leaf, rows, weights, n, batched)

    def _rows_of_affine(self, x, points, rows, weights):
        """The rows of an affine section: autograd on one sample, shared by all.

        Shape ``(r, 1, P_in, d)`` (a sample axis of size 1); made once per
        set of cotangent rows (the exact rows of a pass are one object), so
        a pass over an affine section costs no Jacobian work after its first
        batch.
        """
        made_for, chunks = self._affine_rows
        if made_for is not rows:
            n = n_rows(x)
            one = points.reshape(weights.shape[0], n, *points.shape[1:])[:, :1].flatten(0, 1)
            chunks = list(self._autograd_rows(take_rows(x, slice(0, 1)), one, rows, weights))
            self._affine_rows = (rows, chunks)
        return chunks

    def is_affine(self, x, points, rows, weights):
        """Whether the section is affine: its rows the same for every sample and point.

        Shown from the code (:func:`~sklearn_lib._routes.forms.residual_mlp.is_affine_section`:
        every operation on the input affine), then, like every closed form,
        checked against autograd once per session: the rows (the first and
        two random combinations of all) of up to 16 samples at their points
        and at the points scaled by -1 and 2 must all be the first sample's.
        No probe alone decides: a kink beyond the probe's samples (a clip
        they do not reach) would not show.
        """
        if not self._affine_allowed or _masked(x, points, rows):
            return False
        # A property of the section, found once per session for all its passes.
        key = ("affine", self.src, self.dst)
        if key not in self.session.structures:
            self.session.structures[key] = _quietly(
                is_affine_section, self.session, self.src, self.dst
            )
        if not self.session.structures[key]:
            return False
        checked = ("affine checked", self.src, self.dst)
        if checked not in self.session.structures:
            n, n_alpha = n_rows(x), weights.shape[0]
            k = min(n, self._CHECK_POINTS)
            if k < 2:  # rows that depend on the sample itself need two to show
                return False
            probe = _probe_rows(rows, self._CHECK_COMBINATIONS)
            first = points.reshape(n_alpha, n, *points.shape[1:])[:, :k].flatten(0, 1)
            x_first = take_rows(x, slice(0, k))
            try:
                found = [
                    torch.cat(list(self._autograd_rows(x_first, a * first, probe, weights, False)))
                    for a in (1.0, -1.0, 2.0)
                ]
            except (RuntimeError, ValueError) as exc:
                if is_out_of_memory(exc):
                    raise
                passed = self._fall_back(_AFFINE, "rows", f"it raised {type(exc).__name__}: {exc}")
            else:
                error = max(max_relative_error(g, found[0][:, :1].expand_as(g)) for g in found)
                passed = error <= self.session.tolerances.closed_form or self._fall_back(
                    _AFFINE, "rows", f"its rows differ between samples (relative {error:.2e})"
                )
            self.session.structures[checked] = passed
        return self.session.structures[checked]

    @staticmethod
    def _call(method, *args, **kwargs):
        """A closed form, without autograd; NotImplemented passes through."""
        with torch.no_grad():
            return method(*args, **kwargs)

    def _closed_rows(self, form, points, rows, weights, n_samples):
        g = self._call(form.vjp, points, rows)
        if g is NotImplemented:
            return g
        g = g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])  # (r, A*n or 1, P_in, d)
        if g.shape[1] == 1:  # the same at every point
            return g * weights.sum().to(g.dtype)
        return quadrature_sum(g, weights, n_samples)

    def _closed_gram(self, form, points, rows, weights):
        rows = rows[:] if isinstance(rows, ExactRows) else rows  # a closed form takes all at once
        gram = self._call(form.gram, points, weights, rows)
        return gram if gram is NotImplemented else gram.to(torch.float64)

    def _closed_directional(self, form, points, rows, weights, tangents):
        """Directional derivatives ``(R, n, J)``, integrated over the rule's points."""
        directions, coefficients = (t.to(points.dtype) for t in tangents)
        n = coefficients.shape[0]
        total = 0
        for a in range(weights.shape[0]):
            part = self._call(
                form.vjp, points[a * n : (a + 1) * n], rows, tangents=(directions, coefficients)
            )
            if part is NotImplemented:
                return part
            total = total + weights[a].to(part.dtype) * part
        return total.to(torch.float64)

    def _directional(self, form, points, rows, weights, tangents):
        """Square sums ``(R, J)`` of a closed form's directional derivatives, chunked by rows."""
        # Squared and summed chunk by chunk: the derivatives of all rows at once
        # would take R * n * J numbers (2 GiB at 256 rows, 4096 samples, 256 features).
        sums = _new_sums(rows.shape[0], tangents[0].shape[0], points.device)
        for start, stop in _row_chunks(points, rows):
            out = self._closed_directional(form, points, rows[start:stop], weights, tangents)
            sums[start:stop] = (out**2).sum(1)
        return sums

    # -- choosing a closed form once ---------------------------------------------------
    def _closed(self, kind, x, points, rows, weights, tangents=None):
        """The closed form to use for ``kind``, or None; decided on the first call.

        None on batches whose attention mask applies to the section's input or
        output positions: closed forms do not mask.
        """
        if _masked(x, points, rows) or not self._forms:
            return None
        if kind not in self._chosen:
            # Once per session: every pass of a fit builds its own SectionJacobian,
            # and the forms are made in the same order each time.
            key = ("route", kind, self.src, self.dst)
            if key not in self.session.structures:
                self.session.structures[key] = next(
                    (
                        i
                        for i, form in enumerate(self._forms)
                        if self._check(form, kind, x, points, rows, weights, tangents)
                    ),
                    None,
                )
            index = self.session.structures[key]
            self._chosen[kind] = None if index is None else self._forms[index]
        return self._chosen[kind]

    def _check(self, form, kind, x, points, rows, weights, tangents):
        """Whether ``form`` gives ``kind`` equal to autograd on the first samples."""
        n, n_alpha = n_rows(x), weights.shape[0]
        k = min(n, self._CHECK_POINTS)
        rows = _probe_rows(rows.to(points.dtype), self._CHECK_COMBINATIONS)
        # The first k samples at every point of the rule, still alpha-major.
        points = points.reshape(n_alpha, n, *points.shape[1:])[:, :k].flatten(0, 1)
        try:
            if kind == "rows":
                closed = self._closed_rows(form, points, rows, weights, k)
            elif kind == "gram":
                closed = self._closed_gram(form, points, rows, weights)
            else:
                tangents = (tangents[0], tangents[1][:k])
                closed = self._closed_directional(form, points, rows, weights, tangents)
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
            if is_out_of_memory(exc):
                raise  # autograd would need more memory, not less
            # E.g. parameters under other names than the closed form expects: warned.
            return self._fall_back(form, kind, f"it raised {type(exc).__name__}: {exc}")
        if closed is NotImplemented:
            return False
        # Three rows: a plain loop (vmap would first import functorch, seconds on a cold start).
        auto = torch.cat(
            list(self._autograd_rows(take_rows(x, slice(0, k)), points, rows, weights, False))
        )
        if kind == "gram":
            auto = _gram_of([auto], k, points.shape[-1])
        elif kind == "tangents":
            auto = _directional(auto, *tangents)
        auto = auto.to(torch.float64)
        error = max_relative_error(closed.to(torch.float64).expand_as(auto), auto)
        if error <= self.session.tolerances.closed_form:
            return True
        return self._fall_back(
            form, kind, f"it disagrees with autograd (relative error {error:.2e})"
        )

    def _fall_back(self, form, kind, why):
        where = "the model output" if self.dst is None else repr(self.dst)
        warnings.warn(
            f"{form.name(kind)} is not used on the section {self.src!r} -> {where}: {why}; "
            "using autograd instead",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
        return False


def _masked(x, points, rows):
    """Whether padding applies to a section with these input points and cotangent rows."""
    mask = attention_mask(x)
    if mask is None:
        return False
    output_positions = rows.shape[1]  # (R, P_out, d_next): positions flattened
    return valid_positions(x, points.shape[1:]) is not None or output_positions == mask[0].numel()


def _new_sums(n_rows, n_directions, device):
    """The ``(R, J)`` float64 tensor that square sums are written into, chunk by chunk.

    One tensor made first, not a list of small ones joined at the end: small
    tensors that outlive each chunk's large temporaries fragment the
    allocator's heap, which then grows by every chunk (measured: a peak of
    2.5 GiB instead of 0.6 GiB for 256 rows of 4096 samples of width 256).
    """
    return torch.empty(n_rows, n_directions, dtype=torch.float64, device=device)


def _square_sums_of(chunks, tangents, n_rows):
    """:func:`_square_sums` of every chunk of rows, written into one ``(R, J)`` tensor."""
    directions, coefficients = tangents
    sums = _new_sums(n_rows, directions.shape[0], coefficients.device)
    start = 0
    for g in chunks:
        sums[start : start + g.shape[0]] = _square_sums(g, *tangents)
        start += g.shape[0]
    return sums


def _offered(chunks, keep):
    """``chunks`` passed through, each offered to ``keep`` until it declines one."""
    taking = True
    for g in chunks:
        taking = taking and keep(g)
        yield g


def _row_chunks(points, rows):
    """Chunks of rows that hold a few times ``points.numel()`` elements at once."""
    chunk = max(1, CHUNK_ELEMENTS // max(points.numel(), 1))
    return [(s, min(s + chunk, rows.shape[0])) for s in range(0, rows.shape[0], chunk)]


def _fold_positions(points):
    """Alpha-major points ``(A*n, *positions, d)`` as one-position points ``(A*n*P, 1, d)``."""
    return points.reshape(-1, 1, points.shape[-1])


def _probe_rows(rows, n_combinations):
    """The first row and seeded random +-1 combinations of all rows.

    Jacobian products are linear in the cotangent, so a combination of every
    row tests every output position and feature at once: a closed form wrong
    at any of them fails the check.
    """
    generator = torch.Generator().manual_seed(0)
    signs = 2 * torch.randint(0, 2, (n_combinations, rows.shape[0]), generator=generator) - 1
    if isinstance(rows, ExactRows):
        mixed = rows.combine(signs.to(rows.device))
    else:
        mixed = (signs.to(rows) @ rows.flatten(1)).view(n_combinations, *rows.shape[1:])
    return torch.cat([rows[:1], mixed])


def _gram_of(chunks, n_samples, d):
    """``sum g g^T`` over chunks of rows ``(r, n or 1, P, d)``, float64."""
    gram = 0
    for g in chunks:
        # A sample axis of size 1: the same rows for all n samples.
        count = n_samples if g.shape[1] == 1 else 1
        g = _as_rows(g.to(torch.float64))  # (r * n * P_in, d)
        if isinstance(gram, int):
            gram = torch.zeros(d, d, dtype=torch.float64, device=g.device)
        gram.addmm_(g.T, g, alpha=count)  # in place: see _new_sums
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
