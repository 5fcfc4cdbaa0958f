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

import itertools
import operator
import warnings
from dataclasses import dataclass

import torch
from torch import fx

from ..._core.numerics import CHUNK_ELEMENTS
from ..._model.failures import is_out_of_memory
from ..._model.inputs import is_dict, n_rows, point_mask, repeat_rows
from ..autograd import autograd_rows
from ..products import integrated
from ..section_export import exported_section
from ..section_graph import FX_FAILS, section_graph
from .base import ClosedForm, Inapplicable, NotOffered
from .traced_fusion import chains, slope
from .traced_ops import OPS, Unsupported, describe, flat, op_of
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
    session : ModelSession
    section : Section
    trace : _Trace or None
        The fx trace, for every batch; None: exported on each batch's shapes
        (:func:`~sklearn_lib._routes.section_export.exported_section`).
    """

    title = "The traced section's products"
    reads_forward_kwargs = True
    padding = True  # it reads the mask as the model does, and zeroes padded rows

    def __init__(self, session, section, trace=None):
        self.session, self.section, self.trace = session, section, trace
        self._exported, self._by_fields = {}, {}

    @classmethod
    def detect(cls, session, section):
        """The form of ``section``, or an :class:`Inapplicable` saying why not."""
        graph = section_graph(session.model, section, session.forward_kwargs)
        if isinstance(graph, str) and graph.startswith(FX_FAILS):
            return cls(session, section)  # torch.export on the batches' shapes
        if isinstance(graph, str):
            return Inapplicable(graph)
        trace = _Trace.of(session.model, graph)
        return trace if isinstance(trace, Inapplicable) else cls(session, section, trace)

    def describe(self, kind):
        return self.title if self.trace is not None else self.title + " (torch.export)"

    def _trace(self, x, m):
        """The trace for ``m`` points of batch ``x``; raises :class:`NotOffered` or
        :class:`Unsupported` (attention) where there is none.

        fx: the one traced with the forward's defaults, or, for a dict batch,
        one with its fields as inputs (a mask the defaults leave out).
        Otherwise the export on the points' shapes (the batch repeated once
        per point of the rule).
        """
        model, kwargs = self.session.model, self.session.forward_kwargs
        if self.trace is not None and not is_dict(x):
            return self.trace
        if self.trace is not None:
            key = tuple(sorted(x))
            if key not in self._by_fields:
                graph = section_graph(model, self.section, kwargs, key)
                self._by_fields[key] = graph if isinstance(graph, str) else _Trace.of(model, graph)
            return _usable(self._by_fields[key])
        graph = exported_section(model, self.section, repeat_rows(x, m // n_rows(x)), kwargs)
        if isinstance(graph, str):
            raise NotOffered(graph)
        key = (graph.start, graph.end)  # the same nodes: the same kept export
        if key not in self._exported:
            self._exported = {key: _Trace.of(model, graph)}  # the last batch shape's
        return _usable(self._exported[key])

    def vjp(self, x, points, cotangents, tangents=None):
        """Rows ``J^T c`` at every point, ``(R, m or 1, *positions, d)``; directional
        derivatives are made from rows (NotImplemented)."""
        if tangents is not None:
            return NotImplemented
        with torch.no_grad():
            return torch.cat(list(self._made(x, points, cotangents)))

    def _made(self, x, points, cotangents):
        """The rows at every point, chunk by chunk, the forward run once for all; padded
        input positions zeroed, as every pass counts them."""
        trace = self._trace(x, points.shape[0])
        values, saved = trace.forward(points.detach(), x)
        mask = point_mask(x, points.shape[1:], points.shape[0], points.dtype)
        for g in trace.chunks(values, saved, cotangents, x):
            yield g if mask is None else g * mask

    def rows(self, x, points, rows, weights, chunks):
        """Integrated rows ``(r, n or 1, P_in, d)``, the forward run once for all chunks.

        A batch the trace does not serve (a shape the export does not cover,
        a failure on its values) takes autograd's rows, with a warning where
        it failed; the check against autograd passed on other batches.
        """
        n = n_rows(x)
        try:
            with torch.no_grad():
                made = self._made(x, points, rows)
                first = next(made, None)
        except Exception as exc:  # the batch is autograd's: same rows, slower
            if is_out_of_memory(exc):
                raise
            if not isinstance(exc, NotOffered):
                warnings.warn(
                    f"{self.title} failed on a batch ({type(exc).__name__}: {exc}); the "
                    f"section {self.section.src!r} -> {self.section.dst_title} takes "
                    "autograd's rows there",
                    RuntimeWarning,
                    stacklevel=2,
                )
            yield from autograd_rows(self.session, self.section, x, points, rows, weights)
            return
        with torch.no_grad():
            for g in itertools.chain([first] if first is not None else [], made):
                yield integrated(g, weights, n)


class _Trace:
    """One section graph with its products: run forward, then rows back, chunk by chunk.

    Parameters
    ----------
    model : torch.nn.Module
        The session's model (its parameters are read at every call).
    graph : SectionGraph
    steps : list of _Step
        The dependent nodes, in the order they run.
    """

    def __init__(self, model, graph, steps):
        self.model, self.graph = model, graph
        self.steps = {step.node: step for step in steps}
        # Elementwise chains as one step each: their slope is made in the forward.
        self.chains = chains(self.steps, graph)
        self.chained = set()  # the chains' nodes but their outputs: run with the outputs
        for out, (z, order) in self.chains.items():
            for node in order:
                self.steps.pop(node)
            self.chained.update(order[:-1])
            self.steps[out] = _Step(out, OPS["elementwise"], {"input": z}, frozenset({"input"}))

    @classmethod
    def of(cls, model, graph):
        """The trace of ``graph``, or an :class:`Inapplicable` naming an operation outside
        the table, or an argument one has no product for (to warn of where the section
        holds attention)."""
        found = [(n, *op_of(n, model)) for n in graph.nodes if n in graph.dependent]
        missing = [(node, why) for node, op, why in found if op is None]
        missing += [
            (node, f"{describe(node)} has {op.refuses}")
            for node, op, arguments in found
            if op is not None
            and op.takes is not None
            and not _wanted_names(_wanted(arguments, graph)) <= op.takes
        ]
        if missing:
            node, why = missing[0]
            attention = any(_is_attention(n, op, a, graph) for n, op, a in found) or any(
                _reads_attention(n, graph, model) for n, _ in missing
            )
            return Inapplicable(why, warn=attention)
        steps = [_Step(n, op, a, frozenset(_wanted(a, graph))) for n, op, a in found]
        return cls(model, graph, steps)

    def forward(self, points, x):
        """Every node's value at ``points`` of batch ``x``, and what each product keeps."""
        values, saved = {self.graph.start: points}, {}
        copies = points.shape[0] // n_rows(x)  # the rule's points, alpha-major
        for node in self.graph.nodes:
            if node in self.graph.inputs:  # the model's own input: the batch's, once per point
                values[node] = repeat_rows(self.graph.input_value(node, x), copies)
                continue
            if node in self.chained:
                continue  # run with its chain's output, which alone is read further on
            if node in self.chains:  # a chain's value and slope, in one run
                z, order = self.chains[node]
                values[node], saved[node] = slope(self._run_on, values, z, order)
                continue
            args = fx.node.map_arg(node.args, values.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
            values[node] = self._run(node, args, kwargs)
            step = self.steps.get(node)
            if step is not None and step.op.save is not None:
                bound = _values(step.arguments, values)
                saved[node] = step.op.save(bound, values[node], self._rerun(node, args, kwargs))
        return values, saved

    def _run(self, node, args, kwargs):
        if node in self.graph.constants:  # an export's parameter, a tensor made in forward
            return self.graph.constants[node]()
        if node.op == "get_attr":
            return operator.attrgetter(node.target)(self.model)
        if node.op == "call_module":
            return self.model.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _run_on(self, node, values):
        """``node`` run on ``values`` (by node)."""
        args = fx.node.map_arg(node.args, values.__getitem__)
        return self._run(node, args, fx.node.map_arg(node.kwargs, values.__getitem__))

    def _rerun(self, node, args, kwargs):
        """``call(z)``: the node on ``z`` in place of its first argument."""
        return lambda z: self._run(node, (z, *args[1:]), kwargs)

    def chunks(self, values, saved, cotangents, x):
        """The start's cotangents, chunk by chunk of rows: ``(r, m or 1, *positions, d)``.

        Rows of padded output positions vanish, as on the autograd route.
        """
        out, start = values[self.graph.end], values[self.graph.start]
        largest = max(v.numel() for v in values.values() if isinstance(v, torch.Tensor))
        chunk, kept = max(1, ROW_BUDGET // max(largest, 1)), {}
        mask = point_mask(x, out.shape[1:], out.shape[0], out.dtype)
        for i in range(0, cotangents.shape[0], chunk):
            c = cotangents[i : i + chunk].to(out.dtype)
            c = c.reshape(c.shape[0], 1, *out.shape[1:])
            with folds_kept(kept):
                g = self._backward(values, saved, c if mask is None else c * mask)
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
def _wanted(arguments, graph):
    """Names of the arguments that depend on the start (``name#i`` inside lists)."""
    dependent = graph.dependent | {graph.start}
    for name, value in arguments.items():
        value = flat(value)
        if isinstance(value, (list, tuple)):
            yield from (f"{name}#{i}" for i, v in enumerate(value) if _among(v, dependent))
        elif _among(value, dependent):
            yield name


def _wanted_names(wanted):
    return {w.partition("#")[0] for w in wanted}


def _values(arguments, values):
    bound = {name: fx.node.map_arg(v, values.__getitem__) for name, v in arguments.items()}
    return {name: flat(v) for name, v in bound.items()}


def _targets(step, grads):
    """``(node, cotangent)`` for each wanted argument's product."""
    for name, grad in grads.items():
        value = flat(step.arguments[name])
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


def _usable(trace):
    """``trace``, or the exception that says why there is none."""
    if isinstance(trace, str):
        raise NotOffered(trace)
    if isinstance(trace, Inapplicable):
        raise (Unsupported if trace.warn else NotOffered)(trace.why)
    return trace


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
