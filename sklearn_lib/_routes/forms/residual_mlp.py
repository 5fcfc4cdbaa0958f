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
(see ``_section``).
"""

import inspect
import operator
import threading
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..._core.nodes import OUTPUT_NODE
from ..._core.numerics import CHUNK_ELEMENTS
from .linear_elementwise import weighted_slope_gram

_FUNCTIONS = {
    torch.relu: "relu",
    F.relu: "relu",
    torch.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.silu: "silu",
    F.gelu: "gelu",
}
_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
# Exact types only: a subclass may compute something else.
_MODULES = {
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
    nn.GELU: "gelu",
}
_PHI = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu}


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


class ResidualMLP:
    """The closed-form protocol of one section ``[x +] phi(x A + a) B [+ b]``.

    Implements ``vjp`` and ``gram`` with the semantics of the models'
    ``lib_section_vjp`` / ``lib_section_gram`` (see ``_section``).

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

    position_wise = True

    def __init__(self, first, second, activation, residual):
        self.first, self.second = first, second
        self.activation, self.residual = activation, residual

    @classmethod
    def detect(cls, session, src, dst):
        """The form of the section ``src -> dst`` of the session's model, or None.

        Never raises: tracing runs arbitrary user code, and whatever fails
        there only means the section is not recognised.
        """
        if session.capture != "input" or session.forward_kwargs or session.output is not None:
            return None
        # The formula acts along the last axis of the model's own layout.
        if any(session.axis_of(node) not in (None, -1) for node in (src, dst or OUTPUT_NODE)):
            return None
        try:
            model = session.model
            # The block alone first: most are not MLPs, and tracing it is cheaper
            # than tracing the whole model.
            found = _match(model.get_submodule(src))
            if found is None or not _feeds(model, src, dst):
                return None
        except Exception:  # any failure of fx on user code means "no form"
            return None
        return None if found is None else cls(*found)

    @property
    def A(self):
        """The first map's matrix, (d, k)."""
        return self.first.matrix

    @property
    def B(self):
        """The second map's matrix, (k, d_out)."""
        return self.second.matrix

    def name(self, kind):
        """How warnings name the form."""
        return "The residual MLP formula"

    def _derivative(self, points):
        """``phi'(points A + a)`` entrywise: (m, *positions, k)."""
        z = points.detach() @ self.A
        for bias in self.first.biases:
            z = z + bias
        if self.activation is None:
            return torch.ones_like(z)
        name, approximate = self.activation
        phi = partial(F.gelu, approximate=approximate) if name == "gelu" else _PHI[name]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            # phi is elementwise, so the gradient of sum(phi(z)) is phi'(z) entrywise,
            # exactly as autograd differentiates the model (relu'(0) = 0 included).
            (derivative,) = torch.autograd.grad(phi(z).sum(), z)
        return derivative

    def vjp(self, points, cotangents, tangents=None):
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
            projected = (v_dirs @ self.A).T  # (k, J)
            coef = coef.reshape(m, n_pos, -1)
            through_c = c @ v_dirs.T if self.residual else None  # (R, P, J)
        out = []
        chunk = max(1, CHUNK_ELEMENTS // max(m * n_pos * k, 1))
        for start in range(0, c.shape[0], chunk):
            scaled = w[start : start + chunk, None] * s  # (r, m, P, k)
            if tangents is None:
                rows = scaled @ self.A.T  # (r, m, P, d)
                out.append(rows + c[start : start + chunk, None] if self.residual else rows)
                continue
            along = scaled @ projected  # (r, m, P, J)
            if self.residual:
                along = along + through_c[start : start + chunk, None]
            out.append((along * coef).sum(2))  # (r, m, J)
        result = torch.cat(out)
        return result if tangents is not None else result.reshape(-1, *points.shape)

    def integrated_slopes(self, points, weights):
        """``s = sum_a w_a phi'(alpha_a x A + a)``, float64 ``(m, *pos, k)``.

        ``points`` are alpha-major, ``(A * m, *pos, d)``.
        """
        slope = self._derivative(points).to(torch.float64)
        slope = slope.reshape(weights.shape[0], -1, *slope.shape[1:])  # (A, m, *pos, k)
        return torch.einsum("a,am...->m...", weights.to(slope), slope)

    def gram(self, points, weights, cotangents):
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
#: fx patches ``torch.nn.Module.__call__`` and ``__getattr__`` process-wide while
#: it traces and restores them after; two traces at once in two threads could
#: restore each other's patches and leave one installed for good.
_TRACE_LOCK = threading.Lock()


class _LeafTracer(fx.Tracer):
    """fx's tracer with the named modules as leaves, besides torch.nn's own.

    Safe next to other threads: while it traces, fx sends every thread's
    module calls and attribute reads through it (the patches above), and a
    model served by another thread (the user's own, say) would fail with
    "module is not installed as a submodule".  Calls from any thread but the
    tracing one run as they would without fx.
    """

    # Buffers as graph inputs too, so that slicing one by a traced size traces
    # (the causal mask of an attention layer).
    proxy_buffer_attributes = True

    def __init__(self, leaves):
        super().__init__()
        self.leaves = leaves
        self._thread = None

    def trace(self, root, concrete_args=None):
        with _TRACE_LOCK:
            self._thread = threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._thread = None

    def _foreign(self):
        return threading.get_ident() != self._thread

    def call_module(self, m, forward, args, kwargs):
        if self._foreign():
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._foreign():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m, name):
        return name in self.leaves or super().is_leaf_module(m, name)


