"""Forward passes through a model the package owns: reads, substitutions, early stops.

A *node layer* is the input (``capture="input"``) or the output
(``capture="output"``) of a named submodule.  :class:`ModelRunner` reads and
replaces node-layer activations with hooks that live for one forward pass
and are removed in ``finally``.  It runs the module it is given as it is: the
caller (:class:`~sklearn_lib._model.session.ModelSession`) hands it a private copy
of the user's model, so no hook, dtype or buffer update ever reaches the
user's own module.
"""

import difflib
from collections.abc import Mapping

import torch

from .._core.nodes import OUTPUT_NODE
from .._core.numerics import max_relative_error, tolerances
from .failures import Exploratory, batch_notes, is_fatal, model_failure, reason
from .inputs import call_model, device_of, n_rows, repeat_rows, take_rows, without_padding


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once everything is read."""


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


class ModelRunner:
    """Run a module with reads and substitutions at node layers named by module names.

    Parameters
    ----------
    model : torch.nn.Module
        Run as it is (no dtype or device conversion, no mode change).
    capture : {"input", "output"}
        Whether a node layer is a module's first positional input (its
        other arguments and keyword arguments pass through unchanged) or its
        output (the first item of a returned tuple; the rest passes on).
    output : None, str, int or callable
        Which tensor of what the model returns is the output node (see
        :func:`select_output`).
    forward_kwargs : dict or None
        Keyword arguments of every call of the model.
    feature_axis : int, dict or None
        The axis of a node layer's activations (batch axis 0) that holds the
        features.  Reads return activations with it moved last, ``(n,
        *positions, d)``, and substitutions take that layout and move it
        back, so everything after the runner sees features last.  None:
        the last axis already (activations of 4 or more dimensions are then
        refused by :func:`inspect_node_layers`, which cannot tell channels-
        first from channels-last).  An int applies to every node layer and
        to the model output; a dict maps node-layer names (and ``"output"``)
        to their axes, the others keeping None.  2-D activations have one
        feature axis: a 2-D node layer takes only 1 or -1 (another value is
        refused, naming it), and a 2-D model output keeps its own under an
        int given for the node layers' maps.
    """

    def __init__(self, model, capture="input", output=None, forward_kwargs=None, feature_axis=None):
        self.model = model
        self.capture = capture
        self.output = output
        self.forward_kwargs = dict(forward_kwargs or {})
        self.feature_axis = feature_axis
        self._modules = dict(model.named_modules())
        # What errors of the model name as the batch it failed on.
        self.where = "the probe batch"
        # Per section: may the batch grow at the cut (see ``section``)?
        self._grow_at_cut = {}

    def module(self, name):
        """The submodule of the node layer ``name``."""
        if isinstance(name, str) and name in self._modules:
            return self._modules[name]
        return resolve_module(self.model, name)  # raises, naming close matches

    # -- the one primitive ---------------------------------------------------------
    def run(self, x, reads=(), substitute=None, need_output=True, order=None):
        """One forward pass with optional reads, one substitution and an early stop.

        Parameters
        ----------
        x : torch.Tensor or dict of torch.Tensor
            A batch of model inputs (see :mod:`~sklearn_lib._model.inputs`).
        reads : sequence of str
            Node layers whose activations to return (first call only).
        substitute : (str, torch.Tensor) or None
            Replace that node layer's activations by the tensor.
        need_output : bool
            When False the pass stops as soon as every read is taken.
        order : list or None
            If given, the name of each read node layer is appended at every
            call, which reveals the call order and repeated calls.

        Returns
        -------
        reads : list of torch.Tensor
        output : torch.Tensor or None
        """
        captured = {}

        def record(name, value):
            if order is not None:
                order.append(name)
            if name not in captured:
                # A copy: the model may later change its own tensor in place
                # (ReLU(inplace=True)); clone keeps the autograd graph.
                captured[name] = self.features_last(value, name).clone()
            if not need_output and len(captured) == len(reads):
                raise _StopForward

        handles = [self._hook(name, record=record) for name in reads]
        try:
            if substitute is not None:
                name, value = substitute
                handles.append(self._hook(name, replace=self.features_back(value, name)))
            output = self._forward(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in reads if name not in captured]
        if missing:
            raise ValueError(
                f"The model's forward pass never called node layer(s) {missing}; choose "
                "modules the forward pass uses."
            )
        return [captured[name] for name in reads], output

    def _forward(self, x):
        """The model's output node on ``x``, features last; None when a hook stopped the pass."""
        with batch_notes(x, self.where), model_failure(x, self.where, self.model):
            try:
                raw = call_model(self.model, x, self.forward_kwargs)
            except _StopForward:  # every read taken: not an error
                return None
        return self.features_last(select_output(raw, self.output), OUTPUT_NODE)

    def _hook(self, name, record=None, replace=None):
        module = self.module(name)
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
                record(name, args[0])
                return None

            return module.register_forward_pre_hook(pre_hook)

        def hook(mod, args, output):
            # A block that returns a tuple (hidden states, attention weights,
            # a cache) has its first item as the node layer; the rest passes on.
            rest = None
            if isinstance(output, tuple) and output and torch.is_tensor(output[0]):
                output, rest = output[0], output[1:]
            if not torch.is_tensor(output):
                raise ValueError(
                    f"capture='output' needs a tensor output (or a tuple whose first item is "
                    f"one), but {type(mod).__name__} returned {type(output).__name__}; try "
                    "capture='input' of the next module"
                )
            if replace is not None:
                replaced = replace.clone()  # a copy, as for inputs
                return replaced if rest is None else (replaced, *rest)
            record(name, output)
            return None

        return module.register_forward_hook(hook)

    # -- the feature axis --------------------------------------------------------------
    def axis_of(self, node):
        """The ``feature_axis`` given for ``node`` (a node layer or ``"output"``), or None."""
        if isinstance(self.feature_axis, dict):
            return self.feature_axis.get(node)
        return self.feature_axis

    def features_last(self, value, node):
        """``value`` with ``node``'s feature axis moved last (unchanged where none is given)."""
        axis = self._axis(value, node)
        return value if axis is None else value.movedim(axis, -1)

    def features_back(self, value, node):
        """Features-last activations of ``node`` in the model's own layout again."""
        axis = self._axis(value, node)
        return value if axis is None else value.movedim(-1, axis)

    def _axis(self, value, node):
        """The feature axis of ``node``'s ``value`` when it must move, else None."""
        axis = self.axis_of(node)
        if axis is None or not torch.is_tensor(value) or value.ndim < 2:
            return None  # not activations (a shape problem, said elsewhere)
        if value.ndim == 2 and node == OUTPUT_NODE and not isinstance(self.feature_axis, dict):
            return None  # one axis for the node layers' maps; a 2-D output has one feature axis
        if not -value.ndim < axis < value.ndim or axis in (0, -value.ndim):
            what = "the model output" if node == OUTPUT_NODE else f"node layer {node!r}"
            raise ValueError(
                f"feature_axis={axis} does not name a feature axis of the activations of "
                f"{what}, of shape {tuple(value.shape)}: it must be an axis other than the "
                f"batch axis 0, in 1..{value.ndim - 1} or -{value.ndim - 1}..-1 (a dict "
                "feature_axis gives each node layer and 'output' its own)"
            )
        axis %= value.ndim
        return None if axis == value.ndim - 1 else axis

    def check_feature_axes(self, names):
        """Refuse a dict ``feature_axis`` that names no node layer of this fit."""
        if not isinstance(self.feature_axis, dict):
            return
        unknown = sorted(set(self.feature_axis) - {*names, OUTPUT_NODE}, key=str)
        if unknown:
            raise ValueError(
                f"feature_axis names {unknown}, which are not node layers of this fit "
                f"({[*names, OUTPUT_NODE]})"
            )
        bad = {k: v for k, v in self.feature_axis.items() if not _is_axis(v)}
        if bad:
            raise ValueError(f"feature_axis must map node layers to int axes or None, got {bad}")

    # -- conveniences ------------------------------------------------------------------
    def read(self, x, names):
        """Activations of the node layers ``names`` on ``x``, stopping after the last one."""
        return self.run(x, reads=names, need_output=False)[0]

    def section(self, x, src, f, dst=OUTPUT_NODE):
        """Activations at node layer ``dst`` (or the output) with ``src``'s replaced by ``f``.

        ``f`` may stack ``c`` copies of the batch (``f.shape[0] == c * n``,
        copy-major), as integrated gradients and edge ablation do.  Running
        the model on ``x`` repeated ``c`` times always works but recomputes
        everything before ``src`` ``c`` times.  So the runner first tries to
        let the batch grow at the cut (the model runs on ``x`` once and
        ``src`` receives all copies), checks it once per section against the
        repeated run, and keeps it only where both agree.  They can disagree,
        or the fast run fail, when code after ``src`` reuses the batch size
        or tensors computed from ``x``; then the repeated run is used, and
        an error it raises too is the caller's.  Out-of-memory errors are
        never retried.
        """
        copies = f.shape[0] // n_rows(x)
        if copies == 1:
            return self._section(x, src, f, dst)
        key = (src, dst)
        verdict = self._grow_at_cut.get(key)
        if verdict is not False:
            fast = None
            # The documented condition: code after src that uses the batch size of x
            # fails on a grown batch, in any way (an assert of the user's).  Not
            # swallowed: the repeated run below raises any error of its own.  Out of
            # memory propagates: the repeated run would need even more.
            with Exploratory():
                fast = self._section(x, src, f, dst)
            if fast is not None and fast.shape[0] == f.shape[0]:
                if verdict:
                    return fast
                with torch.no_grad():
                    safe = self._section(self._repeat(x, copies), src, f.detach(), dst)
                tol = tolerances(f.dtype).batch_growth
                if max_relative_error(fast.detach(), safe) <= tol:
                    self._grow_at_cut[key] = True
                    return fast
            self._grow_at_cut[key] = False
        return self._section(self._repeat(x, copies), src, f, dst)

    @staticmethod
    def _repeat(x, copies):
        return repeat_rows(x, copies)  # copy-major, like the stacked f

    def _section(self, x, src, f, dst):
        if dst == OUTPUT_NODE:
            return self.run(x, substitute=(src, f))[1]
        return self.run(x, reads=[dst], substitute=(src, f), need_output=False)[0][0]


