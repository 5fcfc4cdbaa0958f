"""The closed form of Linear -> elementwise sections (the Linear inputs of an MLP).

For a section ``F(f) = phi(f W^T + b)`` (a Linear layer followed by
elementwise activations), the Jacobian row of cotangent ``c`` at a point is
``W^T (phi'(z) * c)`` with ``z = f W^T + b``.  Integrated over the rule's
points, ``s = sum_a w_a phi'(alpha_a f W^T + b)`` replaces ``phi'(z)``, and
summed over the rows of cotangents ``c_r``:

    sum_rows g g^T = W^T (K * (s s^T)) W,   K = sum_r c_r c_r^T,

so ``M'`` needs ``O(N d_next^2)`` work per pass and no backward pass per
output feature.  The section acts on each position separately, which
:class:`~sklearn_lib._routes.jacobian.SectionJacobian` uses to fold positions into
samples.

The form applies only where it is provably the same computation: the two
node layers are inputs of modules of one ``nn.Sequential``, the first is an
``nn.Linear``, and everything between them is a known elementwise
activation.  Like every closed form it is checked against autograd once per
section before use (a subclass of ``nn.Linear`` with its own ``forward``
fails that check and falls back).
"""

import torch
from torch import nn

from ..._core.congruence import Congruence
from ..._core.distributed import global_count
from ..._core.gram_sum import GramSum, symmetric_gram
from ..._core.identity import Identity
from ..._core.numerics import CHUNK_ELEMENTS
from ..cotangents import scaled
from ..integration import is_plain
from .activations import BY_MODULE, ELEMENTWISE_MODULES, IDENTITIES
from .base import ClosedForm


def linear_elementwise_section(model, section):
    """``(linear_name, activations)`` if ``section`` is Linear -> elementwise, else None.

    A section to the model output qualifies when its source is in the
    top-level ``nn.Sequential`` that is the model itself.
    """
    parent_name, _, src_child = section.src.rpartition(".")
    parent = dict(model.named_modules()).get(parent_name)
    if not isinstance(parent, nn.Sequential):
        return None
    names = list(parent._modules)
    if src_child not in names:
        return None
    start = names.index(src_child)
    if section.to_output:
        if parent is not model:
            return None
        stop = len(names)
    else:
        dst_parent, _, dst_child = section.dst.rpartition(".")
        if dst_parent != parent_name or dst_child not in names:
            return None
        stop = names.index(dst_child)
    between = [parent._modules[n] for n in names[start:stop]]
    if not between or not isinstance(between[0], nn.Linear):
        return None
    if not all(isinstance(m, ELEMENTWISE_MODULES) for m in between[1:]):
        return None
    prefix = f"{parent_name}." if parent_name else ""
    return f"{prefix}{src_child}", between[1:]


