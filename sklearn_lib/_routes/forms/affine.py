"""Affine sections: the rows of one sample serve every sample.

A section that is affine in its input (an unembedding ``x @ W_U + b_U``, a
projection, a reshape) has the same Jacobian at every point.  Its rows are
made once, by autograd on one sample, and serve every batch, for ``M'`` and
for the edges.  The section must be *shown* affine from its code
(:func:`is_affine_section`), and is then checked on the probe like every
closed form: no probe alone decides, since a kink beyond its samples (a clip
they do not reach) would not show.
"""

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..._core.numerics import max_relative_error
from ..._model.failures import Exploratory
from ..._model.inputs import n_rows, take_rows
from ..autograd import autograd_rows
from ..products import form_rows
from ..tracing import LeafTracer, feeds, hooked, quietly, trace
from .base import CHECK_COMBINATIONS, CHECK_SAMPLES, ClosedForm


class Affine(ClosedForm):
    """The rows of an affine section: autograd on one sample, shared by all.

    Parameters
    ----------
    session : ModelSession
    section : Section
    """

    title = "The affine-section route (rows of one sample for all)"

    def __init__(self, session, section):
        self.session, self.section = session, section
        # The last set of cotangent rows made, the input shape, and its rows.
        self._made = (None, None, None)

    @classmethod
    def detect(cls, session, section):
        """An :class:`Affine` where ``section`` is shown affine from its code, else None."""
        return cls(session, section) if quietly(is_affine_section, session.model, section) else None

    def vjp(self, x, points, cotangents, tangents=None):
        """The rows at the first point ``(R, 1, *positions, d)``: the same at every point."""
        if tangents is not None:
            return NotImplemented  # the square sums take the shared rows directly
        one = torch.ones(1, dtype=points.dtype, device=points.device)
        first = take_rows(x, slice(0, 1))
        return torch.cat(
            list(autograd_rows(self.session, self.section, first, points[:1], cotangents, one))
        )

    def rows(self, x, points, rows, weights, chunks):
        """The rows, made once per set of cotangent rows (the exact rows of a pass are one
        object), so that a pass costs no Jacobian work after its first batch."""
        # Made for these rows at these input positions: a batch of sequences of
        # another length has rows of another shape, even where the cotangent
        # rows are the same (one output position at every length).
        made_rows, made_shape, made = self._made
        shape = tuple(points.shape[1:])
        if made_rows is not rows or made_shape != shape:
            made = [form_rows(self, x, points, rows[a:b], weights, n_rows(x)) for a, b in chunks]
            self._made = (rows, shape, made)
        return iter(made)

    def check(self, session, section, kind, probe):
        """Whether the rows of up to 16 samples, at their points and at the points scaled
        by -1 and 2, are all the first sample's (only rows are offered)."""
        k = min(n_rows(probe.x), CHECK_SAMPLES)
        if kind != "rows" or k < 2:  # rows that depend on the sample itself need two to show
            return None, ""
        first = probe.first(k, CHECK_COMBINATIONS)

        def rows_at(scale):
            points = scale * first.points
            chunks = autograd_rows(
                session, section, first.x, points, first.rows, first.weights, batched=False
            )
            return torch.cat(list(chunks))

        with Exploratory() as trying:  # out of memory propagates
            found = [rows_at(scale) for scale in (1.0, -1.0, 2.0)]
        if trying.error is not None:
            return False, f"it raised {type(trying.error).__name__}: {trying.error}"
        error = max(max_relative_error(g, found[0][:, :1].expand_as(g)) for g in found)
        if error <= session.tolerances.closed_form:
            return True, ""
        return False, f"its rows differ between samples (relative {error:.2e})"


