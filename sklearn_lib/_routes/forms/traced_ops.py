"""The batched vector-Jacobian product of each operation a traced section may hold.

A traced section (:mod:`.traced_section`) runs its nodes forward once per
batch and then sends many cotangent rows back through them at once: every
cotangent here carries a leading row axis ``R`` that the forward values do
not have, so the products against weights are one matrix product for all
rows, and nothing builds an autograd graph.

Each :class:`Op` binds a node's arguments to names (one signature for the
function, the tensor method and the module that spell it), and gives the
products for the arguments that depend on the section's start.  An
operation outside the table, or a case of one that it does not cover
(advanced indexing, a cast), leaves the section to autograd.
"""

import builtins
import inspect
import itertools
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .activations import BY_FUNCTION, ELEMENTWISE_MODULES, IDENTITIES
from .traced_pending import Pending, Pieces, fold, pending_product

#: Local einsum letters for the axes before the last of a linear map's input.
_BATCH = "ABCDEFGHIJKLMN"


class Unsupported(ValueError):
    """A case an operation's product does not cover, found on the values (the check
    against autograd then fails, naming it)."""


@dataclass(frozen=True)
class Op:
    """One operation: how its arguments bind, its products, and what its forward keeps.

    Attributes
    ----------
    name : str
    signature : callable
        A function whose signature binds the node's arguments to names.
    vjp : callable
        ``vjp(a, out, g, saved, wanted)``: the products ``{name: cotangent}``
        of the wanted arguments, from the bound values ``a``, the node's
        value ``out`` and the cotangent ``g`` of shape ``(R, *out.shape)``.
    save : callable or None
        ``save(a, out, call)``: what the products need from the forward,
        once per batch (``call(input)`` reruns the node on another input).
    takes, refuses : frozenset or None, str
        The arguments ``vjp`` has products for (None: every one), and, for
        the plan, what a section where another one depends on its start has.
    """

    name: str
    signature: object
    vjp: object
    save: object = None
    pending: bool = False  # whether vjp takes a Pending cotangent
    pieces: bool = False  # whether vjp takes a Pieces cotangent
    #: The arguments it has products for (None: all), and how the plan names an
    #: other one that depends on the section's start (the section then takes autograd).
    takes: frozenset = None
    refuses: str = ""

    def bind(self, args, kwargs):
        """The node's arguments by name (variadic ones as tuples)."""
        bound = inspect.signature(self.signature).bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)


# -- helpers -----------------------------------------------------------------------------
def flat(value):
    """A list argument as its list (einsum's operands may come as one list)."""
    if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        return tuple(value[0])
    return value


def shift(dim, ndim):
    """Axis ``dim`` of a value of ``ndim`` axes, as an axis of its cotangent (row axis first)."""
    return dim % max(ndim, 1) + 1


def unbroadcast(g, shape, logical):
    """Cotangent ``g`` of a broadcast result of shape ``logical``, summed to ``(R, *shape)``.

    ``g`` may itself be broadcast (size 1 where ``logical`` is larger: the
    same entry repeated); summing such an axis multiplies by its size.
    """
    logical = tuple(logical)
    if g.ndim - 1 < len(logical):  # right-aligned: leading axes of size 1
        g = g.reshape(g.shape[0], *([1] * (len(logical) - g.ndim + 1)), *g.shape[1:])
    extra, factor, dims = len(logical) - len(shape), 1, []
    for i, n in enumerate(logical):
        if i >= extra and (shape[i - extra] != 1 or n == 1):
            continue  # kept: the input has this axis at full size
        if g.shape[i + 1] == 1:
            factor *= n
        else:
            dims.append(i + 1)
    if dims:
        g = g.sum(dims, keepdim=True)
    if extra > 0:
        g = g.reshape(g.shape[0], *g.shape[1 + extra :])
    return g * factor if factor != 1 else g


def _dense(g, out, last):
    """``g`` expanded over its ``last`` axes where it is broadcast there (a matrix
    product contracts them; the sample axis may stay broadcast)."""
    if tuple(g.shape[-last:]) != tuple(out.shape[-last:]):
        return g.expand(*g.shape[: g.ndim - last], *out.shape[-last:])
    return g


def full(g, shape):
    """Cotangent ``g``, broadcastable to ``(R, *shape)``, expanded to it (a view)."""
    return g.expand(g.shape[0], *shape)


