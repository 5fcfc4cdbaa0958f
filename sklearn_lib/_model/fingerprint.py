"""Fingerprints of a model: exact digests of what its forward can read, to notice it changed.

A fitted basis describes the model as it was at ``fit``.  Every call takes
the fingerprint of the user's model (reading it, never running it), and
:class:`~sklearn_lib.StaleBasisWarning` names what differs from the fit's.

What is fingerprinted, and how:

- **every tensor** the model holds: parameters, persistent and
  non-persistent buffers (a mask of ``-inf``, a rotary cache), and tensors
  kept as plain attributes.  Each is a SHA-256 digest of its bytes in its
  own dtype, with the dtype and shape, so any change of any bit is found,
  wherever the value sits (a swap of two weights, a ``-inf`` that moves, a
  NaN's payload, ``-0.0`` for ``0.0``), with no tolerance: the bytes of the
  same values are the same on every device and thread count.  Integer
  scalars are left out: counters such as BatchNorm's ``num_batches_tracked``
  move when the model runs without changing what it computes.
- **every module**: its class, and its plain attributes (bools, ints,
  floats, strings, dtypes, functions by their code, tuples, lists and dicts
  of them, and one level into configurations: dataclasses, namespaces,
  objects with ``to_dict``), which a forward may read:
  ``model.act = nn.GELU()``, ``attn.scale = 0.5``, ``config.use_cache``; and
  its forward hooks and pre-hooks, which change what it computes.  The
  ``training`` flag is not among them, since the package runs its copy in
  eval mode; other objects count by their class (a logger's or a counter's
  state may move as the model runs).

Why digests of bytes, not version counters: writes through ``.data``,
through numpy, by fused optimisers and by BatchNorm's running statistics
move no counter.  Why not sums of values: sums are fooled by values that
swap places, and need tolerances.  A digest costs one read of the bytes,
about what the private copy costs (``benchmarks/README.md``).
"""

import dataclasses
import functools
import hashlib
import types

import numpy as np
import torch

#: The digest's bytes: 128 bits of SHA-256, far past any chance collision.
_DIGEST_SIZE = 16

#: Attributes every ``nn.Module`` has (parameters, buffers, hooks, the training
#: flag): what is left of a module's ``vars`` is its own.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _hex(digest):
    """A SHA-256 digest as the fingerprint keeps it: its first :data:`_DIGEST_SIZE`
    bytes, in hex."""
    return digest.digest()[:_DIGEST_SIZE].hex()


def tensor_digest(tensor):
    """The digest of one tensor: its dtype, shape and bytes (on the CPU, in its own dtype)."""
    data = tensor.detach()
    if data.is_meta:  # no values to read: the private copy refuses it, naming the fix
        return _hex(hashlib.sha256(f"meta{data.dtype}{tuple(data.shape)}".encode()))
    if data.is_quantized:
        data = data.int_repr()
    elif data.layout != torch.strided:
        data = data.to_dense()
    data = data.to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{data.dtype}{tuple(tensor.shape)}".encode())
    if data.numel():
        # Bytes of any dtype (bfloat16 and float8 have no numpy dtype).
        digest.update(memoryview(data.view(torch.uint8).numpy()))
    return _hex(digest)


def fingerprint(model):
    """The fingerprint of a model: per tensor and per module, a digest.

    Parameters
    ----------
    model : torch.nn.Module
        Read only: nothing runs.

    Returns
    -------
    dict of str to str
        Per tensor, by its dotted name (tied ones under every name, digested
        once), and per module, as ``"<name> (module)"`` (``"<model>
        (module)"`` for the model itself), a hex digest.
    """
    digests, seen = {}, {}
    tensors = (
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    )
    with torch.no_grad():
        for name, tensor in tensors:
            if tensor.is_floating_point() or tensor.ndim > 0:
                if id(tensor) not in seen:
                    seen[id(tensor)] = tensor_digest(tensor)
                digests[name] = seen[id(tensor)]
        for name, module in model.named_modules(remove_duplicate=False):
            digests[f"{name or '<model>'} (module)"] = _module_digest(module)
    return digests


#: A module's hooks that change what its forward computes (the package's own hooks go
#: on its private copy, never on the user's model).
_FORWARD_HOOKS = ("_forward_pre_hooks", "_forward_hooks")