def select_output(raw, output):
    """The output node's tensor from what the model returned.

    Parameters
    ----------
    raw : object
        The model's return value.
    output : None, str, int or callable
        None: ``raw`` itself; a str: the key or attribute of that name (as
        ``"logits"`` of a Hugging Face ``ModelOutput``); an int: that index
        of a returned tuple or list; a callable: ``output(raw)``.
    """
    if output is None:
        return raw
    if callable(output):
        return output(raw)
    if isinstance(output, str):
        if isinstance(raw, Mapping) and output in raw:
            return raw[output]
        if not isinstance(raw, Mapping) and hasattr(raw, output):
            return getattr(raw, output)
        names = list(raw) if isinstance(raw, Mapping) else _public_attributes(raw)
        raise ValueError(
            f"output={output!r}, but the model returned a {type(raw).__name__} without it "
            f"(it has {names[:8]})"
        )
    if not isinstance(raw, (tuple, list)):
        raise ValueError(
            f"output={output!r} is an index, but the model returned a {type(raw).__name__}, "
            "not a tuple or list"
        )
    if not -len(raw) <= output < len(raw):
        raise ValueError(f"output={output!r} is out of range: the model returned {len(raw)} items")
    return raw[output]


def _public_attributes(value):
    return [name for name in dir(value) if not name.startswith("_")]


