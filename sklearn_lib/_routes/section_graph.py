"""A section of the user's model as a graph of its own: what runs between two node layers.

The whole model is traced with ``torch.fx``, every module of the user's own
inlined, while a tracer records what each call of the section's two modules
receives: the section starts at ``src``'s first argument and ends at
``dst``'s (or at what the model returns, for a section to the output).  The
section is then every node on a path from the one to the other, in the
trace's order.  It may start or end anywhere inside a module of the user's
(an attention block whose last position is sliced off outside it, two
blocks in a ``ModuleList``), and it is only what the model itself computes.

The section reads the model's other inputs (a mask passed to ``forward``,
token ids for a skip connection) per batch, as the model does; a dict
batch's fields are the trace's inputs, not the forward's defaults.  A
section whose start is read outside ``src`` too (no cut), or that changes
a value in place, is not extracted, nor is whatever fx cannot trace; the
reasons are returned as sentences, for the fit's plan.
"""

import builtins
import operator
from dataclasses import dataclass, field

import torch
from torch import fx

from .._model.failures import Exploratory
from .tracing import LeafTracer, defaults, hooked, quietly, trace

#: Node targets whose values describe a tensor (its shape, dtype) rather than
#: being one: they carry no derivative.
METADATA_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "layout"})
METADATA_METHODS = frozenset({"size", "dim", "numel", "get_device"})
METADATA_OPERATIONS = frozenset(
    {torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default, torch.ops.aten.sym_stride.int}
)


class BoundaryTracer(LeafTracer):
    """A tracer that inlines the user's modules and records the first argument of the
    calls of the ``watched`` modules (by qualified name)."""

    def __init__(self, watched):
        super().__init__(())
        self.calls = {name: [] for name in watched}
        self.inside = {name: set() for name in watched}

    def call_module(self, m, forward, args, kwargs):
        name = None
        if not self._foreign():
            try:
                name = self.path_of_module(m)
            except NameError:
                name = None
        if name not in self.calls:
            return super().call_module(m, forward, args, kwargs)
        self.calls[name].append(args[0] if args else None)
        before = set(self.graph.nodes)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.inside[name] |= set(self.graph.nodes) - before


@dataclass(frozen=True)
class SectionGraph:
    """The nodes of one section, in the order they run.

    Attributes
    ----------
    nodes : tuple of torch.fx.Node
        Every node the section's end needs, its start excluded.
    start, end : torch.fx.Node
        The node of ``src``'s input, and of the section's output.
    dependent : frozenset of torch.fx.Node
        The nodes whose tensor values depend on the start (the others are
        constants of the section: parameters, masks, shapes).
    constants : dict
        Graph inputs that are the model's parameters, buffers or constants
        (an export's), each with a getter of its value.
    inputs : dict
        Graph inputs that are the model's (a mask, token ids), each with the
        name of its batch field; ``""`` for the first input, which a tensor
        batch is.  The section reads them as the model does, as constants.
    """

    nodes: tuple
    start: object
    end: object
    dependent: frozenset
    constants: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)

    def input_value(self, node, x):
        """The value of graph input ``node`` in batch ``x`` (a tensor or a dict)."""
        name = self.inputs[node]
        if isinstance(x, dict):
            return x[name or node.target]
        if name:
            raise KeyError(f"a tensor batch has no field {name!r}")
        return x


#: How :func:`section_graph` begins its answer where fx fails on the model.
FX_FAILS = "torch.fx cannot trace the model"


def section_graph(model, section, forward_kwargs=None, fields=()):
    """The :class:`SectionGraph` of ``section`` of ``model``, or a sentence saying why none.

    ``forward_kwargs`` that are no tensors are traced as constants, as the
    model is called.  ``fields``: the names of a dict batch's fields, which
    are the graph's inputs (a mask among them is read per batch), not the
    forward's defaults.  Tracing runs arbitrary user code: any failure of fx
    on it means "no graph", but out of memory, ``KeyboardInterrupt`` and
    ``SystemExit`` propagate.
    """
    with Exploratory() as tracing:
        return quietly(_extract, model, section, dict(forward_kwargs or {}), set(fields))
    return f"{FX_FAILS} ({type(tracing.error).__name__}: {first_line(tracing.error)})"


def first_line(exc):
    """The first line of an exception's message, at most 120 characters, for the plan."""
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else "no message"