class LinearElementwise(ClosedForm):
    """The closed form of one Linear -> elementwise section (see the module docstring).

    Parameters
    ----------
    linear : torch.nn.Linear
        The section's Linear layer (of the session's private copy).
    activations : list of torch.nn.Module
        The elementwise modules after it.
    """

    title = "The Linear -> elementwise formula"
    position_wise = True

    def __init__(self, linear, activations):
        self.linear = linear
        self.activations = activations

    @classmethod
    def detect(cls, session, section):
        """The form of ``section`` of the session's model, or None where it does not apply."""
        found = linear_elementwise_section(session.model, section)
        if found is None:
            return None
        linear_name, activations = found
        return cls(session.model.get_submodule(linear_name), activations)

    def statistics(self, session, section, rule):
        """A :class:`SlopeGram`: the statistics pass gathers what gives ``M'`` for any basis."""
        return SlopeGram(session, section, self, rule)

    def _derivative(self, points):
        """``phi'(points W^T + b)`` entrywise: (m, *positions, d_next)."""
        with torch.enable_grad():
            z = self.linear(points.detach()).requires_grad_(True)
            h = z.clone()  # in-place activations must not touch the leaf
            for module in self.activations:
                h = module(h)
            # phi is elementwise, so the gradient of sum(phi(z)) is phi'(z) entrywise.
            (derivative,) = torch.autograd.grad(h.sum(), z)
        return derivative

    def vjp(self, x, points, cotangents, tangents=None):
        """Rows ``W^T (phi' * c_r)`` at every point (R, m, *positions, d), or with
        ``tangents=(v, a)`` the derivatives along ``a[m, p, j] * v[j]``, (R, m, J)."""
        slope = self._derivative(points)  # (m, *positions, d_next)
        W = self.linear.weight  # (d_next, d)
        # Output positions are the input positions (a size-1 axis where there are none).
        c = cotangents.reshape(cotangents.shape[0], *slope.shape[1:])
        if tangents is None:
            return (slope.unsqueeze(0) * c.unsqueeze(1)) @ W  # (R, m, *pos, d)
        v_dirs, coef = tangents  # (J, d), (m, *positions, J)
        m, k = slope.shape[0], slope.shape[-1]
        return slope_directional(
            c.reshape(c.shape[0], -1, k),
            slope.reshape(m, -1, k),
            (v_dirs @ W.T).T,
            coef.reshape(m, -1, coef.shape[-1]),
        )

    def integrated_slopes(self, points, weights):
        """``s = sum_a w_a phi'(alpha_a f W^T + b)``, float64 ``(m, *pos, d_next)``.

        ``points`` are alpha-major, ``(A * m, *pos, d)``.
        """
        slope = self._derivative(points).to(torch.float64)
        slope = slope.reshape(weights.shape[0], -1, *slope.shape[1:])  # (A, m, *pos, d_next)
        return torch.einsum("a,am...->m...", weights.to(torch.float64), slope)

    def slopes_from_outputs(self, h):
        """``phi'(z)`` from the section's outputs ``h = phi(z)``, or None where it cannot be read.

        For the plain gradient rule the slopes are those at the data, and a
        ReLU, tanh or sigmoid has its derivative as a function of its own
        output: ``1[h > 0]``, ``1 - h^2``, ``h (1 - h)``; no activation at all
        has slope 1.  So the statistics pass, which reads the next node layer
        anyway, needs no second run of the Linear layer.  Only the exact
        module types qualify (a subclass may compute something else).
        """
        kinds = [type(m) for m in self.activations if type(m) not in IDENTITIES]
        if not kinds:
            return torch.ones_like(h)
        found = BY_MODULE.get(kinds[0]) if len(kinds) == 1 else None
        if found is None or found.slope_of_output is None:
            return None
        return found.slope_of_output(h).to(h.dtype)

    @property
    def binary_slopes(self):
        """True when every slope is 0 or 1 (ReLU, or no activation)."""
        kinds = {type(m) for m in self.activations} - set(IDENTITIES)
        return kinds <= {nn.ReLU}

    def weighted_slopes(self, S, matrix):
        """``(C C^T) * S``, float64 ``(d_next, d_next)``: the Gram of the exact rows from
        ``S = sum s s^T`` before the weight (``M' = W^T ((C C^T) * S) W``).

        The section acts on each position separately, so the exact rows of a
        position are the columns of the next basis ``C`` (``matrix``, shape
        ``(d_next, k_next)``) and ``K = sum_r c_r c_r^T = C C^T``; ``S``
        summed over rows (samples and positions) needs no basis, which is
        why a fit can gather it in its statistics pass.
        """
        if isinstance(matrix, Identity):  # C C^T = I
            return torch.diag_embed(torch.diagonal(S))
        K = symmetric_gram(matrix.to(torch.float64).T)  # C C^T
        K *= S
        return K

    def gram(self, x, points, weights, cotangents):
        """``W^T (sum_p K_p * S_p) W`` in float64, with ``S_p = sum_x s s^T`` per position.

        Where the rows number fewer than the hidden units (the check against
        autograd on a few samples), their Gram is taken from the rows
        ``(s * c) W`` themselves: two products of ``d_next x d_next`` by
        ``W`` cost 2.6 s at width 4096.
        """
        s = self.integrated_slopes(points, weights)
        s = s.reshape(s.shape[0], -1, s.shape[-1])  # (m, P, d_next)
        c = cotangents.reshape(cotangents.shape[0], -1, cotangents.shape[-1]).to(torch.float64)
        W = self.linear.weight.to(torch.float64)
        n_rows = c.shape[0] * s.shape[0] * s.shape[1]
        if n_rows < s.shape[-1]:
            g = (c.unsqueeze(1) * s.unsqueeze(0)).reshape(-1, s.shape[-1]) @ W  # (rows, d)
            return g.T @ g
        return W.T @ weighted_slope_gram(c, s) @ W


