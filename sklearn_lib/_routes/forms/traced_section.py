"""The closed form of a section read from its trace: attention, LayerNorm and MLPs by
batched products, with no autograd graph.

Every transformer has attention, ``softmax(q k^T * scale + mask) v``, and
however the user writes it (``@``, ``matmul``, ``einsum``, ``bmm`` or
``F.scaled_dot_product_attention``; projections by ``nn.Linear``,
``F.linear``, ``addmm`` as Hugging Face's ``Conv1D`` does, or parameter
products; any head layout, causal or given masks), it is a composition of
a few operations whose vector-Jacobian products are matrix products.  So
the section is not matched against one pattern: its trace
(:mod:`~sklearn_lib._routes.section_graph`) is run forward once per batch,
keeping each node's value, and the cotangent rows go back through the
nodes all at once, each node by its product in the table of
:mod:`.traced_ops`.  For the softmax of attention scores that product is
``P * (G - sum(G * P))``; for ``q k^T`` it is two batched matrix
products; for a weight, one matrix product of all rows.  An attention
block with its residual add, a whole pre-LayerNorm transformer block, an
MLP with its last position sliced off: any section whose every operation
is in the table is one closed form.

Where a section holds attention (a product of two tensors that both depend
on its start, or a softmax) but an operation outside the table, the fit
warns and names it: the speed is lost, never the result.  Like every closed
form, this one is checked once against autograd on the probe.
"""

from dataclasses import dataclass

import torch
from torch import fx

from ..._core.numerics import CHUNK_ELEMENTS
from ..._model.inputs import n_rows
from ..autograd import quadrature_sum
from ..section_graph import SectionGraph, section_graph
from .base import ClosedForm, Inapplicable
from .traced_ops import Unsupported, op_of
from .traced_pending import Pending, folds_kept, sum_of

#: Operations whose presence makes a section attention, for the warning.
ATTENTION_OPS = ("softmax", "sdpa")
BILINEAR_OPS = ("matmul", "einsum")  # not "mul": a gated MLP multiplies two too
#: Elements of cotangents that one chunk of rows may make at each node: the rows
#: are batched into matrix products, a few chunks' worth of CHUNK_ELEMENTS.
ROW_BUDGET = 2 * CHUNK_ELEMENTS


@dataclass(frozen=True)
class _Step:
    """One node of the section: its operation, bound arguments and which depend on the start."""

    node: object
    op: object
    arguments: dict
    wanted: frozenset


