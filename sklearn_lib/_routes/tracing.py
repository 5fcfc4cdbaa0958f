"""Reading a user's model with ``torch.fx``: traces that leave the model as it was.

The structural closed forms (:mod:`~sklearn_lib._routes.forms`) recognise a
section from its code: the ``src`` module's own forward, traced, and the
whole model traced with ``src`` and ``dst`` as leaves, which shows that the
section is exactly that forward (:func:`feeds`).  Any failure of fx on user
code means "not recognised", never an error.
"""

import inspect
import threading
import warnings

from torch import fx


def quietly(detect, *args, **kwargs):
    """``detect(*args, **kwargs)``, silenced: what fx (or torch.export) says of user code
    is no news."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return detect(*args, **kwargs)


#: fx patches ``torch.nn.Module.__call__`` and ``__getattr__`` process-wide while
#: it traces and restores them after; two traces at once in two threads could
#: restore each other's patches and leave one installed for good.
TRACE_LOCK = threading.Lock()


class LeafTracer(fx.Tracer):
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
        with TRACE_LOCK:
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


def trace(tracer, root, concrete_args=None, kept=None):
    """``tracer``'s graph of ``root``, leaving ``root`` as it was.

    fx stores tensors that are no attribute of the model on the root as
    ``_tensor_constant*``; they are removed again, so that tracing never
    changes the session's model (into the dict ``kept``, where given, for
    whoever runs the graph).  A forward that assigns its attributes
    (``self.calls += 1``, ``self.n = x.shape[0]``) would leave fx's symbolic
    values in them: every module's attributes, parameters, buffers and
    submodules are put back as they were, also when the trace fails.  (What
    a forward changes inside an attribute, appending to a list of its own,
    is not undone.)
    """
    before = _attributes(root)
    try:
        return tracer.trace(root, concrete_args)
    finally:
        added = set(vars(root)) - set(before[0][1])
        for name in added:
            if kept is not None:
                kept[name] = vars(root)[name]
        _put_back(before)
        _let_go(tracer)


def _let_go(tracer):
    """Drop the tracer's references to the model: fx's tracer sits in reference cycles
    (with its patches and graph), which would keep the model's copy, a language model's
    weights, until the garbage collector's next run."""
    for name in ("root", "submodule_paths", "tensor_attrs"):
        if hasattr(tracer, name):
            setattr(tracer, name, None)


_INNER = ("_parameters", "_buffers", "_modules")


def _attributes(root):
    """Every module's attributes, and copies of its dicts of parameters, buffers and
    submodules (the root's first)."""
    return [
        (module, dict(vars(module)), {name: dict(vars(module)[name]) for name in _INNER})
        for module in root.modules()
    ]


def _put_back(attributes):
    for module, saved, inner in attributes:
        vars(module).clear()
        vars(module).update(saved)
        for name, items in inner.items():
            vars(module)[name].clear()
            vars(module)[name].update(items)


def defaults(forward):
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


def hooked(module):
    """Whether ``module`` or a submodule carries forward hooks (which fx does not see)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def feeds(model, section):
    """Whether ``section.src``, called once on one argument, gives its end's input and nothing else.

    The end is ``section.dst``'s first argument, or the model's return value
    for a section to the output.  Hooks that fx would not see (user hooks on
    ``src``'s modules, pre-hooks on ``dst``) disqualify.
    """
    src, dst = section.src, section.dst
    concrete = defaults(model.forward)
    src_module = model.get_submodule(src)
    if concrete is None or hooked(src_module):
        return False
    if not section.to_output and model.get_submodule(dst)._forward_pre_hooks:
        return False
    leaves = {src} if section.to_output else {src, dst}
    graph = trace(LeafTracer(leaves), model, concrete)
    calls = [n for n in graph.nodes if n.op == "call_module"]
    at_src = [n for n in calls if n.target == src]
    if len(at_src) != 1 or len(at_src[0].args) != 1 or at_src[0].kwargs:
        return False
    node = at_src[0]
    if len(node.users) != 1:  # what reaches dst must be src's output unchanged, and only it
        return False
    (user,) = node.users
    if section.to_output:
        return user.op == "output" and user.args[0] is node
    at_dst = [n for n in calls if n.target == dst]
    return at_dst == [user] and bool(user.args) and user.args[0] is node