def broadcast(g, shape):
    """Whether ``g`` is broadcast over axes of ``(R, *shape)`` (the same for all samples)."""
    return tuple(g.shape[1:]) != tuple(shape)


def shape_of(value):
    return value.shape if isinstance(value, torch.Tensor) else ()


def reduced_dims(dim, ndim):
    """The axes a reduction over ``dim`` (None: all) of a value of ``ndim`` axes sums."""
    if dim is None:
        return tuple(range(ndim))
    return tuple(sorted(d % ndim for d in (dim if isinstance(dim, (tuple, list)) else (dim,))))


def _expand_reduced(g, x, dim, keepdim):
    """Cotangent ``(R, *reduced)`` of a reduction over ``dim``, broadcast against ``x``'s
    shape, and the number of entries each reduced one sums."""
    dims = reduced_dims(dim, x.ndim)
    if not keepdim:
        for d in dims:
            g = g.unsqueeze(d + 1)
    return g, dims, math.prod(x.shape[d] for d in dims)


# -- products ----------------------------------------------------------------------------
def _sum_vjp(a, out, g, saved, wanted):
    if a.get("dtype") is not None:
        raise Unsupported("a reduction with a dtype")
    return {"input": _expand_reduced(g, a["input"], a["dim"], a["keepdim"])[0]}


def _mean_vjp(a, out, g, saved, wanted):
    spread, _, count = _expand_reduced(g, a["input"], a["dim"], a["keepdim"])
    return {"input": spread / count}


def _var_vjp(a, out, g, saved, wanted):
    x, correction = a["input"], a["correction"]
    if correction is None:
        correction = 1 if a["unbiased"] in (None, True) else 0
    spread, dims, count = _expand_reduced(g, x, a["dim"], a["keepdim"])
    centred = x - x.mean(dims, keepdim=True)
    return {"input": spread * centred * (2.0 / (count - correction))}


def _add_vjp(a, out, g, saved, wanted, sign=1.0):
    if isinstance(g, Pending):
        g = _passed(g, [a[name] for name in wanted], out.shape)
    if isinstance(g, Pending):
        factor = {"input": 1.0, "other": sign * a.get("alpha", 1)}
        return {name: g if factor[name] == 1.0 else g.scaled(factor[name]) for name in wanted}
    grads = {}
    if "input" in wanted:
        grads["input"] = unbroadcast(g, shape_of(a["input"]), out.shape)
    if "other" in wanted:
        grads["other"] = unbroadcast(
            g * (sign * a.get("alpha", 1)), shape_of(a["other"]), out.shape
        )
    return grads


def _sub_vjp(a, out, g, saved, wanted):
    return _add_vjp(a, out, g, saved, wanted, sign=-1.0)


def _passed(g, operands, shape):
    """``g`` still pending where every operand that takes it has the result's shape."""
    if all(shape_of(x) == shape for x in operands):
        return g
    return g.materialize()


def _mul_vjp(a, out, g, saved, wanted):
    x, y = a["input"], a["other"]
    grads = {}
    if "input" in wanted:
        grads["input"] = unbroadcast(g * y, shape_of(x), out.shape)
    if "other" in wanted:
        grads["other"] = unbroadcast(g * x, shape_of(y), out.shape)
    return grads


def _div_vjp(a, out, g, saved, wanted):
    if a.get("rounding_mode") is not None:
        raise Unsupported("division with rounding")
    x, y = a["input"], a["other"]
    grads = {}
    if "input" in wanted:
        grads["input"] = unbroadcast(g / y, shape_of(x), out.shape)
    if "other" in wanted:
        grads["other"] = unbroadcast(-g * out / y, shape_of(y), out.shape)
    return grads


def _matmul_vjp(a, out, g, saved, wanted):
    x, y = a["input"], a["other"]
    if x.ndim < 2 or y.ndim < 2:
        raise Unsupported("a product with a vector")
    taken, g = _by_weight(g, x, y, wanted)
    if taken is not None:
        return taken
    g = _dense(g, out, 2)
    if wanted == {"input", "other"} and x.ndim == y.ndim == out.ndim:
        batch = _BATCH[: out.ndim - 2]
        grads = {}
        if x.shape[:-2] == out.shape[:-2]:
            grads["input"] = pending_product(g, batch + "mn", y, batch + "kn", batch + "mk")
        if y.shape[:-2] == out.shape[:-2]:
            grads["other"] = pending_product(g, batch + "mn", x, batch + "mk", batch + "kn")
        if len(grads) == 2:
            return grads
    grads = {}
    if "input" in wanted:
        grads["input"] = unbroadcast(g @ y.mT, x.shape, (*out.shape[:-1], x.shape[-1]))
    if "other" in wanted:
        grads["other"] = unbroadcast(x.mT @ g, y.shape, (*out.shape[:-2], *y.shape[-2:]))
    return grads