def is_affine_section(model, section):
    """Whether ``section`` is provably affine in its input, by ``torch.fx``.

    The section must be exactly ``src``'s forward (see
    :func:`~sklearn_lib._routes.tracing.feeds`), and every operation of that
    forward that depends on the input must be affine in it: sums, products
    and quotients by constants (parameters, buffers, literals), reshapes,
    slices and reductions, an exact ``nn.Linear``.  A proof from the code,
    not from data: no probe can show a kink that its samples do not reach (a
    clip beyond them, a ReLU they all switch on).  Raises only what no call
    swallows (out of memory, ``KeyboardInterrupt``, ``SystemExit``); a model
    fx cannot trace is not affine.
    """
    # Any failure of fx on user code means "not shown affine"; out of memory propagates.
    with Exploratory():
        module = model.get_submodule(section.src)
        return _affine_graph(module) and feeds(model, section)
    return False


# Operations affine in their tensor arguments.  "Products" are affine only when
# at most one tensor argument depends on the section's input (x @ W, 2 * x);
# a quotient only when the input is in the numerator.
_SUMS = {
    operator.add,
    operator.sub,
    operator.neg,
    operator.pos,
    torch.add,
    torch.sub,
    torch.cat,
    torch.stack,
}
_PRODUCTS = {operator.mul, operator.matmul, torch.mul, torch.matmul, torch.einsum, F.linear}
_QUOTIENTS = {operator.truediv, torch.div}
_RESHAPES = {
    operator.getitem,
    torch.reshape,
    torch.flatten,
    torch.transpose,
    torch.permute,
    torch.squeeze,
    torch.unsqueeze,
    torch.sum,
    torch.mean,
}
_SUM_METHODS = {"add", "sub", "neg"}
_PRODUCT_METHODS = {"mul", "matmul"}
_RESHAPE_METHODS = {
    "reshape",
    "view",
    "permute",
    "transpose",
    "flatten",
    "unsqueeze",
    "squeeze",
    "contiguous",
    "expand",
    "sum",
    "mean",
    "t",
    "__getitem__",
}
_LINEAR_MODULES = (nn.Linear, nn.Identity, nn.Flatten)
_FUNCTION_KINDS = {
    **dict.fromkeys(_SUMS, "sum"),
    **dict.fromkeys(_PRODUCTS, "product"),
    **dict.fromkeys(_QUOTIENTS, "quotient"),
    **dict.fromkeys(_RESHAPES, "reshape"),
}
_METHOD_KINDS = {
    **dict.fromkeys(_SUM_METHODS, "sum"),
    **dict.fromkeys(_PRODUCT_METHODS, "product"),
    **dict.fromkeys(_RESHAPE_METHODS, "reshape"),
}


def _affine_graph(module):
    """Whether ``module``'s traced forward is affine in its one input."""
    if isinstance(module, _LINEAR_MODULES) and type(module) in _LINEAR_MODULES:
        return not hooked(module)
    graph = trace(LeafTracer(()), module)
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    dependent = set(inputs)
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        if _metadata(node):
            continue  # x.shape, x.size(0): sizes, not values
        operands = []
        fx.node.map_arg((node.args, node.kwargs), operands.append)  # nested lists too
        moving = [a for a in operands if a in dependent]
        if not moving:
            continue  # a constant: computed from parameters alone
        if not _affine_step(node, moving, module):
            return False
        dependent.add(node)
    return True


def _metadata(node):
    """Whether ``node`` reads a tensor's size, dtype or device (no value of it)."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "dtype", "device", "ndim")
    return node.op == "call_method" and node.target in ("size", "dim")


def _affine_step(node, moving, root):
    """Whether ``node`` is affine in the operands ``moving`` (those that depend on the input)."""
    if node.op == "call_module":
        submodule = root.get_submodule(node.target)
        return type(submodule) in _LINEAR_MODULES and not hooked(submodule)
    kinds = {"call_function": _FUNCTION_KINDS, "call_method": _METHOD_KINDS}.get(node.op, {})
    kind = kinds.get(node.target)
    one = len(moving) == 1
    # Quotients and reshapes: only the tensor itself (the numerator) may move,
    # never a divisor, an index or a shape.
    first = one and bool(node.args) and node.args[0] is moving[0]
    return {"sum": True, "product": one, "quotient": first, "reshape": first}.get(kind, False)
