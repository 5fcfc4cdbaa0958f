"""The closed form of residual MLP sections in a user's own model, recognised with torch.fx.

A section ``out = [x +] phi(x A + a) B [+ b]`` (features along the last axis,
row vectors, each position on its own) has, with ``z = x A + a`` and the
slopes ``s = phi'(z)`` entrywise, the Jacobian row of cotangent ``c``

    g = [c +] A (s * (B c)).

Integrated over the rule's points, ``s = sum_a w_a phi'(alpha_a x A + a)``
and the residual's identity becomes ``W I`` with ``W = sum_a w_a``.  Summed
over samples and rows ``c_r`` of one output position, with
``K = sum_r c_r c_r^T``, ``sbar = sum_x s_x`` and ``S = sum_x s_x s_x^T``:

    sum g g^T = [m W^2 K + W (K B^T diag(sbar) A^T + transpose)]
                + A ((B K B^T) * S) A^T,

so ``M'`` needs no row at all (``m`` samples; positions add up).

Detection.  The section must be exactly the ``src`` module's forward, and
its output exactly what ``dst`` receives:

1. the whole model is traced with ``src`` and ``dst`` as leaves; ``src`` is
   called once, on one argument, and its output's only use is ``dst``'s first
   argument (or the model's return value when ``dst`` is None);
2. ``src``'s own forward is traced (``nn.Linear`` and activation modules as
   leaves) and must be the pattern above and nothing else: ``@``,
   ``torch.matmul``, ``F.linear`` or ``nn.Linear`` with parameters or buffers
   of the model as weights, biases added as such, and one known activation
   (or none).

Anything else, including models fx cannot trace, is not recognised.  Like
every closed form it is checked against autograd once per section before use
(see :mod:`~sklearn_lib._routes.table`).
"""

import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..._core.numerics import CHUNK_ELEMENTS
from ..._model.failures import Exploratory
from ..tracing import LeafTracer, feeds, quietly, trace
from .activations import BY_FUNCTION, BY_METHOD, BY_MODULE, BY_NAME
from .base import ClosedForm
from .linear_elementwise import slope_directional, weighted_slope_gram


class _Affine(NamedTuple):
    """``h @ matrix + sum(biases)``, holding the model's own tensors (not copies)."""

    weight: torch.Tensor
    transposed: bool  # nn.Linear and F.linear store W with A = W^T
    biases: tuple

    @property
    def matrix(self):
        return self.weight.T if self.transposed else self.weight

    def widths_fit(self):
        """Whether the weight is a matrix and each bias a vector (or scalar) of its outputs."""
        if self.weight.ndim != 2:
            return False
        width = self.matrix.shape[1]
        return all(b.ndim <= 1 and b.numel() in (1, width) for b in self.biases)