def _by_weight(g, x, y, wanted):
    """``(products, g)``: a lazy cotangent of ``x @ y`` (pieces, pending) taken with the
    weight ``y`` at once where only ``x`` wants it, else None and ``g`` as a tensor."""
    lazy = isinstance(g, (Pieces, Pending))
    if lazy and wanted == {"input"} and y.ndim == 2 and isinstance(g, Pieces):
        return {"input": g.times(y.T)}, g
    if lazy and wanted == {"input"} and isinstance(g, Pending):
        folded = _fold_linear(g, y, "io", x.ndim)
        if folded is not None:
            return {"input": folded}, g
    return None, g.materialize() if lazy else g


def _linear_vjp(a, out, g, saved, wanted):
    if isinstance(g, Pieces):
        return {"input": g.times(a["weight"])}
    if isinstance(g, Pending):
        folded = _fold_linear(g, a["weight"], "oi", a["input"].ndim)
        if folded is not None:
            return {"input": folded}
        g = g.materialize()
    return {"input": _dense(g, out, 1) @ a["weight"]}


def _fold_linear(g, weight, w_sub, ndim):
    """A pending cotangent of ``y = x W`` folded with ``W`` (``w_sub`` "io"), or ``W^T`` ("oi")."""
    if weight.ndim != 2 or ndim > len(_BATCH) + 1:
        return None
    batch = _BATCH[: ndim - 1]
    return fold(g, weight, w_sub, batch + "o", batch + "i")


def _addmm_vjp(a, out, g, saved, wanted):
    beta, alpha = a["beta"], a["alpha"]
    if isinstance(g, Pieces):
        if wanted == {"mat1"}:
            return {"mat1": _scaled(g.times(a["mat2"].T), alpha)}
        g = g.materialize()
    g = _dense(g, out, 2)
    grads = {}
    if "input" in wanted:
        grads["input"] = unbroadcast(g if beta == 1 else g * beta, shape_of(a["input"]), out.shape)
    if "mat1" in wanted:
        grads["mat1"] = _scaled(g @ a["mat2"].T, alpha)
    if "mat2" in wanted:
        grads["mat2"] = _scaled(a["mat1"].T @ full(g, out.shape), alpha)
    return grads


def _scaled(g, factor):
    return g if factor == 1 else g * factor


def _einsum_parts(equation, n):
    equation = equation.replace(" ", "")
    if "." in equation:
        raise Unsupported("einsum with an ellipsis")
    lhs, _, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if not _:
        letters = "".join(inputs)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(inputs) != n:
        raise Unsupported("einsum's operands do not match its equation")
    return inputs, rhs


def _einsum_vjp(a, out, g, saved, wanted):
    operands = flat(a["operands"])
    inputs, rhs = _einsum_parts(a["equation"], len(operands))
    mine = wanted_indices(wanted, "operands")
    if isinstance(g, Pending):
        folded = None
        if len(operands) == 2 and len(mine) == 1:
            (i,) = mine
            folded = fold(g, operands[1 - i], inputs[1 - i], rhs, inputs[i])
        if folded is not None:
            grads = [None, None]
            grads[i] = folded
            return {"operands": grads}
        g = g.materialize()
    if len(operands) == 2 and len(mine) == 2 and _plain(inputs, rhs):
        return {"operands": [
            pending_product(g, rhs, operands[1 - i], inputs[1 - i], inputs[i]) for i in (0, 1)
        ]}  # fmt: skip
    row = next(c for c in "RZYXWVUTSQPONMLKJIHGFEDCBA" if c not in a["equation"])
    grads = [None] * len(operands)
    for i in mine:
        others = [s for j, s in enumerate(inputs) if j != i]
        own = inputs[i]
        if len(set(own)) != len(own) or not set(own) <= set(rhs + "".join(others)):
            raise Unsupported("einsum with an index summed within one operand")
        rest = [op for j, op in enumerate(operands) if j != i]
        equation = ",".join([row + rhs, *others]) + "->" + row + own
        grads[i] = torch.einsum(equation, g, *rest)
    return {"operands": grads}