class TracedSection(ClosedForm):
    """A section's rows by batched products through its trace (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The session's model (its parameters are read at every call).
    graph : SectionGraph
    steps : list of _Step
        The dependent nodes, in the order they run.
    """

    title = "The traced section's products"

    def __init__(self, model, graph, steps):
        self.model, self.graph = model, graph
        self.steps = {step.node: step for step in steps}

    @classmethod
    def detect(cls, session, section):
        """The form of ``section``, or an :class:`Inapplicable` saying why not."""
        graph = section_graph(session.model, section)
        if not isinstance(graph, SectionGraph):
            return Inapplicable(graph)
        found = [(n, *op_of(n, session.model)) for n in graph.nodes if n in graph.dependent]
        missing = [(node, why) for node, op, why in found if op is None]
        if missing:
            node, why = missing[0]
            attention = any(_is_attention(n, op, a, graph) for n, op, a in found) or any(
                _reads_attention(n, graph, session.model) for n, _ in missing
            )
            return Inapplicable(why, warn=attention)
        steps = [_Step(n, op, a, frozenset(_wanted(a, graph))) for n, op, a in found]
        return cls(session.model, graph, steps)

    def describe(self, kind):
        return self.title

    # -- forward ---------------------------------------------------------------------------
    def _forward(self, points):
        """Every node's value at ``points``, and what each product keeps from it."""
        values, saved = {self.graph.start: points}, {}
        for node in self.graph.nodes:
            args = fx.node.map_arg(node.args, values.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
            values[node] = self._run(node, args, kwargs)
            step = self.steps.get(node)
            if step is not None and step.op.save is not None:
                bound = _values(step.arguments, values)
                saved[node] = step.op.save(bound, values[node], self._rerun(node, args, kwargs))
        return values, saved

    def _run(self, node, args, kwargs):
        if node.op == "get_attr":
            value = self.model
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        if node.op == "call_module":
            return self.model.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _rerun(self, node, args, kwargs):
        """``call(z)``: the node on ``z`` in place of its first argument."""
        return lambda z: self._run(node, (z, *args[1:]), kwargs)

    # -- products --------------------------------------------------------------------------
    def vjp(self, x, points, cotangents, tangents=None):
        """Rows ``J^T c`` at every point, ``(R, m or 1, *positions, d)``; directional
        derivatives are made from rows (NotImplemented)."""
        if tangents is not None:
            return NotImplemented
        with torch.no_grad():
            values, saved = self._forward(points.detach())
            return torch.cat(list(self._chunks(values, saved, cotangents)))

    def rows(self, x, points, rows, weights, chunks):
        """Integrated rows ``(r, n or 1, P_in, d)``, the forward run once for all chunks."""
        n = n_rows(x)
        with torch.no_grad():
            values, saved = self._forward(points.detach())
            for g in self._chunks(values, saved, rows):
                g = g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])
                yield (
                    g * weights.sum().to(g.dtype)
                    if g.shape[1] == 1
                    else quadrature_sum(g, weights, n)
                )

    def _chunks(self, values, saved, cotangents):
        """The start's cotangents, chunk by chunk of rows: ``(r, m or 1, *positions, d)``."""
        out, start = values[self.graph.end], values[self.graph.start]
        largest = max(v.numel() for v in values.values() if isinstance(v, torch.Tensor))
        chunk, kept = max(1, ROW_BUDGET // max(largest, 1)), {}
        for i in range(0, cotangents.shape[0], chunk):
            c = cotangents[i : i + chunk].to(out.dtype)
            with folds_kept(kept):
                g = self._backward(values, saved, c.reshape(c.shape[0], 1, *out.shape[1:]))
            if g.shape[1] == 1 and tuple(g.shape[2:]) == tuple(start.shape[1:]):
                yield g  # the same at every point
            else:
                yield g.expand(g.shape[0], *start.shape)

    def _backward(self, values, saved, g):
        """The start's cotangent from the end's ``g`` (row axis first)."""
        cot = {self.graph.end: g}
        for node in reversed(self.graph.nodes):
            step = self.steps.get(node)
            if step is None or node not in cot:
                continue
            g_out = _one(cot.pop(node), step.op.pending)
            bound = _values(step.arguments, values)
            grads = step.op.vjp(bound, values[node], g_out, saved.get(node), step.wanted)
            for target, grad in _targets(step, grads):
                _accumulate(cot, target, grad)
        start = cot.get(self.graph.start)
        if start is None:
            raise Unsupported("no derivative reaches the section's start")
        return _one(start, pending=False)


# -- helpers -----------------------------------------------------------------------------
def _flat(value):
    """A list argument as its list (einsum's operands may come as one list)."""
    if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        return tuple(value[0])
    return value


def _wanted(arguments, graph):
    """Names of the arguments that depend on the start (``name#i`` inside lists)."""
    dependent = graph.dependent | {graph.start}
    for name, value in arguments.items():
        value = _flat(value)
        if isinstance(value, (list, tuple)):
            yield from (f"{name}#{i}" for i, v in enumerate(value) if _among(v, dependent))
        elif _among(value, dependent):
            yield name


def _wanted_names(wanted):
    return {w.partition("#")[0] for w in wanted}


def _values(arguments, values):
    bound = {name: fx.node.map_arg(v, values.__getitem__) for name, v in arguments.items()}
    return {name: _flat(v) for name, v in bound.items()}


def _targets(step, grads):
    """``(node, cotangent)`` for each wanted argument's product."""
    for name, grad in grads.items():
        value = _flat(step.arguments[name])
        if isinstance(value, (list, tuple)):
            yield from ((value[i], g) for i, g in enumerate(grad) if g is not None)
        else:
            yield value, grad


def _accumulate(cot, node, grad):
    if isinstance(grad, dict):  # pieces of a split
        pieces = cot.setdefault(node, {})
        for i, g in grad.items():
            pieces[i] = g if i not in pieces else pieces[i] + g
    elif node not in cot:
        cot[node] = grad
    else:  # terms summed when the node is reached (sum_of): alike products at once
        before = cot[node]
        cot[node] = [*(before if isinstance(before, list) else [before]), grad]


def _one(g, pending):
    """A node's cotangent as one term: its terms summed, a pending one kept where the
    node's product takes it (``pending``)."""
    if isinstance(g, list):
        return sum_of(g)
    if isinstance(g, Pending) and not pending:
        return g.materialize()
    return g


def _is_attention(node, op, arguments, graph):
    """Whether ``node`` is a softmax or a product of two tensors that depend on the start."""
    if op is None:
        return False
    if op.name in ATTENTION_OPS:
        return True
    return op.name in BILINEAR_OPS and len(_wanted_names(_wanted(arguments, graph))) >= 2


def _reads_attention(node, graph, model):
    """Whether ``node`` normalises attention scores another way: one of its inputs is a
    product of two tensors that depend on the start (``sort(q @ k^T)``, say)."""
    for i in node.all_input_nodes:
        if i in graph.dependent:
            op, arguments = op_of(i, model)
            if _is_attention(i, op, arguments, graph):
                return True
    return False


def _among(value, nodes):
    return isinstance(value, fx.Node) and value in nodes