def _is_axis(value):
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _shape_error(name, value, n, feature_axis=None):
    if not torch.is_tensor(value):
        hint = ""
        if name == "The model output":
            hint = (
                "; choose the output node with output=: a key or attribute (output='logits' "
                "for a Hugging Face model), an index into a returned tuple, or a callable"
            )
        return f"{name} produced {type(value).__name__}, not a tensor{hint}"
    if value.ndim < 2 or value.shape[0] != n:
        return (
            f"{name} has activations of shape {tuple(value.shape)} for a batch of {n}; "
            "a node layer needs shape (n_samples, ..., n_features)"
        )
    if value.ndim >= 4 and feature_axis is None:
        return (
            f"{name} has activations of shape {tuple(value.shape)}: which axis holds the "
            "features? Set feature_axis: feature_axis=1 for channels-first maps (N, C, H, W), "
            "as PyTorch convolutions produce them, or feature_axis=-1 for channels-last maps "
            "(N, H, W, C). The features then share one basis over the other axes (the "
            "positions)"
        )
    if not value.is_floating_point():
        return (
            f"{name} has activations of dtype {value.dtype}; a node layer needs floating "
            "activations (choose a layer after the embedding)"
        )
    return None


def node_shapes(runner, x, names):
    """Per-sample activation shapes of node layers ``names`` and of the output on batch ``x``.

    The shapes of one call's data, whose sequences may be of another length
    than the fit's; the fit's checks are :func:`inspect_node_layers`'.

    Returns
    -------
    shapes : dict of str to tuple
    output_shape : tuple
    """
    with torch.no_grad():
        reads, output = runner.run(x, reads=names, need_output=True)
    return {n: tuple(v.shape[1:]) for n, v in zip(names, reads)}, tuple(output.shape[1:])