def _plain(inputs, rhs):
    """Whether every operand's letters are distinct and each appears in the result or the other."""
    letters = "".join(inputs) + rhs
    return all(len(set(s)) == len(s) and set(s) <= set(letters.replace(s, "", 1)) for s in inputs)


def wanted_indices(wanted, name):
    """The positions ``i`` of a list argument ``name`` whose ``name[i]`` is wanted."""
    return sorted(i for w, i in (_split_name(w) for w in wanted) if w == name and i is not None)


def _split_name(name):
    base, _, index = name.partition("#")
    return base, int(index) if index else None


def _transpose_vjp(a, out, g, saved, wanted):
    n = a["input"].ndim
    d0, d1 = shift(a["dim0"], n), shift(a["dim1"], n)
    if isinstance(g, Pending):
        order = list(range(n))
        order[d0 - 1], order[d1 - 1] = order[d1 - 1], order[d0 - 1]
        return {"input": g.permuted(order)}
    return {"input": g.transpose(d0, d1)}


def _permute_vjp(a, out, g, saved, wanted):
    dims = a["dims"]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    n = len(dims)
    if isinstance(g, Pending):
        return {"input": g.permuted([d % n for d in dims])}
    inverse = sorted(range(n), key=lambda i: dims[i] % n)
    return {"input": g.permute(0, *[i + 1 for i in inverse])}


def _reversed_vjp(a, out, g, saved, wanted):
    n = a["input"].ndim
    if isinstance(g, Pending):
        return {"input": g.permuted(list(range(n - 1, -1, -1)))}
    return {"input": g.permute(0, *range(n, 0, -1))}


def _last_two_vjp(a, out, g, saved, wanted):
    n = a["input"].ndim
    if n < 2:
        return {"input": g}
    if isinstance(g, Pending):
        return {"input": g.permuted([*range(n - 2), n - 1, n - 2])}
    return {"input": g.transpose(-1, -2)}


def _reshape_vjp(a, out, g, saved, wanted):
    shape = a["input"].shape
    if isinstance(g, Pieces):
        kept = g.reshaped(shape)
        return {"input": kept if kept is not None else g.materialize().reshape(-1, *shape)}
    if isinstance(g, Pending):
        kept = g.reshaped(shape) if not broadcast(g, out.shape) else None
        if kept is not None:
            return {"input": kept}
        g = g.materialize()
    if broadcast(g, out.shape):
        # Kept the same for all samples where the sample axis is left alone.
        if g.shape[1] == 1 and out.shape[0] == shape[0] and g.shape[2:] == out.shape[1:]:
            return {"input": g.reshape(g.shape[0], 1, *shape[1:])}
        g = full(g, out.shape)
    return {"input": g.reshape(g.shape[0], *shape)}


def _cast_vjp(a, out, g, saved, wanted):
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise Unsupported("a cast to a dtype without derivatives")
    if out.dtype == a["input"].dtype:
        return _reshape_vjp(a, out, g, saved, wanted)
    g = g.materialize() if isinstance(g, Pending) else g
    return {"input": g.to(a["input"].dtype)}  # as autograd: the cotangent cast back


def _expand_vjp(a, out, g, saved, wanted):
    return {"input": unbroadcast(g, a["input"].shape, out.shape)}


def _softmax_vjp(a, out, g, saved, wanted):
    if a.get("dtype") not in (None, out.dtype):
        raise Unsupported("a softmax in another dtype")
    dim = shift(a["dim"], out.ndim)
    return {"input": out * (g - (g * out).sum(dim, keepdim=True))}


def _layer_norm_save(a, out, call):
    x, shape = a["input"], a["normalized_shape"]
    dims = tuple(range(-len(tuple(shape)), 0))
    centred = x - x.mean(dims, keepdim=True)
    rstd = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + a["eps"])
    return centred * rstd, rstd, dims


def _layer_norm_vjp(a, out, g, saved, wanted):
    normed, rstd, dims = saved
    weighted = g if a["weight"] is None else g * a["weight"]
    mean = weighted.mean(dims, keepdim=True)
    along = (weighted * normed).mean(dims, keepdim=True)
    return {"input": rstd * (weighted - mean - normed * along)}


