"""Running a user's model to read, substitute and stop at node layers.

A *node layer* is the input (``capture="input"``) or the output
(``capture="output"``) of a named submodule.  Everything here works through
temporary hooks and :func:`torch.func.functional_call`, so the user's module
keeps its parameters, dtype, device, ``requires_grad`` flags and hooks.
"""

import contextlib
import difflib
from dataclasses import dataclass

import torch
from torch.func import functional_call

from ._utils import max_relative_error


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once everything is read."""


@contextlib.contextmanager
def eval_mode(model):
    """Put ``model`` in eval mode and restore every submodule's flag afterwards.

    Eval mode matters for the method: dropout and batch statistics would couple
    samples and make the Jacobians random.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        # Set the attribute directly: ``module.train(flag)`` would recurse and
        # overwrite the children's own flags.
        for module, flag in flags:
            module.training = flag


def resolve_module(model, name, what="layer"):
    """Return the submodule called ``name``, or raise with close names."""
    modules = dict(model.named_modules())
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a module name (str), got {name!r}")
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Unknown {what} {name!r}: the model has no submodule of that name.{hint} "
            "Names come from model.named_modules()."
        )
    return modules[name]


@dataclass(frozen=True)
class NodeLayer:
    """A node layer found in the model: its name, module and activation shape.

    ``shape`` is the per-sample activation shape ``(*positions, d)``.
    """

    name: str
    module: torch.nn.Module
    shape: tuple

    @property
    def n_features(self):
        return self.shape[-1]

    @property
    def n_positions(self):
        n = 1
        for size in self.shape[:-1]:
            n *= size
        return n


class ModelRunner:
    """Run ``model`` in a chosen dtype and device without converting it.

    Parameters and floating buffers are detached copies in ``dtype`` on
    ``device`` (no copy when they already match), passed through
    :func:`torch.func.functional_call`.  Hooks registered on submodules still
    fire, and gradients never reach the user's parameters.

    Parameters
    ----------
    model : torch.nn.Module
    device : torch.device
    dtype : torch.dtype
    capture : {"input", "output"}
        Whether a node layer is a module's (first positional) input or output.
    """

    def __init__(self, model, device, dtype, capture="input"):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.capture = capture
        # Per section: may the batch grow at the cut (see ``section``)?
        self._grow_at_cut = {}
        tensors = dict(model.named_parameters())
        tensors.update(model.named_buffers())
        self.state = {
            name: t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            for name, t in tensors.items()
        }

    # -- the one primitive ---------------------------------------------------------
    def run(self, x, reads=(), substitute=None, need_output=True, order=None):
        """One forward pass with optional reads, one substitution and an early stop.

        Parameters
        ----------
        x : torch.Tensor
            A batch of model inputs.
        reads : sequence of torch.nn.Module
            Node-layer modules whose activations to return (first call only).
        substitute : (torch.nn.Module, torch.Tensor) or None
            Replace that node layer's activations by the tensor.
        need_output : bool
            When False the pass stops as soon as every read is taken.
        order : list or None
            If given, the id of each read module is appended at every call,
            which reveals the call order and repeated calls.

        Returns
        -------
        reads : list of torch.Tensor
        output : torch.Tensor or None
        """
        captured = {}
        handles = []

        def record(module, value):
            if order is not None:
                order.append(id(module))
            if id(module) not in captured:
                # A copy: the model may later change its own tensor in place
                # (ReLU(inplace=True)); clone keeps the autograd graph.
                captured[id(module)] = value.clone()
            if not need_output and len(captured) == len(reads):
                raise _StopForward

        try:
            for module in reads:
                handles.append(self._hook(module, record=record))
            if substitute is not None:
                handles.append(self._hook(substitute[0], replace=substitute[1]))
            try:
                output = functional_call(self.model, self.state, (x,))
            except _StopForward:
                output = None
        finally:
            for handle in handles:
                handle.remove()
        missing = [m for m in reads if id(m) not in captured]
        if missing:
            raise ValueError(
                "The model's forward pass never called node layer module(s) "
                f"{[type(m).__name__ for m in missing]}; choose modules the forward pass uses."
            )
        return [captured[id(m)] for m in reads], output

    def _hook(self, module, record=None, replace=None):
        if self.capture == "input":

            def pre_hook(mod, args):
                if not args or not torch.is_tensor(args[0]):
                    raise ValueError(
                        f"capture='input' needs a tensor as the first positional input "
                        f"of {type(mod).__name__}; try capture='output'"
                    )
                if replace is not None:
                    # The model gets a copy, so in-place ops cannot touch the
                    # caller's tensor (often a leaf that requires grad).
                    return (replace.clone(), *args[1:])
                record(mod, args[0])
                return None

            return module.register_forward_pre_hook(pre_hook)

        def hook(mod, args, output):
            if not torch.is_tensor(output):
                raise ValueError(
                    f"capture='output' needs a tensor output, but {type(mod).__name__} "
                    f"returned {type(output).__name__}; try capture='input' of the next module"
                )
            if replace is not None:
                return replace.clone()  # a copy, as for inputs
            record(mod, output)
            return None

        return module.register_forward_hook(hook)

    # -- conveniences ------------------------------------------------------------------
    def read(self, x, modules):
        """Activations of ``modules`` on ``x``, stopping after the last one."""
        return self.run(x, reads=modules, need_output=False)[0]

    def section(self, x, src, f, dst=None):
        """Activations at ``dst`` (model output if None) with ``src``'s replaced by ``f``.

        ``f`` may stack ``c`` copies of the batch (``f.shape[0] == c * n``,
        copy-major), as integrated gradients and edge ablation do.  Running
        the model on ``x`` repeated ``c`` times always works but recomputes
        everything before ``src`` ``c`` times.  So the runner first tries to
        let the batch grow at the cut (the model runs on ``x`` once and
        ``src`` receives all copies), checks it once per section against the
        repeated run, and keeps it only where both agree.  They can disagree,
        or the fast run fail, when code after ``src`` reuses the batch size
        or tensors computed from ``x``.
        """
        copies = f.shape[0] // x.shape[0]
        if copies == 1:
            return self._section(x, src, f, dst)
        key = (id(src), None if dst is None else id(dst))
        verdict = self._grow_at_cut.get(key)
        if verdict is not False:
            try:
                fast = self._section(x, src, f, dst)
            except torch.OutOfMemoryError:
                raise  # the repeated run would need even more memory
            except (RuntimeError, ValueError, IndexError):
                fast = None
            if fast is not None and fast.shape[0] == f.shape[0]:
                if verdict:
                    return fast
                with torch.no_grad():
                    safe = self._section(self._repeat(x, copies), src, f.detach(), dst)
                tol = 1e-9 if f.dtype == torch.float64 else 1e-4
                if max_relative_error(fast.detach(), safe) <= tol:
                    self._grow_at_cut[key] = True
                    return fast
            self._grow_at_cut[key] = False
        return self._section(self._repeat(x, copies), src, f, dst)

    @staticmethod
    def _repeat(x, copies):
        return x.repeat(copies, *([1] * (x.ndim - 1)))  # copy-major, like the stacked f

    def _section(self, x, src, f, dst):
        if dst is None:
            return self.run(x, substitute=(src, f))[1]
        return self.run(x, reads=[dst], substitute=(src, f), need_output=False)[0][0]