def _extract(model, section, forward_kwargs, fields):
    concrete = defaults(model.forward)
    if concrete is None:
        return f"{FX_FAILS}: its forward takes arguments without defaults besides its input"
    if any(isinstance(v, torch.Tensor) for v in forward_kwargs.values()):
        return "forward_kwargs holds tensors, which a trace would take for constants"
    unknown = sorted(set(forward_kwargs) - set(concrete))
    if unknown:
        return f"the model's forward takes no {unknown}"
    concrete.update(forward_kwargs)
    for name in fields:  # the batch gives them: inputs of the graph
        concrete.pop(name, None)
    if hooked(model):
        return "the model carries forward hooks, which torch.fx does not see"
    watched = [section.src] if section.to_output else [section.src, section.dst]
    tracer, kept = BoundaryTracer(watched), {}
    graph = trace(tracer, model, concrete, kept)
    ends = {}
    for name, calls in tracer.calls.items():
        if len(calls) != 1 or not isinstance(calls[0], fx.Proxy):
            return f"{name!r} is called {len(calls)} times, not once on a tensor"
        ends[name] = calls[0].node
    end = _output(graph) if section.to_output else ends[section.dst]
    if end is None:
        return "the model does not return one tensor"
    constants = {
        n: (lambda value=kept[n.target]: value)
        for n in graph.nodes
        if n.op == "get_attr" and n.target in kept
    }  # tensors made in the forward, which fx keeps on the model and tracing removed
    start, src = ends[section.src], section.src
    return between(graph, start, end, constants, src=src, inside=tracer.inside[src])


def _output(graph):
    out = [n for n in graph.nodes if n.op == "output"][0]
    value = out.args[0]
    return value if isinstance(value, fx.Node) else None


def between(graph, start, end, constants=None, *, src, inside):
    """The :class:`SectionGraph` from ``start`` (what module ``src`` receives) to ``end``,
    or why it is not one.

    ``inside``: the nodes of ``src``'s call; the start must be read there
    alone (a cut).  ``constants``: graph inputs that are no input of the
    model (an export's parameters), with getters of their values.  The other
    graph inputs are the model's: the first is the batch (or its field of
    that name), the others fields of a dict batch.
    """
    if any(user not in inside for user in start.users):
        return f"what {src!r} receives is read outside it too (not a cut)"
    constants = constants or {}
    needed, stack = set(), [end]
    while stack:
        node = stack.pop()
        if node in needed or node is start:
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and n not in constants]
    inputs = {n: "" if i == 0 else n.target for i, n in enumerate(placeholders) if n in needed}
    for node in graph.nodes:
        if in_place(node) and node.args and node.args[0] in needed | {start}:
            return f"the operation {node.target!r} changes a value of the section in place"
    order = [n for n in graph.nodes if n in needed]
    dependent = {start}
    for node in order:
        if any(i in dependent for i in node.all_input_nodes) and not is_metadata(node):
            dependent.add(node)
    if end not in dependent:
        return "the section's output does not depend on its start"
    used = {node: get for node, get in constants.items() if node in needed}
    dependent = frozenset(dependent - {start})
    return SectionGraph(tuple(order), start, end, dependent, used, inputs)


#: Operators that change their first argument.
IN_PLACE_OPERATORS = frozenset(
    {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.imatmul,
     operator.ipow, operator.setitem}
)  # fmt: skip


def in_place(node):
    """Whether ``node`` changes its first argument: ``x.mul_(2)``, ``x += y``, ``x[i] = v``,
    ``inplace=True``, an ATen operation that mutates."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op != "call_function":
        return False
    schema = getattr(node.target, "_schema", None)
    if schema is not None and schema.is_mutable:
        return True
    return node.target in IN_PLACE_OPERATORS or bool(node.kwargs.get("inplace"))


def is_metadata(node):
    """Whether ``node`` reads a tensor's shape, dtype or device (no derivative flows)."""
    if node.op == "call_function" and node.target in METADATA_OPERATIONS:
        return True
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] in METADATA_ATTRIBUTES
    if node.op == "call_method":
        return node.target in METADATA_METHODS
    if node.op == "call_function" and node.target in (builtins.len, operator.getitem):
        first = node.args[0]
        return isinstance(first, fx.Node) and is_metadata(first)  # x.shape[1]
    return False