def _where_vjp(a, out, g, saved, wanted):
    keep = a["condition"]
    grads = {}
    if "input" in wanted:
        grads["input"] = unbroadcast(g * keep.to(g.dtype), shape_of(a["input"]), out.shape)
    if "other" in wanted:
        grads["other"] = unbroadcast(g * (~keep).to(g.dtype), shape_of(a["other"]), out.shape)
    return grads


def _masked_fill_vjp(a, out, g, saved, wanted):
    return {"input": torch.where(a["mask"], 0, g)}  # g may be broadcast


def _elementwise_save(a, out, call):
    with torch.enable_grad():
        z = a["input"].detach().requires_grad_(True)
        (slope,) = torch.autograd.grad(call(z).sum(), z)
    return slope


def _elementwise_vjp(a, out, g, saved, wanted):
    return {"input": g * saved}


def _identity_vjp(a, out, g, saved, wanted):  # Pending passes too
    return {"input": g}


def _dropout_vjp(a, out, g, saved, wanted):
    if a["training"] and a["p"] > 0:
        raise Unsupported("dropout in training mode")
    return {"input": g}


def basic_index(op, a):
    """The index of a ``getitem``, ``slice`` or ``select`` of a tensor as a tuple of basic
    indices, or None where it indexes by tensors."""
    if op == "slice":
        dim = a["dim"] % a["input"].ndim
        return (slice(None),) * dim + (slice(a["start"], a["end"], a["step"]),)
    if op == "select":
        return (slice(None),) * (a["dim"] % a["input"].ndim) + (a["index"],)
    index = a["index"] if isinstance(a["index"], tuple) else (a["index"],)
    basic = all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index)
    return index if basic else None


def _getitem_vjp(a, out, g, saved, wanted, op="getitem"):
    x = a["input"]
    if isinstance(x, (tuple, list)):
        return {"input": {int(a["index"]) % len(x): g}}  # one piece of a split
    index = basic_index(op, a)
    if index is None:
        raise Unsupported("indexing by tensors")
    shape = x.shape
    if broadcast(g, out.shape):
        keeps_samples = index[0] == slice(None) and out.shape[0] == shape[0]
        if keeps_samples and g.shape[1] == 1 and g.shape[2:] == out.shape[1:]:
            shape = (1, *shape[1:])  # the same for all samples
        else:
            g = full(g, out.shape)
    spread = g.new_zeros(g.shape[0], *shape)
    spread[(slice(None), *index)] = g
    return {"input": spread}


def _slice_vjp(a, out, g, saved, wanted):
    return _getitem_vjp(a, out, g, saved, wanted, op="slice")


def _select_vjp(a, out, g, saved, wanted):
    return _getitem_vjp(a, out, g, saved, wanted, op="select")


def _pieces_vjp(a, out, g, saved, wanted, stacked=False):
    dim = shift(a["dim"], a["input"].ndim)
    rows = next(iter(g.values())).shape[0]
    pieces = []
    for i, piece in enumerate(out):
        part = g.get(i)
        pieces.append(
            piece.new_zeros(rows, *piece.shape) if part is None else full(part, piece.shape)
        )
    if not stacked and dim == a["input"].ndim:  # along the features: kept as pieces
        offsets = itertools.accumulate([0, *(piece.shape[-1] for piece in out[:-1])])
        parts = tuple((o, p) for o, p, i in zip(offsets, pieces, range(len(out))) if i in g)
        return {"input": Pieces(parts, a["input"].shape[-1])}
    joined = torch.stack(pieces, dim) if stacked else torch.cat(pieces, dim)
    return {"input": joined}


def _unbind_vjp(a, out, g, saved, wanted):
    return _pieces_vjp(a, out, g, saved, wanted, stacked=True)


def _cat_vjp(a, out, g, saved, wanted, stacked=False):
    tensors = a["tensors"]
    dim = shift(a["dim"], out.ndim)
    g = full(g, out.shape)
    grads, offset = [None] * len(tensors), 0
    for i, t in enumerate(tensors):
        size = 1 if stacked else t.shape[dim - 1]
        if i in wanted_indices(wanted, "tensors"):
            part = g.narrow(dim, offset, size)
            grads[i] = part.squeeze(dim) if stacked else part
        offset += size
    return {"tensors": grads}


def _stack_vjp(a, out, g, saved, wanted):
    return _cat_vjp(a, out, g, saved, wanted, stacked=True)


