"""A section of a model that ``torch.fx`` cannot trace, from ``torch.export``.

``torch.fx`` fails on Hugging Face's models ("co_varnames is too small" on
``GPT2Attention``); ``torch.export`` traces them (a tiny GPT-2 in about a
second) at the ATen level: ``addmm``, ``view``, ``layer_norm``,
``softmax``, ``scaled_dot_product_attention``.  The exported graph holds
every operation of one call, on inputs of the shapes of one batch, and
says for each node which module call it belongs to (``nn_module_stack``).
So a section starts at the one tensor of the source module's width that
enters the module from outside it, and ends at the one that enters ``dst``
(or at what the model returns).  Parameters, buffers and constants are
graph inputs read from the model; the model's own inputs (a mask, token
ids) are read per batch, as the model reads them.

Every size of the batch is exported dynamic where the model allows, so one
export serves batches of every size and length; a size the export fixes
(a model that branches on it) makes batches of other sizes export anew.
Exports are kept per model: a fit exports once or a few times.
"""

import contextlib
import inspect
import logging
import math
import operator
import sys
import threading
import weakref

import torch
from torch import fx

from .._model.failures import Exploratory
from .._model.inputs import is_dict
from .section_graph import between, first_line
from .tracing import quietly

#: Exported programs (or why none) per model and batch shape; at most this many per model.
_PROGRAMS = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
KEPT_SHAPES = 8


def exported_section(model, section, x, forward_kwargs):
    """The :class:`SectionGraph` of ``section`` on inputs shaped as ``x``, or why none.

    Exporting runs arbitrary user code: its failures are the sentence, but
    out of memory, ``KeyboardInterrupt`` and ``SystemExit`` propagate.
    """
    program = _program(model, x, forward_kwargs)
    if isinstance(program, str):
        return program
    graph = program.graph_module.graph
    constants = _constants(program, model)
    start = _boundary(graph, section.src, section.src_shape, constants)
    if isinstance(start, str):
        return start
    end = (
        _output(graph)
        if section.to_output
        else _boundary(graph, section.dst, section.dst_shape, constants)
    )
    if isinstance(end, str) or end is None:
        return end or "the model does not return one tensor"
    inside = _scope(graph, section.src)
    return between(graph, start, end, constants, src=section.src, inside=inside)


def _shapes(x):
    fields = x.items() if is_dict(x) else [("", x)]
    return tuple((key, tuple(value.shape), value.dtype, str(value.device)) for key, value in fields)


def _fits(pattern, shapes):
    """Whether batch ``shapes`` fit an export's ``pattern``: each size equal, or within
    the range ``(lower, upper)`` the export kept it dynamic over."""
    if len(pattern) != len(shapes):
        return False
    for (key, dims, dtype, device), (key_, dims_, dtype_, device_) in zip(pattern, shapes):
        same = (key, dtype, device, len(dims)) == (key_, dtype_, device_, len(dims_))
        if not same or not all(_within(d, size) for d, size in zip(dims, dims_)):
            return False
    return True


def _within(dim, size):
    if isinstance(dim, tuple):
        return dim[0] <= size <= dim[1]
    return dim == size


def _program(model, x, forward_kwargs):
    """The model exported for batches shaped as ``x`` (kept), or a sentence saying why not.

    Exported with every size dynamic where the model allows (``Dim.AUTO``): one
    export then serves every batch size and length; a size the export fixes
    is part of what a later batch must match.
    """
    shapes, kwargs_key = _shapes(x), repr(sorted(forward_kwargs.items()))
    with _LOCK:
        kept = _PROGRAMS.setdefault(model, [])
        for pattern, key, program in kept:
            if key == kwargs_key and _fits(pattern, shapes):
                return program
    program = _export(model, x, forward_kwargs)
    pattern = shapes if isinstance(program, str) else _pattern(program, x)
    with _LOCK:
        if len(kept) >= KEPT_SHAPES:
            kept.pop(0)
        kept.append((pattern, kwargs_key, program))
    return program


def _export(model, x, forward_kwargs):
    args, kwargs = ((), {**x, **forward_kwargs}) if is_dict(x) else ((x,), dict(forward_kwargs))
    failure = None
    for dynamic in (_dynamic(model, x, forward_kwargs), None):
        # Any failure on user code means "no graph"; out of memory propagates.
        with Exploratory() as exporting, torch.no_grad(), _torch_output_silenced():
            return quietly(
                torch.export.export, model, args, kwargs, dynamic_shapes=dynamic, strict=False
            )
        failure = failure or exporting.error
    return f"torch.export cannot trace the model ({type(failure).__name__}: {first_line(failure)})"