def inspect_node_layers(runner, x, names):
    """Check call order and activation shapes of the node layers on a probe batch.

    Returns
    -------
    shapes : dict of str to tuple
        Per-sample activation shape ``(*positions, d)`` of each node layer.
    output_shape : tuple
        Per-sample shape of the model output.
    """
    runner.check_feature_axes(names)
    modules = [runner.module(name) for name in names]
    if len(set(map(id, modules))) != len(modules):
        raise ValueError(f"Node layers must be distinct modules, got {list(names)}")
    order = []
    reads, output = runner.run(x, reads=names, need_output=True, order=order)
    again = runner.run(x, reads=names, need_output=True)
    repeated = sorted({n for n in order if order.count(n) > 1})
    if repeated:
        raise ValueError(
            f"Node layer(s) {repeated} are called more than once in one forward pass; "
            "a node layer must be a module the model calls exactly once"
        )
    if order != list(names):
        raise ValueError(
            f"Layers must be given in forward order: got {list(names)}, "
            f"but the model calls them in the order {order}"
        )
    _check_deterministic(names, (reads, output), again)
    n = n_rows(x)
    shapes = {}
    for name, value in zip(names, reads):
        problem = _shape_error(f"Node layer {name!r}", value, n, runner.axis_of(name))
        if problem:
            raise ValueError(problem)
        shapes[name] = tuple(value.shape[1:])
    problem = _shape_error("The model output", output, n, runner.axis_of(OUTPUT_NODE))
    if problem:
        raise ValueError(problem)
    _check_batch_independence(runner, x, names, (reads, output))
    return shapes, tuple(output.shape[1:])


def _check_batch_independence(runner, x, names, full):
    """Raise if a sample's activations at a node layer depend on its batch mates.

    Runs the first half of the probe batch alone, in reverse order: batch
    statistics (a BatchNorm that uses the batch's own mean and variance)
    change with the batch, and a computation that mixes neighbouring
    samples changes with their order.  Either makes every Jacobian depend on
    the batch, which LIB cannot use.  The cut check covers the sections
    between node layers; this covers everything before them.
    """
    n = n_rows(x)
    if n < 2:
        return
    half = n // 2
    index = torch.arange(half - 1, -1, -1, device=device_of(x))
    try:
        reads, output = runner.run(take_rows(x, index), reads=names, need_output=True)
    except ValueError as exc:
        # Named, since a fault of the model (or of its data) on these samples reads alike.
        raise ValueError(
            f"The model runs on a batch of {n} samples but fails on {half} of them alone "
            f"({reason(exc)}): samples may interact within a batch (batch statistics, e.g. "
            "BatchNorm with track_running_stats=False, need more than one sample). LIB "
            "needs per-sample computations"
        ) from exc
    labels = [f"node layer {name!r}" for name in names] + ["the model output"]
    for label, a, b in zip(labels, [*full[0], full[1]], [*reads, output]):
        error = max_relative_error(b, a[:half].flip(0))
        if error > tolerances(a.dtype).cut:
            raise ValueError(
                f"Samples interact within a batch before {label}: a sample's activations there "
                "change with the other samples of its batch (its first half alone, reversed, "
                f"gives other values; relative mismatch {float(error):.2e}). Something before "
                "it computes statistics over the batch, e.g. BatchNorm with "
                "track_running_stats=False (which uses batch statistics even in eval mode), "
                "or mixes samples. LIB needs per-sample computations up to every node layer"
            )