def _sdpa_save(a, out, call):
    if a["dropout_p"] or a["enable_gqa"]:
        raise Unsupported("attention with dropout or grouped queries")
    q, k = a["query"], a["key"]
    scale = a["scale"] if a["scale"] is not None else q.shape[-1] ** -0.5
    scores = (q @ k.mT) * scale
    mask = a["attn_mask"]
    if a["is_causal"]:
        length, source = scores.shape[-2:]
        causal = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        )
    return scores.softmax(-1), scale


def _sdpa_vjp(a, out, g, saved, wanted):
    g = _dense(g, out, 2)
    weights, scale = saved
    q, k, v = a["query"], a["key"], a["value"]
    grads = {}
    if "value" in wanted:
        grads["value"] = unbroadcast(weights.mT @ g, v.shape, (*out.shape[:-2], *v.shape[-2:]))
    if wanted & {"query", "key"}:
        through = g @ v.mT
        scores = weights * (through - (through * weights).sum(-1, keepdim=True))
        if "query" in wanted:
            grads["query"] = unbroadcast(
                (scores @ k) * scale, q.shape, (*out.shape[:-1], q.shape[-1])
            )
        if "key" in wanted:
            grads["key"] = unbroadcast(
                (scores.mT @ q) * scale, k.shape, (*out.shape[:-2], *k.shape[-2:])
            )
    return grads


# -- signatures --------------------------------------------------------------------------
def _unary(input, *args, **kwargs): ...
def _binary(input, other, *, alpha=1, rounding_mode=None): ...
def _reduce(input, dim=None, keepdim=False, *, dtype=None): ...
def _var(input, dim=None, unbiased=None, keepdim=False, *, correction=None): ...
def _linear(input, weight, bias=None): ...
def _addmm(input, mat1, mat2, *, beta=1, alpha=1): ...
def _einsum(equation, *operands): ...
def _transpose(input, dim0, dim1): ...
def _permute(input, *dims): ...
def _softmax(input, dim=None, _stacklevel=3, dtype=None): ...
def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5): ...
def _where(condition, input, other): ...
def _masked_fill(input, mask, value): ...
def _getitem(input, index): ...
def _split(input, size, dim=0): ...
def _unbind(input, dim=0): ...
def _cat(tensors, dim=0): ...
def _dropout(input, p=0.5, training=True, inplace=False): ...
def _slice(input, dim=0, start=None, end=None, step=1): ...
def _select(input, dim, index): ...
def _aten_softmax(input, dim, dtype=None): ...
def _aten_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5,
                     cudnn_enable=True): ...  # fmt: skip
def _aten_einsum(equation, operands, path=None): ...
def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
          enable_gqa=False): ...  # fmt: skip


#: A linear map or LayerNorm: products for its input, its weights constants.
_WEIGHTED = {"takes": frozenset({"input"}), "refuses": "a weight that depends on the input"}