def slope_directional(w, s, projected, coef, through=None):
    """Derivatives of the rows ``A (s * w_r) [+ c_r]`` along ``coef[m, p, j] * v_j``,
    ``(R, m, J)``: ``sum_p coef[m, p, j] (sum_k w[r, p, k] s[m, p, k] projected[k, j]
    [+ through[r, p, j]])``.

    Each row's weights of the hidden units along each direction,
    ``w[r, p, k] projected[k, j]``, are shared by all samples, so a chunk of
    rows is one matrix product with the slopes, ``(m, k) @ (k, r J)`` per
    position, rather than one narrow product per row and sample.

    Parameters
    ----------
    w : torch.Tensor of shape (R, P, k)
        Rows in the hidden units' space.
    s : torch.Tensor of shape (m, P, k)
        Slopes.
    projected : torch.Tensor of shape (k, J)
        The directions mapped into the hidden units' space (``A^T v_j``).
    coef : torch.Tensor of shape (m, P, J)
    through : torch.Tensor of shape (R, P, J), optional
        A part shared by all samples (a residual stream's ``c_r . v_j``).
    """
    (R, n_pos, k), m, J = w.shape, s.shape[0], projected.shape[1]
    out = w.new_empty(R, m, J)
    chunk = max(1, CHUNK_ELEMENTS // max(n_pos * max(m, k) * J, 1))
    slopes = s.transpose(0, 1)  # (P, m, k)
    for start in range(0, R, chunk):
        part = w[start : start + chunk]
        r = part.shape[0]
        weights = (part.unsqueeze(-1) * projected).permute(1, 2, 0, 3).reshape(n_pos, k, r * J)
        along = (slopes @ weights).reshape(n_pos, m, r, J).permute(2, 1, 0, 3)  # (r, m, P, J)
        if through is not None:
            along = along + through[start : start + chunk, None]
        out[start : start + r] = (along * coef).sum(2)
    return out


def weighted_slope_gram(w, s):
    """``sum_p (sum_r w_rp w_rp^T) * (sum_m s_mp s_mp^T)``, float64 ``(k, k)``.

    The Gram of Jacobian rows ``W^T (s * w)`` over rows ``r``, samples ``m``
    and positions ``p``, before the outer weights: the inner product of the
    Linear -> elementwise and residual MLP formulas.

    Parameters
    ----------
    w : torch.Tensor of shape (R, P, k)
        Rows in the hidden units' space (cotangents, or mapped back to it).
    s : torch.Tensor of shape (m, P, k)
        Integrated slopes.
    """
    n_pos, k = s.shape[1], s.shape[-1]
    if n_pos == 1:  # the common case (positions folded into samples): two products
        return (w[:, 0].T @ w[:, 0]) * (s[:, 0].T @ s[:, 0])
    inner = 0
    # Positions in chunks, each holding about CHUNK_ELEMENTS of the per-position Grams.
    chunk = max(1, CHUNK_ELEMENTS // (k * k))
    for start in range(0, n_pos, chunk):
        part = slice(start, start + chunk)
        K = torch.einsum("rpd,rpe->pde", w[:, part], w[:, part])
        S = torch.einsum("mpd,mpe->pde", s[:, part], s[:, part])
        inner = inner + (K * S).sum(0)
    return inner


class SlopeGram:
    """Accumulator of ``S = sum s s^T`` of a Linear -> elementwise section (see ``_model.session``).

    Its result gives the section's exact ``M'`` for any next basis
    (:meth:`m_prime`), so it joins the statistics pass.  With the plain
    gradient rule the slopes come from the next node's activations where the
    activation allows it (:meth:`LinearElementwise.slopes_from_outputs`),
    else from running the Linear layer again.

    Parameters
    ----------
    session : ModelSession
    section : Section
    form : LinearElementwise
    rule : (torch.Tensor, torch.Tensor)
        Integration points and weights on the session's device.
    """

    def __init__(self, session, section, form, rule):
        self.src, self.dst, self.form = section.src, section.dst, form
        self.what = f"slopes {section.src!r}"
        self.rule = rule
        # Slopes read from outputs are those at the data: the plain gradient's points.
        plain = is_plain(tuple(t.cpu() for t in rule))
        self.from_outputs = plain and form.slopes_from_outputs(torch.zeros(1)) is not None
        self.binary = self.from_outputs and form.binary_slopes
        self.reads = (self.src, self.dst) if self.from_outputs else (self.src,)
        self.sums = GramSum(form.linear.out_features, session.device, session.dtype)
        self.rows = 0

    def update(self, batch, acts):
        f = acts[self.src]
        if self.from_outputs:
            s = self.form.slopes_from_outputs(acts[self.dst])
        else:
            alphas, weights = self.rule
            s = self.form.integrated_slopes(scaled(f, alphas), weights)
        s = s.reshape(-1, s.shape[-1])  # (n * P, d_next): positions are samples here
        # 0/1 slopes (ReLU) have exact float32 products (counts below 2^24 per
        # batch); others take the fit's dtype where certified.  Sums stay float64.
        exact = torch.float32 if self.binary and s.shape[0] < 2**24 else None
        self.sums.add(s, exact=exact)
        self.rows += batch.n_rows(f.shape[1:])

    def result(self):
        self.sums.reduce()
        self.rows = global_count(self.rows, self.sums.device)
        return self

    def m_prime(self, matrix):
        """``M'`` in the next basis ``matrix`` ``(d_next, k_next)``, per row: a numpy
        :class:`~sklearn_lib._core.congruence.Congruence` ``W^T X W`` (the basis whitens it
        factored, one product of ``d x d`` matrices fewer)."""
        inner = self.form.weighted_slopes(self.sums.total, matrix) / self.rows
        weight = self.form.linear.weight.detach().to(torch.float64)
        return Congruence(inner.cpu().numpy(), weight.cpu().numpy())