class ResidualMLP(ClosedForm):
    """The closed form of one section ``[x +] phi(x A + a) B [+ b]`` (see the module docstring).

    Parameters
    ----------
    first, second : _Affine
        The maps ``x -> x A + a`` and ``h -> h B + b``.
    activation : (str, str) or None
        ``(name, approximate)`` of ``phi`` ("relu", "gelu", "tanh",
        "sigmoid", "silu"; ``approximate`` is GELU's flag), None for none.
    residual : bool
        Whether the section adds its input.
    """

    title = "The residual MLP formula"
    position_wise = True

    def __init__(self, first, second, activation, residual):
        self.first, self.second = first, second
        self.activation, self.residual = activation, residual

    @classmethod
    def detect(cls, session, section):
        """The form of ``section`` of the session's model, or None.

        Tracing runs arbitrary user code, and whatever fails there only means
        the section is not recognised; out of memory, ``KeyboardInterrupt`` and
        ``SystemExit`` propagate.
        """
        return quietly(_detect, cls, session.model, section)

    @property
    def A(self):
        """The first map's matrix, (d, k)."""
        return self.first.matrix

    @property
    def B(self):
        """The second map's matrix, (k, d_out)."""
        return self.second.matrix

    def _derivative(self, points):
        """``phi'(points A + a)`` entrywise: (m, *positions, k)."""
        z = points.detach() @ self.A
        for bias in self.first.biases:
            z = z + bias
        if self.activation is None:
            return torch.ones_like(z)
        name, approximate = self.activation
        phi = BY_NAME[name].function(approximate)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            # phi is elementwise, so the gradient of sum(phi(z)) is phi'(z) entrywise,
            # exactly as autograd differentiates the model (relu'(0) = 0 included).
            (derivative,) = torch.autograd.grad(phi(z).sum(), z)
        return derivative

    def vjp(self, x, points, cotangents, tangents=None):
        """Rows ``[c +] A (s * (B c))`` at every point, (R, m, *positions, d), or with
        ``tangents=(v, coef)`` the derivatives along ``coef[m, p, j] * v[j]``, (R, m, J)."""
        slope = self._derivative(points)
        s = slope.reshape(slope.shape[0], -1, slope.shape[-1])  # (m, P, k)
        m, n_pos, k = s.shape
        c = cotangents.reshape(cotangents.shape[0], n_pos, -1)  # (R, P, d_out)
        w = c @ self.B.T  # B c, shared by all samples: (R, P, k)
        if tangents is not None:
            v_dirs, coef = tangents  # (J, d), (m, *positions, J)
            # Directions projected through A first: no d-dimensional row is ever formed.
            return slope_directional(
                w,
                s,
                (v_dirs @ self.A).T,
                coef.reshape(m, n_pos, -1),
                c @ v_dirs.T if self.residual else None,
            )
        out = []
        chunk = max(1, CHUNK_ELEMENTS // max(m * n_pos * k, 1))
        for start in range(0, c.shape[0], chunk):
            rows = (w[start : start + chunk, None] * s) @ self.A.T  # (r, m, P, d)
            out.append(rows + c[start : start + chunk, None] if self.residual else rows)
        return torch.cat(out).reshape(-1, *points.shape)

    def integrated_slopes(self, points, weights):
        """``s = sum_a w_a phi'(alpha_a x A + a)``, float64 ``(m, *pos, k)``.

        ``points`` are alpha-major, ``(A * m, *pos, d)``.
        """
        slope = self._derivative(points).to(torch.float64)
        slope = slope.reshape(weights.shape[0], -1, *slope.shape[1:])  # (A, m, *pos, k)
        return torch.einsum("a,am...->m...", weights.to(slope), slope)

    def gram(self, x, points, weights, cotangents):
        """``sum_x sum_p sum_r g g^T`` of the integrated rows, float64 (d, d)."""
        s = self.integrated_slopes(points, weights)
        s = s.reshape(s.shape[0], -1, s.shape[-1])  # (m, P, k)
        m, n_pos, k = s.shape
        c = cotangents.reshape(cotangents.shape[0], n_pos, -1).to(torch.float64)  # (R, P, d_out)
        A, B = self.A.to(torch.float64), self.B.to(torch.float64)
        w = c @ B.T  # (R, P, k); sum_r w_rp w_rp^T = B K_p B^T
        gram = A @ weighted_slope_gram(w, s) @ A.T
        if self.residual:
            total = weights.to(c).sum()  # the identity's integral
            flat = c.reshape(-1, c.shape[-1])  # (R P, d)
            # sum_p K_p B^T diag(sbar_p) A^T = sum_rp c_rp (sbar_p * B c_rp)^T A^T
            cross = flat.T @ (w * s.sum(0)).reshape(-1, k) @ A.T
            gram = gram + m * total**2 * (flat.T @ flat) + total * (cross + cross.T)
        return gram


# -- detection ---------------------------------------------------------------------------
def _detect(cls, model, section):
    # Any failure of fx on user code means "no form"; out of memory propagates.
    with Exploratory() as reading:
        # The block alone first: most are not MLPs, and tracing it is cheaper
        # than tracing the whole model.
        found = _match(model.get_submodule(section.src))
        if found is None or not feeds(model, section):
            return None
    return None if reading.error is not None else cls(*found)


def _match(module):
    """``(first, second, activation, residual)`` of ``module``'s forward, or None."""
    graph = trace(LeafTracer(()), module)
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    out = nodes[-1]
    if len(inputs) != 1 or out.op != "output" or not isinstance(out.args[0], fx.Node):
        return None
    (x,) = inputs
    terms = _summands(out.args[0])
    residual = sum(t is x for t in terms)
    found = _affine([t for t in terms if t is not x], module)
    if residual > 1 or found is None:
        return None
    h, second = found
    activation = _activation(h, module)
    z, activation = (h, None) if activation is None else activation
    found = _affine(_summands(z), module)
    if found is None or found[0] is not x or not _explains_all(nodes, out):
        return None
    first = found[1]
    A, B = first.matrix, second.matrix
    if not (first.widths_fit() and second.widths_fit()) or A.shape[1] != B.shape[0]:
        return None
    if residual and B.shape[1] != A.shape[0]:
        return None
    return first, second, activation, bool(residual)


def _explains_all(nodes, out):
    """Whether every node feeds the output, and every call once: no dead code, no side effect.

    The match reads every input of the nodes it accepts, so together with
    this it has accounted for the whole forward.
    """
    seen, stack = set(), [out]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    calls = [n for n in nodes if n.op.startswith("call_")]
    return len(seen) == len(nodes) and all(len(n.users) == 1 for n in calls)


def _is_add(node):
    binary = len(node.args) == 2 and not node.kwargs  # torch.add's alpha is not a plain sum
    if not binary or not all(isinstance(a, fx.Node) for a in node.args):
        return False
    if node.op == "call_function":
        return node.target in (operator.add, torch.add)
    return node.op == "call_method" and node.target == "add"


def _summands(node):
    """The terms of the tree of additions at ``node`` (``node`` itself if it is none)."""
    return [t for a in node.args for t in _summands(a)] if _is_add(node) else [node]


def _tensor(root, node):
    """The floating parameter or buffer a ``get_attr`` node reads, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    for getter in (root.get_parameter, root.get_buffer):
        try:
            value = getter(node.target)
        except AttributeError:
            continue
        return value if value.is_floating_point() else None
    return None


def _affine(terms, root):
    """``(input node, _Affine)`` if the sum of ``terms`` is one linear map plus constants."""
    cores = [t for t in terms if t.op != "get_attr"]
    if len(cores) != 1:
        return None
    found = _linear(cores[0], root)
    biases = [_tensor(root, t) for t in terms if t.op == "get_attr"]
    if found is None or not isinstance(found[0], fx.Node) or any(b is None for b in biases):
        return None
    h, weight, transposed, own = found
    return h, _Affine(weight, transposed, tuple(own + biases))


def _linear(node, root):
    """``(input node, weight, transposed, biases)`` of a matmul or Linear node, else None."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        if type(module) is not nn.Linear or len(node.args) != 1 or node.kwargs:
            return None
        return node.args[0], module.weight, True, [] if module.bias is None else [module.bias]
    is_matmul = (node.op == "call_function" and node.target in (operator.matmul, torch.matmul)) or (
        node.op == "call_method" and node.target == "matmul"
    )
    if is_matmul and len(node.args) == 2 and not node.kwargs:
        weight = _tensor(root, node.args[1])
        return None if weight is None else (node.args[0], weight, False, [])
    if node.op == "call_function" and node.target is F.linear and set(node.kwargs) <= {"bias"}:
        h, *rest = [*node.args, *node.kwargs.values()]
        weight = _tensor(root, rest[0]) if len(rest) in (1, 2) else None
        biases = [_tensor(root, b) for b in rest[1:] if b is not None]
        if weight is None or None in biases:
            return None
        return h, weight, True, biases
    return None


def _activation(node, root):
    """``(input node, (name, approximate))`` if ``node`` applies one known activation."""
    kwargs = dict(node.kwargs)
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        found = BY_MODULE.get(type(module))
        if found is not None and found.name == "gelu":
            kwargs["approximate"] = module.approximate
    elif node.op == "call_function":
        found = BY_FUNCTION.get(node.target)
    else:
        found = BY_METHOD.get(node.target) if node.op == "call_method" else None
    name = None if found is None else found.name
    if name is None or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return None
    kwargs.pop("inplace", None)  # same values either way
    approximate = kwargs.pop("approximate", "none") if name == "gelu" else "none"
    if kwargs or approximate not in ("none", "tanh"):
        return None
    return node.args[0], (name, approximate)