class _OtherThreads(logging.Filter):
    """Lets through the records of every thread but the one that made it."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record):
        return record.thread != self.thread


class _QuietStderr:
    """``sys.stderr`` for every thread but the one that made it."""

    def __init__(self, stream):
        self.stream, self.thread = stream, threading.get_ident()

    def write(self, text):
        return len(text) if threading.get_ident() == self.thread else self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


#: One export at a time swaps ``sys.stderr`` (see :func:`_torch_output_silenced`).
_EXPORTING = threading.Lock()


@contextlib.contextmanager
def _torch_output_silenced():
    """torch's own output for this thread left out: a failed export logs and prints its
    partial graph to stderr; the plan says why the export was given up, in one line."""
    with _EXPORTING, _torch_logs_silenced():
        stream, sys.stderr = sys.stderr, _QuietStderr(sys.stderr)
        try:
            yield
        finally:
            sys.stderr = stream


@contextlib.contextmanager
def _torch_logs_silenced():
    """torch's log lines of this thread left out (the handlers of torch's loggers)."""
    loggers = [logging.getLogger("torch")] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("torch.") and isinstance(logger, logging.Logger)
    ]
    handlers = {handler for logger in loggers for handler in logger.handlers}
    quiet = _OtherThreads()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _dynamic(model, x, forward_kwargs):
    """Every size of the batch's tensors dynamic (``Dim.AUTO``), the keyword arguments not."""
    auto = torch.export.Dim.AUTO

    def sizes(value):
        return {i: auto for i in range(value.ndim)} if value.ndim else None

    if is_dict(x):
        dynamic = {key: sizes(value) for key, value in x.items()}
    else:
        first = next(iter(inspect.signature(model.forward).parameters))
        dynamic = {first: sizes(x)}
    return {**dynamic, **dict.fromkeys(forward_kwargs)}


def _pattern(program, x):
    """The batch shapes ``program`` takes: each size fixed, or the range ``(lower, upper)``
    of a size the export left dynamic (a model that branches on a size narrows it)."""
    values = {n.name: n.meta.get("val") for n in program.graph_module.graph.nodes}
    found = []
    for key, dims, dtype, device in _shapes(x):
        value = values.get(key) if key else None
        if value is None and not key:  # a tensor batch: the first input
            spec = program.graph_signature.user_inputs
            value = values.get(spec[0]) if spec else None
        sizes = dims
        if isinstance(value, torch.Tensor):
            sizes = tuple(_range(program, d, s) for d, s in zip(dims, value.shape))
        found.append((key, sizes, dtype, device))
    return tuple(found)


def _range(program, size, symbolic):
    """``(lower, upper)`` of a dynamic size, or the size itself where it is fixed."""
    if isinstance(symbolic, int):
        return size
    found = program.range_constraints.get(symbolic.node.expr)
    if found is None:
        return size  # a size derived from others: taken as fixed
    try:
        upper = int(found.upper)
    except Exception:  # unbounded: sympy's infinity has no int
        upper = math.inf
    return int(found.lower), upper


def _constants(program, model):
    """Each graph input that is a parameter, buffer or constant, with a getter of its value."""
    signature = program.graph_signature
    named = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    lifted = dict(signature.inputs_to_lifted_tensor_constants)
    found = {}
    for node in program.graph_module.graph.nodes:
        if node.op != "placeholder":
            continue
        if node.name in named:
            found[node] = _reader(model, named[node.name])
        elif node.name in lifted:
            value = program.constants[lifted[node.name]]
            found[node] = lambda value=value: value
    return found


def _reader(model, name):
    """A getter of the model's parameter or buffer ``name`` (read at each call)."""
    return lambda: operator.attrgetter(name)(model)


def _paths(node):
    stack = node.meta.get("nn_module_stack") or {}
    return {path for path, _ in stack.values()}


def _scope(graph, name):
    """The nodes of the calls of module ``name`` (and of its submodules)."""
    return {n for n in graph.nodes if any(p == name or p.startswith(name + ".") for p in _paths(n))}


def _boundary(graph, name, shape, constants):
    """The one floating tensor of per-sample ``shape`` that enters module ``name`` (no
    parameter: a weight may have that shape too)."""
    inside = _scope(graph, name)
    if not inside:
        return f"no operation of the export runs in {name!r}"
    found = []
    for node in graph.nodes:
        if node in inside:
            found += [a for a in node.all_input_nodes if a not in inside and a not in found]
    found = [a for a in found if a not in constants and _per_sample(a, shape)]
    if len(found) != 1:
        return f"{len(found)} tensors of its width enter {name!r} in the export, not one"
    return found[0]


def _per_sample(node, shape):
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or shape is None:
        return False
    return tuple(value.shape[1:]) == tuple(shape)


def _output(graph):
    out = [n for n in graph.nodes if n.op == "output"][0]
    values = [v for v in out.args[0] if isinstance(v, fx.Node)]
    return values[0] if len(values) == 1 else None