def _module_digest(module):
    """Its class, its own attributes and its forward hooks, in a stable order."""
    own = {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS}
    own.update({k: list(getattr(module, k).values()) for k in _FORWARD_HOOKS})
    described = [_qualified(type(module)), *(f"{k}={_describe(own[k], 1)}" for k in sorted(own))]
    return _hex(hashlib.sha256("\n".join(described).encode()))


def _describe(value, depth, within=frozenset()):
    """A plain value's exact text; a tensor's or array's digest; a container's items;
    an object's class and, ``depth`` levels into it, its attributes (``within``: the
    ids of the containers it sits in, so that one holding itself ends)."""
    leaf = _describe_leaf(value)
    if leaf is not None:
        return leaf
    if id(value) in within:
        return "cycle"
    within = within | {id(value)}
    if isinstance(value, types.MethodType):
        value = value.__func__
    if isinstance(value, types.FunctionType):
        return f"function:{_qualified(value)}:{_code_digest(value, within)}"
    if isinstance(value, functools.partial):
        value = (value.func, value.args, value.keywords)
    if isinstance(value, (tuple, list)):
        items = ",".join(_describe(v, depth, within) for v in value)
        return f"{type(value).__name__}:[{items}]"
    if isinstance(value, dict):
        items = (f"{k!r}:{_describe(value[k], depth, within)}" for k in _sorted_keys(value))
        return "dict:{" + ",".join(items) + "}"
    if isinstance(value, (set, frozenset)):  # in a stable order, whatever the hash seed
        return "set:{" + ",".join(sorted(_describe(v, depth, within) for v in value)) + "}"
    attributes = getattr(value, "__dict__", None)
    if depth > 0 and isinstance(attributes, dict) and _is_configuration(value):
        return f"{_qualified(type(value))}:{_describe(dict(attributes), depth - 1, within)}"
    return f"object:{_qualified(type(value))}"


def _is_configuration(value):
    """Whether an object is a configuration, whose attributes the forward reads: a
    dataclass, a namespace, or one that says so with ``to_dict`` (Hugging Face's
    configurations).  Other objects (a logger, a counter, a tokenizer) may change as
    the model runs without changing what it computes: their class alone counts."""
    return (
        dataclasses.is_dataclass(value)
        or isinstance(value, types.SimpleNamespace)
        or callable(getattr(value, "to_dict", None))
    )


def _describe_leaf(value):
    """The text of a value that holds no others, or None."""
    if isinstance(value, (*_PLAIN, np.generic)):
        return f"{type(value).__name__}:{value!r}"  # repr of a float round-trips
    if isinstance(value, torch.Tensor):
        return f"tensor:{tensor_digest(value)}"
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        return f"array:{value.shape}:{value.tolist()!r}"
    if isinstance(value, np.ndarray):
        return f"array:{tensor_digest(torch.from_numpy(np.ascontiguousarray(value)))}"
    if isinstance(value, (types.BuiltinFunctionType, type)):
        return f"function:{_qualified(value)}"
    if isinstance(value, torch.nn.Module):
        return f"module:{_qualified(type(value))}"  # fingerprinted as a module, where registered
    return None


def _code_digest(function, within):
    """What a Python function computes: its bytecode, the names and constants it uses,
    its defaults and the values it closes over (two lambdas differ here, not by name)."""
    code = function.__code__
    constants = [
        sorted(map(repr, c)) if isinstance(c, frozenset) else c  # in a stable order
        for c in code.co_consts
        if not isinstance(c, types.CodeType)
    ]
    cells = [cell.cell_contents for cell in function.__closure__ or () if _filled(cell)]
    text = repr((code.co_names, constants))
    text += _describe([function.__defaults__, cells], 0, within)
    return _hex(hashlib.sha256(code.co_code + text.encode()))


def _filled(cell):
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def value_digest(value):
    """The digest of a parameter's value, as :func:`fingerprint` describes a module's
    attributes: equal for equal plain values, tensors of equal bytes and the same
    functions; other objects by their class and plain attributes."""
    return _hex(hashlib.sha256(_describe(value, 1).encode()))


def _sorted_keys(mapping):
    try:
        return sorted(mapping)
    except TypeError:  # keys of mixed types: their text decides
        return sorted(mapping, key=repr)


def _qualified(thing):
    return f"{getattr(thing, '__module__', '?')}.{getattr(thing, '__qualname__', repr(thing))}"


def changed_parts(old, new):
    """Names whose digests differ between two :func:`fingerprint` results, or that
    only one of them has, sorted."""
    names = set(old) | set(new)
    return sorted(name for name in names if old.get(name) != new.get(name))