OPS = {
    "add": Op("add", _binary, _add_vjp, pending=True),
    "sub": Op("sub", _binary, _sub_vjp, pending=True),
    "mul": Op("mul", _binary, _mul_vjp),
    "div": Op("div", _binary, _div_vjp),
    "matmul": Op("matmul", _binary, _matmul_vjp, pending=True, pieces=True),
    "linear": Op("linear", _linear, _linear_vjp, pending=True, **_WEIGHTED, pieces=True),
    "addmm": Op("addmm", _addmm, _addmm_vjp, pieces=True),
    "einsum": Op("einsum", _einsum, _einsum_vjp, pending=True),
    "transpose": Op("transpose", _transpose, _transpose_vjp, pending=True),
    "permute": Op("permute", _permute, _permute_vjp, pending=True),
    "T": Op("T", _unary, _reversed_vjp, pending=True),
    "mT": Op("mT", _unary, _last_two_vjp, pending=True),
    "reshape": Op("reshape", _unary, _reshape_vjp, pending=True, pieces=True),
    "cast": Op("cast", _unary, _cast_vjp, pending=True),
    "expand": Op("expand", _unary, _expand_vjp),
    "sum": Op("sum", _reduce, _sum_vjp),
    "mean": Op("mean", _reduce, _mean_vjp),
    "var": Op("var", _var, _var_vjp),
    "softmax": Op("softmax", _softmax, _softmax_vjp),
    "layer_norm": Op("layer_norm", _layer_norm, _layer_norm_vjp, _layer_norm_save, **_WEIGHTED),
    "where": Op(
        "where",
        _where,
        _where_vjp,
        takes=frozenset({"input", "other"}),
        refuses="a condition that depends on the input",
    ),  # fmt: skip
    "masked_fill": Op(
        "masked_fill",
        _masked_fill,
        _masked_fill_vjp,
        takes=frozenset({"input"}),
        refuses="a fill value that depends on the input",
    ),  # fmt: skip
    "elementwise": Op(
        "elementwise",
        _unary,
        _elementwise_vjp,
        _elementwise_save,
        takes=frozenset({"input"}),
        refuses="its derivative in another argument than its first",
    ),  # fmt: skip
    "identity": Op("identity", _unary, _identity_vjp, pending=True),
    "dropout": Op("dropout", _dropout, _dropout_vjp),
    "getitem": Op("getitem", _getitem, _getitem_vjp),
    "split": Op("split", _split, _pieces_vjp),
    "unbind": Op("unbind", _unbind, _unbind_vjp),
    "cat": Op("cat", _cat, _cat_vjp),
    "stack": Op("stack", _cat, _stack_vjp),
    "sdpa": Op(
        "sdpa",
        _sdpa,
        _sdpa_vjp,
        _sdpa_save,
        takes=frozenset({"query", "key", "value"}),
        refuses="an attention mask that depends on the input",
    ),  # fmt: skip
    "slice": Op("slice", _slice, _slice_vjp),
    "select": Op("select", _select, _select_vjp),
    # ATen's spellings of the same operations (torch.export's graphs)
    "aten softmax": Op("softmax", _aten_softmax, _softmax_vjp),
    "aten layer_norm": Op(
        "layer_norm", _aten_layer_norm, _layer_norm_vjp, _layer_norm_save, **_WEIGHTED
    ),
    "aten einsum": Op("einsum", _aten_einsum, _einsum_vjp, pending=True),
}

_ELEMENTWISE = (
    "relu", "tanh", "sigmoid", "exp", "log", "sqrt", "rsqrt", "neg", "abs", "square", "pow",
    "sin", "cos", "erf", "reciprocal",
)  # fmt: skip