def _check_deterministic(names, first, second):
    """Raise if two forward passes on the same inputs differ: randomness in the forward pass."""
    labels = [*names, "the model output"]
    for name, a, b in zip(labels, [*first[0], first[1]], [*second[0], second[1]]):
        if not (torch.is_tensor(a) and a.is_floating_point()):
            continue  # reported as a shape or dtype problem
        error = max_relative_error(b, a)
        if error > tolerances(a.dtype).cut:
            where = name if name == "the model output" else f"node layer {name!r}"
            raise ValueError(
                f"The forward pass is random: two runs on the same inputs give different "
                f"activations at {where} (relative difference {float(error):.2e}), even in "
                "eval mode. Something draws random numbers in forward, e.g. "
                "F.dropout(x, training=True) or torch.rand; LIB needs a deterministic "
                "forward pass (use nn.Dropout, or dropout only when self.training)."
            )


def check_cut(runner, x, section, rng):
    """Raise unless the end of ``section`` depends on the input only through its start.

    Runs the section with the real activations of ``src`` and with the same
    activations permuted across samples.  At a cut the second output is the
    first one permuted; a path that bypasses ``src`` (a residual connection)
    breaks that.  A third run on the first half of the batch alone catches
    samples that interact symmetrically (batch statistics), which a
    permutation cannot see.
    """
    n = n_rows(x)
    if n < 2:
        return
    # Every position valid: a sample swapped into another's padding would
    # attend differently, which is no path around src.
    x = without_padding(x)
    src, dst = section.src, section.dst
    dst_name = "the model output" if section.to_output else f"layer {dst!r}"
    with torch.no_grad():
        (f,) = runner.read(x, [src])
        # A cyclic shift by a random offset is a permutation with no fixed point.
        perm = torch.roll(torch.arange(n, device=f.device), int(rng.randint(1, n)))
        out = runner.section(x, src, f, dst)
        out_perm = runner.section(x, src, f[perm], dst)
        half = n // 2
        out_half = runner.section(take_rows(x, slice(0, half)), src, f[:half], dst)
    rtol = tolerances(out.dtype).cut
    coupling = max_relative_error(out_half, out[:half])
    if coupling > rtol:
        raise ValueError(
            f"Samples interact within a batch between layer {src!r} and {dst_name}: "
            "the same samples give different outputs in a smaller batch (batch statistics, "
            "e.g. BatchNorm with track_running_stats=False). LIB needs per-sample "
            f"computations (relative mismatch {float(coupling):.2e})."
        )
    error = max_relative_error(out_perm, out[perm])
    if error > rtol:
        raise ValueError(
            f"Layer {src!r} is not a cut: {dst_name} depends on the model input "
            f"through a path that bypasses {src!r} (for example a residual "
            "connection), or samples interact within a batch. Choose node layers that "
            f"carry the whole residual stream (relative mismatch {float(error):.2e})."
        )


def check_gradient_flow(runner, x, section):
    """Raise unless the end of ``section`` is differentiable in its start.

    A forward pass under ``torch.no_grad`` or a ``.detach()`` between the
    two node layers cuts autograd's graph; the Jacobians would then be
    missing (or silently zero), so this is refused up front.
    """
    src, dst = section.src, section.dst
    dst_name = "the model output" if section.to_output else f"node layer {dst!r}"
    with torch.no_grad():
        (f,) = runner.read(x, [src])
    leaf = f.detach().requires_grad_()
    with torch.enable_grad():
        out = runner.section(x, src, leaf, dst)
    if not (torch.is_tensor(out) and out.requires_grad):
        raise ValueError(
            f"Gradients do not flow from {dst_name} back to layer {src!r}: the forward "
            "pass computes it without autograd (torch.no_grad or inference_mode inside "
            "forward, or a .detach() of the whole path between the two). LIB needs the "
            "Jacobian of the next node layer with respect to this one; remove the "
            "detach / no_grad."
        )
    # One backward pass, so that an operation without a derivative is named
    # now rather than deep in the first Jacobian pass.
    try:
        with batch_notes(x, runner.where):
            torch.autograd.grad(out.sum(), leaf, allow_unused=True)
    except (RuntimeError, NotImplementedError) as exc:
        if is_fatal(exc):
            raise
        raise ValueError(
            f"Gradients cannot be computed from {dst_name} back to layer {src!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