def _trace(tracer, root, concrete_args=None):
    """``tracer``'s graph of ``root``, leaving ``root`` as it was.

    fx stores tensors that are no attribute of the model on the root as
    ``_tensor_constant*``; they are removed again, so that tracing never
    changes the session's model.
    """
    before = set(vars(root))
    try:
        return tracer.trace(root, concrete_args)
    finally:
        for name in set(vars(root)) - before:
            delattr(root, name)


def _defaults(forward):
    """The forward parameters after the input at their defaults, or None where one has none.

    Traced as constants (fx's ``concrete_args``), so that ``if mask is not
    None`` takes the branch the real call takes.
    """
    params = list(inspect.signature(forward).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        return None
    if any(p.default is p.empty for p in params[1:]):  # *args and **kwargs have none either
        return None
    return {p.name: p.default for p in params[1:]}


def _hooked(module):
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _feeds(model, src, dst):
    """Whether ``src``, called once on one argument, gives ``dst``'s input and nothing else.

    ``dst`` None: the model's return value.  Hooks that fx would not see
    (user hooks on ``src``'s modules, pre-hooks on ``dst``) disqualify.
    """
    concrete = _defaults(model.forward)
    src_module = model.get_submodule(src)
    if concrete is None or _hooked(src_module):
        return False
    if dst is not None and model.get_submodule(dst)._forward_pre_hooks:
        return False
    graph = _trace(_LeafTracer({src, dst}), model, concrete)
    calls = [n for n in graph.nodes if n.op == "call_module"]
    at_src = [n for n in calls if n.target == src]
    at_dst = [n for n in calls if n.target == dst]
    if len(at_src) != 1 or len(at_src[0].args) != 1 or at_src[0].kwargs:
        return False
    node = at_src[0]
    if len(node.users) != 1:  # what reaches dst must be src's output unchanged, and only it
        return False
    (user,) = node.users
    if dst is None:
        return user.op == "output" and user.args[0] is node
    return at_dst == [user] and bool(user.args) and user.args[0] is node


def _match(module):
    """``(first, second, activation, residual)`` of ``module``'s forward, or None."""
    graph = _trace(_LeafTracer(()), module)
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
        name = _MODULES.get(type(module))
        if name == "gelu":
            kwargs["approximate"] = module.approximate
    elif node.op == "call_function":
        name = _FUNCTIONS.get(node.target)
    else:
        name = _METHODS.get(node.target) if node.op == "call_method" else None
    if name is None or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return None
    kwargs.pop("inplace", None)  # same values either way
    approximate = kwargs.pop("approximate", "none") if name == "gelu" else "none"
    if kwargs or approximate not in ("none", "tanh"):
        return None
    return node.args[0], (name, approximate)


# -- affine sections -----------------------------------------------------------------------
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


def is_affine_section(session, src, dst):
    """Whether the section ``src -> dst`` is provably affine in its input, by ``torch.fx``.

    The section must be exactly ``src``'s forward (see :func:`_feeds`), and
    every operation of that forward that depends on the input must be
    affine in it: sums, products and quotients by constants (parameters,
    buffers, literals), reshapes, slices and reductions, an exact
    ``nn.Linear``.  A proof from the code, not from data: no probe can show
    a kink that its samples do not reach (a clip beyond them, a ReLU they
    all switch on).  Never raises; a model fx cannot trace is not affine.
    """
    if session.capture != "input" or session.forward_kwargs or session.output is not None:
        return False
    if any(session.axis_of(node) not in (None, -1) for node in (src, dst or OUTPUT_NODE)):
        return False
    try:
        module = session.model.get_submodule(src)
        return _affine_graph(module) and _feeds(session.model, src, dst)
    except Exception:  # any failure of fx on user code means "not shown affine"
        return False


def _affine_graph(module):
    """Whether ``module``'s traced forward is affine in its one input."""
    if isinstance(module, _LINEAR_MODULES) and type(module) in _LINEAR_MODULES:
        return not _hooked(module)
    graph = _trace(_LeafTracer(()), module)
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
        return type(submodule) in _LINEAR_MODULES and not _hooked(submodule)
    if node.op == "call_function":
        target = node.target
        if target in _SUMS:
            return True
        if target in _PRODUCTS:
            return len(moving) == 1
        if target in _QUOTIENTS:
            return len(moving) == 1 and node.args[0] is moving[0]
        if target in _RESHAPES:
            # Only the tensor itself may move, never an index or a shape.
            return len(moving) == 1 and node.args[0] is moving[0]
        return False
    if node.op == "call_method":
        if node.target in _SUM_METHODS:
            return True
        if node.target in _PRODUCT_METHODS:
            return len(moving) == 1
        if node.target in _RESHAPE_METHODS:
            return len(moving) == 1 and node.args[0] is moving[0]
    return False