#: Functions by object, tensor methods by name: the operation each spells.
FUNCTIONS = {
    # Not the in-place operator.iadd and its kind: they would change stored values.
    **{f: "add" for f in (operator.add, torch.add)},
    **{f: "sub" for f in (operator.sub, torch.sub)},
    **{f: "mul" for f in (operator.mul, torch.mul)},
    **{f: "div" for f in (operator.truediv, torch.div, torch.true_divide)},
    **{f: "matmul" for f in (operator.matmul, torch.matmul, torch.bmm, torch.mm)},
    F.linear: "linear",
    torch.addmm: "addmm",
    torch.einsum: "einsum",
    torch.transpose: "transpose",
    torch.swapaxes: "transpose",
    torch.permute: "permute",
    **{f: "reshape" for f in (torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze)},
    torch.clone: "reshape",
    torch.broadcast_to: "expand",
    torch.sum: "sum",
    torch.mean: "mean",
    torch.var: "var",
    **{f: "softmax" for f in (torch.softmax, F.softmax)},
    F.layer_norm: "layer_norm",
    torch.where: "where",
    torch.masked_fill: "masked_fill",
    **{getattr(torch, name): "elementwise" for name in _ELEMENTWISE},
    **dict.fromkeys(BY_FUNCTION, "elementwise"),  # the activation table's functions
    **{f: "elementwise" for f in (operator.neg, operator.pow, F.leaky_relu, F.elu)},
    **{f: "elementwise" for f in (F.softplus, F.mish, F.hardtanh)},
    F.dropout: "dropout",
    operator.getitem: "getitem",
    torch.split: "split",
    torch.chunk: "split",
    torch.unbind: "unbind",
    torch.cat: "cat",
    torch.concat: "cat",
    torch.stack: "stack",
    F.scaled_dot_product_attention: "sdpa",
}
METHODS = {
    **{m: m for m in ("add", "sub", "mul", "div", "matmul", "transpose", "permute", "softmax")},
    **{m: m for m in ("sum", "mean", "var", "masked_fill", "split", "unbind")},
    "bmm": "matmul",
    "swapaxes": "transpose",
    "t": "mT",
    "chunk": "split",
    **{m: "reshape" for m in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze")},
    **{m: "reshape" for m in ("contiguous", "clone", "view_as", "reshape_as")},
    **{m: "cast" for m in ("to", "float", "double", "type", "type_as")},
    **{m: "expand" for m in ("expand", "expand_as", "broadcast_to")},
    **{m: "elementwise" for m in _ELEMENTWISE},
}
_aten = torch.ops.aten
_ATEN_ELEMENTWISE = (*_ELEMENTWISE, "gelu", "silu", "leaky_relu", "elu", "softplus", "mish")
#: ATen operations (torch.export's graphs), by overload packet.
ATEN = {
    **{getattr(_aten, n): n for n in ("add", "sub", "mul", "div", "addmm", "linear", "expand")},
    **{getattr(_aten, n): n for n in ("transpose", "permute", "split", "unbind", "slice")},
    **{getattr(_aten, n): n for n in ("select", "where", "masked_fill", "dropout", "sum")},
    **{getattr(_aten, n): n for n in ("mean", "var", "cat", "stack")},
    **{getattr(_aten, n): "matmul" for n in ("mm", "bmm", "matmul")},
    **{getattr(_aten, n): "reshape" for n in ("view", "reshape", "_unsafe_view", "unsqueeze")},
    **{getattr(_aten, n): "reshape" for n in ("squeeze", "clone", "contiguous", "flatten")},
    **{getattr(_aten, n): "reshape" for n in ("alias", "unflatten")},
    **{getattr(_aten, n): "cast" for n in ("to", "_to_copy")},
    _aten.split_with_sizes: "split",
    _aten.chunk: "split",
    _aten.t: "mT",
    _aten.softmax: "aten softmax",
    _aten.layer_norm: "aten layer_norm",
    _aten.einsum: "aten einsum",
    _aten.scaled_dot_product_attention: "sdpa",
    **{getattr(_aten, n): "elementwise" for n in _ATEN_ELEMENTWISE},
}
#: Modules by exact type (a subclass may compute something else).
MODULES = {
    nn.Linear: "linear",
    nn.LayerNorm: "layer_norm",
    nn.Softmax: "softmax",
    **{m: "identity" for m in IDENTITIES if m is not nn.Dropout},
    nn.Dropout: "dropout",
    **{m: "elementwise" for m in ELEMENTWISE_MODULES if m not in IDENTITIES},
}


def op_of(node, model):
    """``(Op, arguments)`` of a node, its arguments bound by name to nodes or constants,
    or ``(None, why)`` where the table has no such operation."""
    name, args, kwargs = _spelling(node, model)
    if name is None:
        return None, f"{describe(node)} has no batched product here"
    # (in-place functions and methods: the section graph refuses them, see in_place)
    if getattr(_module(node, model), "inplace", False):
        return None, f"{describe(node)} works in place"
    op = OPS[name]
    try:
        return op, op.bind(args, kwargs)
    except TypeError:
        return None, f"{describe(node)} is called with arguments the table does not know"


def _spelling(node, model):
    """The table's name of a node's operation and the arguments to bind."""
    if node.op == "call_function":
        if node.target is builtins.getattr and node.args[1] in ("T", "mT", "mH"):
            return ("T" if node.args[1] == "T" else "mT"), node.args[:1], {}
        name = FUNCTIONS.get(node.target)
        packet = getattr(node.target, "overloadpacket", None)
        return name if packet is None else ATEN.get(packet), node.args, node.kwargs
    if node.op == "call_method":
        return METHODS.get(node.target), node.args, node.kwargs
    if node.op == "call_module":
        return _module_spelling(model.get_submodule(node.target), node)
    return None, (), {}


def _module_spelling(module, node):
    name = MODULES.get(type(module))
    args, kwargs = node.args, dict(node.kwargs)
    if name == "linear":
        return name, (*args, module.weight, module.bias), kwargs
    if name == "layer_norm":
        extra = (module.normalized_shape, module.weight, module.bias, module.eps)
        return name, (*args, *extra), kwargs
    if name == "softmax":
        return name, (*args, module.dim), kwargs
    if name == "dropout":
        return name, (*args, module.p, module.training), kwargs
    return name, args, kwargs


def _module(node, model):
    return model.get_submodule(node.target) if node.op == "call_module" else None


def describe(node):
    """How the plan names a node's operation."""
    if node.op == "call_module":
        return f"the module {node.target!r}"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
    return f"the operation {target!r}"