def _shape_error(name, value, n):
    if not torch.is_tensor(value):
        return f"{name} produced {type(value).__name__}, not a tensor"
    if value.ndim < 2 or value.shape[0] != n:
        return (
            f"{name} has activations of shape {tuple(value.shape)} for a batch of {n}; "
            "a node layer needs shape (n_samples, ..., n_features)"
        )
    if not value.is_floating_point():
        return (
            f"{name} has activations of dtype {value.dtype}; a node layer needs floating "
            "activations (choose a layer after the embedding)"
        )
    return None


def inspect_node_layers(runner, x, names):
    """Find the node layers, check call order and shapes on a probe batch.

    Returns
    -------
    nodes : list of NodeLayer
    output_shape : tuple
        Per-sample shape of the model output.
    """
    modules = [resolve_module(runner.model, name) for name in names]
    if len(set(map(id, modules))) != len(modules):
        raise ValueError(f"Node layers must be distinct modules, got {list(names)}")
    order = []
    try:
        reads, output = runner.run(x, reads=modules, need_output=True, order=order)
    except (RuntimeError, IndexError, TypeError) as exc:
        raise ValueError(
            f"The model failed on a batch of inputs of shape {tuple(x.shape)}: {exc}"
        ) from exc
    by_id = {id(m): n for m, n in zip(modules, names)}
    calls = [by_id[i] for i in order]
    repeated = sorted({n for n in calls if calls.count(n) > 1})
    if repeated:
        raise ValueError(
            f"Node layer(s) {repeated} are called more than once in one forward pass; "
            "a node layer must be a module the model calls exactly once"
        )
    if calls != list(names):
        raise ValueError(
            f"Layers must be given in forward order: got {list(names)}, "
            f"but the model calls them in the order {calls}"
        )
    n = x.shape[0]
    nodes = []
    for name, module, value in zip(names, modules, reads):
        problem = _shape_error(f"Node layer {name!r}", value, n)
        if problem:
            raise ValueError(problem)
        nodes.append(NodeLayer(name, module, tuple(value.shape[1:])))
    problem = _shape_error("The model output", output, n)
    if problem:
        raise ValueError(problem)
    return nodes, tuple(output.shape[1:])


def check_cut(runner, x, src, dst, dst_name, rng):
    """Raise unless ``dst`` depends on the model input only through ``src``.

    Runs the section with the real activations of ``src`` and with the same
    activations permuted across samples.  At a cut the second output is the
    first one permuted; a path that bypasses ``src`` (a residual connection)
    breaks that.  A third run on the first half of the batch alone catches
    samples that interact symmetrically (batch statistics), which a
    permutation cannot see.
    """
    n = x.shape[0]
    if n < 2:
        return
    with torch.no_grad():
        (f,) = runner.read(x, [src.module])
        # A cyclic shift by a random offset is a permutation with no fixed point.
        perm = torch.roll(torch.arange(n, device=x.device), int(rng.randint(1, n)))
        out = runner.section(x, src.module, f, None if dst is None else dst.module)
        out_perm = runner.section(x, src.module, f[perm], None if dst is None else dst.module)
        half = n // 2
        out_half = runner.section(
            x[:half], src.module, f[:half], None if dst is None else dst.module
        )
    rtol = 1e-8 if out.dtype == torch.float64 else 1e-3
    coupling = max_relative_error(out_half, out[:half])
    if coupling > rtol:
        raise ValueError(
            f"Samples interact within a batch between layer {src.name!r} and {dst_name}: "
            "the same samples give different outputs in a smaller batch (batch statistics, "
            "e.g. BatchNorm with track_running_stats=False). LIB needs per-sample "
            f"computations (relative mismatch {float(coupling):.2e})."
        )
    error = max_relative_error(out_perm, out[perm])
    if error > rtol:
        raise ValueError(
            f"Layer {src.name!r} is not a cut: {dst_name} depends on the model input "
            f"through a path that bypasses {src.name!r} (for example a residual "
            "connection), or samples interact within a batch. Choose node layers that "
            f"carry the whole residual stream (relative mismatch {float(error):.2e})."
        )
