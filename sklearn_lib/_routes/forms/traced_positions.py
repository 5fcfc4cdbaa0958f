"""Exact rows kept per output position through the position-wise part of a traced section.

The exact rows of a section with ``P`` output positions are ``e_t (x) c_i``:
one per output position ``t`` and next feature ``i``, ``P k`` in all.  Going
back through a position-wise operation (a linear map on the features, a
LayerNorm, an MLP's nonlinearity, a residual add), row ``(t, i)`` stays zero
at every position but ``t``.  So, until the rows meet an operation that mixes
positions (attention's products over positions), the ``P k`` rows are held
as ``k`` *diagonal* rows (:class:`Diagonal`): row ``i`` holds, at every
entry, the value of the row ``(t, i)`` whose position ``t`` that entry
belongs to.  Sent back through a position-wise operation's ordinary product,
a diagonal row gives the diagonal row of the operation's input: the MLP of a
transformer block costs ``k`` rows instead of ``P k``.

Which entries belong to which output position is a *position map*: an
integer tensor broadcastable to the node's value (``-1`` where no row
reaches).  :func:`position_map` carries it back through one operation,
argument by argument: in attention's ``A @ v`` the pattern ``A`` keeps its
query's position (the product sums over features) while ``v`` is read at
every query.  The products of the arguments that mix positions are made
later from the whole rows (:meth:`Diagonal.dense`), chunk by chunk, and go
on as any rows do; the rest go on per position.  So in a transformer block
only the keys' and values' paths back to the block's input take whole rows.
"""

from dataclasses import dataclass

import torch

from ..._core.nodes import n_positions
from .traced_ops import basic_index, flat, reduced_dims, shape_of, wanted_indices
from .traced_pending import Pending, Pieces

#: Operations that act entry by entry on the arguments of the result's shape.
_ENTRYWISE = frozenset({"elementwise", "identity", "dropout", "add", "sub", "mul", "div"})
_ENTRYWISE |= {"where", "masked_fill", "expand", "cast"}
#: The arguments of a linear map (a weight on the last axis) that hold rows.
_LINEAR = {"linear": ("input", None), "addmm": ("mat1", "input"), "matmul": ("input", None)}


@dataclass(frozen=True)
class Diagonal:
    """``k`` rows that stand for ``P k`` exact rows (see the module docstring).

    Attributes
    ----------
    rows : torch.Tensor of shape (k, *shape)
        ``shape`` broadcastable to the node's value.
    positions : torch.Tensor
        The node's position map, broadcastable to its value.
    """

    rows: torch.Tensor
    positions: torch.Tensor

    def dense(self, start, stop):
        """Exact rows ``start:stop`` (row ``t * k + i``), ``(stop - start, *shape)``."""
        k = self.rows.shape[0]
        parts = []
        for t in range(start // k, (stop - 1) // k + 1):  # rows of one position at a time
            first, last = max(start, t * k) - t * k, min(stop, (t + 1) * k) - t * k
            at = (self.positions == t).to(self.rows.dtype)
            parts.append(self.rows[first:last] * at)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def whole_rows(terms, start, stop):
    """The whole rows ``start:stop`` of a node's per-position cotangents (a list of
    :class:`Diagonal`, or a split's pieces ``{i: list}``), as a list of tensors."""
    if isinstance(terms, dict):
        return {i: whole_rows(t, start, stop) for i, t in terms.items()}
    return [term.dense(start, stop) for term in (terms if isinstance(terms, list) else [terms])]


def merged(parts):
    """One node's per-position cotangents made by chunks of rows, joined along the rows:
    ``parts`` are alike (a :class:`Diagonal`, a list of them, or a split's pieces)."""
    first = parts[0]
    if isinstance(first, dict):
        return {i: merged([p[i] for p in parts]) for i in first}
    if isinstance(first, list):
        return [merged([p[j] for p in parts]) for j in range(len(first))]
    if len(parts) == 1:
        return first
    return Diagonal(torch.cat([p.rows for p in parts]), first.positions)


def nbytes(terms):
    """Bytes of the rows of per-position cotangents (a :class:`Diagonal`, a list, pieces)."""
    if isinstance(terms, dict):
        return sum(nbytes(t) for t in terms.values())
    if isinstance(terms, list):
        return sum(nbytes(t) for t in terms)
    return terms.rows.numel() * terms.rows.element_size()


def as_diagonal(grad, positions):
    """A product's result, per position with the map ``positions`` (each piece of a split)."""
    if isinstance(grad, dict):
        return {i: as_diagonal(g, positions) for i, g in grad.items()}
    return Diagonal(grad.materialize() if isinstance(grad, Pending) else grad, positions)


def joined_pieces(terms, op, a, out):
    """A split's per-position pieces ``{i: terms}`` joined into its input's
    :class:`Diagonal` by the split's product ``op``, or None where a piece's terms reach two
    output positions (or ``op`` is no split)."""
    pieces = {i: diagonal_sum(t) for i, t in terms.items()}
    if any(p is None for p in pieces.values()) or op.name not in ("split", "unbind"):
        return None
    joined = op.vjp(a, out, {i: p.rows for i, p in pieces.items()}, None, frozenset({"input"}))
    rows = joined["input"]
    rows = rows.materialize() if isinstance(rows, Pieces) else rows
    return Diagonal(rows, pieces_map(op.name, a, out, {i: p.positions for i, p in pieces.items()}))


def output_positions(shape, device):
    """The position map of a section's end of per-sample ``shape`` (features last):
    position-major over the axes before the features, as exact rows are numbered."""
    return torch.arange(n_positions(shape), device=device).reshape(1, *shape[:-1], 1)


def diagonal_sum(terms):
    """The sum of :class:`Diagonal` terms of one node, or None where their maps differ
    (an entry that reaches two output positions: the rows are then made whole)."""
    terms = terms if isinstance(terms, list) else [terms]
    first = terms[0].positions
    total = terms[0].rows
    for term in terms[1:]:
        if not _same_map(first, term.positions):
            return None
        total = total + term.rows
    return Diagonal(total, first)


def _same_map(a, b):
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return torch.equal(a.expand(shape), b.expand(shape))


def position_map(op, a, out, positions, wanted):
    """The position map of each wanted argument of a node, ``{name: map or None}``: None
    for an argument whose product mixes positions (its rows are then made whole).

    Parameters
    ----------
    op : str
        The operation's name in the table (:data:`~.traced_ops.OPS`).
    a : dict
        Its bound argument values.
    out : torch.Tensor or tuple of torch.Tensor
        Its value.
    positions : torch.Tensor
        Its position map, broadcastable to ``out`` (as many axes).
    wanted : frozenset of str
        The arguments that depend on the section's start (``name#i`` in lists).
    """
    maps = _maps(op, a, out, positions, wanted) or {}
    return {name: maps.get(name) for name in wanted}


def _maps(op, a, out, positions, wanted):
    if any("#" in name for name in wanted):
        return _einsum_maps(op, a, positions, wanted)
    if op in _ENTRYWISE:
        return {name: _unbroadcast(positions, shape_of(a[name]), out.shape) for name in wanted}
    if op in _LINEAR or op == "sdpa":
        return _product_maps(op, a, out, positions)
    if op in ("layer_norm", "softmax"):
        dims = _normalized(a) if op == "layer_norm" else (a["dim"] % out.ndim,)
        return {"input": _constant_along(positions, dims)}
    if op in ("sum", "mean", "var"):
        return {"input": _spread(positions, a, out)}
    if op == "reshape":
        return {"input": positions.expand(out.shape).reshape(a["input"].shape)}
    if op in ("transpose", "permute", "T", "mT"):
        return {"input": positions.permute(_inverse(op, a, out.ndim))}
    if op in ("getitem", "slice", "select"):
        return _index_map(op, a, out, positions)
    return None


def _unbroadcast(positions, shape, logical):
    """The map of an argument of ``shape`` broadcast to ``logical``: the result's map where
    it is constant along the broadcast axes, else None."""
    shape, logical = tuple(shape), tuple(logical)
    extra = len(logical) - len(shape)
    dims = [i for i in range(len(logical)) if i < extra or (shape[i - extra] == 1 < logical[i])]
    reduced = _constant_along(positions, dims)
    if reduced is None:
        return None
    return reduced.reshape(reduced.shape[extra:]) if extra > 0 else reduced


def _constant_along(positions, dims):
    """``positions`` of size 1 along ``dims``, or None where it varies along one of them."""
    for d in dims:
        if positions.shape[d] == 1:
            continue
        first = positions.narrow(d, 0, 1)
        if not torch.equal(positions, first.expand(positions.shape)):
            return None
        positions = first
    return positions


def _product_maps(op, a, out, positions):
    """A product over the last axis: each row of the rows operand reaches its row of the
    result alone (the result's map constant along its last axis); in ``x @ y``, each column
    of ``y`` reaches a column (the map constant along the rows); attention's query, as its
    rows.  A bias, as an entrywise term; a weight or a key, mixing."""
    last = out.ndim - 1
    rows, bias = _LINEAR.get(op, ("query", None))
    maps = {rows: _constant_along(positions, [last])}
    x = a[rows]
    if x.ndim < 2 or x.shape[:-1] != out.shape[:-1]:
        maps[rows] = None  # a vector, or rows broadcast (a query pooled over positions)
    if op == "matmul":
        y = a["other"]
        if y.ndim >= 2 and out.ndim >= 2 and y.shape[:-2] == out.shape[:-2]:
            maps["other"] = _constant_along(positions, [last - 1])
    if bias is not None and a.get(bias) is not None:
        maps[bias] = _unbroadcast(positions, shape_of(a[bias]), out.shape)
    return maps


def _normalized(a):
    n = len(tuple(a["normalized_shape"]))
    ndim = a["input"].ndim
    return tuple(range(ndim - n, ndim))


def _spread(positions, a, out):
    """The map of a reduction's input: each entry reaches the entry it is summed into."""
    if not a["keepdim"]:
        for d in reduced_dims(a["dim"], a["input"].ndim):
            positions = positions.unsqueeze(d)
    return positions


def _inverse(op, a, ndim):
    """The permutation that takes the result's axes back to the input's."""
    order = list(range(ndim))
    if op == "transpose":
        d0, d1 = a["dim0"] % ndim, a["dim1"] % ndim
        order[d0], order[d1] = order[d1], order[d0]
        return order
    if op == "T":
        return order[::-1]
    if op == "mT":
        order[-1], order[-2] = order[-2], order[-1]
        return order
    dims = a["dims"]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return sorted(range(ndim), key=lambda i: dims[i] % ndim)


def _index_map(op, a, out, positions):
    """The map of an indexed input: the result's where it is read, -1 (no row) elsewhere."""
    x = a["input"]
    if not isinstance(x, torch.Tensor):
        return {"input": positions}  # a piece of a split, mapped as it is
    index = basic_index(op, a)
    if index is None:
        return None
    spread = torch.full(x.shape, -1, dtype=positions.dtype, device=positions.device)
    spread[index] = positions.expand(out.shape)
    return {"input": spread}


def _einsum_maps(op, a, positions, wanted):
    """Each operand of a two-operand einsum, the other held constant: its entries reach the
    result's entries that share its labels, which must share one position (the map
    constant along the labels it lacks)."""
    if op != "einsum":
        return None
    operands = flat(a["operands"])
    equation = a["equation"].replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if len(operands) != 2 or not arrow or "." in equation or len(set(rhs)) != len(rhs):
        return None
    sizes = dict(zip(rhs, _einsum_sizes(inputs, operands, rhs)))
    return {f"operands#{i}": _einsum_map(inputs[i], operands[i].shape, rhs, sizes, positions)
            for i in wanted_indices(wanted, "operands")}  # fmt: skip


def _einsum_sizes(inputs, operands, rhs):
    """The size of each result label: the largest any operand gives it (einsum broadcasts)."""
    found = {}
    for labels, operand in zip(inputs, operands):
        for c, n in zip(labels, operand.shape):
            found[c] = max(found.get(c, 1), n)
    return [found.get(c, 1) for c in rhs]


def _einsum_map(own, shape, rhs, sizes, positions):
    if len(set(own)) != len(own):
        return None
    if any(n != sizes[c] for c, n in zip(own, shape) if c in sizes):
        return None  # broadcast along a label: each entry reaches many positions
    reduced = _constant_along(positions, [j for j, c in enumerate(rhs) if c not in own])
    if reduced is None:
        return None
    sizes = dict(zip(rhs, reduced.shape))
    kept = reduced.permute(
        [rhs.index(c) for c in own if c in rhs] + [j for j, c in enumerate(rhs) if c not in own]
    )
    kept = kept.reshape([sizes[c] for c in own if c in rhs])
    for j, c in enumerate(own):
        if c not in rhs:  # summed: every entry reaches the same positions
            kept = kept.unsqueeze(j)
    return kept


def pieces_map(op, a, out, maps):
    """The map of a split's input from its pieces' maps ``{i: map}``.  A piece without rows
    is zero in every row: any map is its map, and a sibling's keeps the joined map constant
    where theirs are (the features of a fused ``q, k, v`` projection)."""
    dim = a["dim"] % a["input"].ndim
    some = next(iter(maps.values()))
    full = []
    for i, piece in enumerate(out):
        if i in maps:
            full.append(maps[i].expand(piece.shape))
        elif _broadcasts(some, piece.shape):  # no rows there: any map, one that keeps others'
            full.append(some.expand(piece.shape))
        else:
            full.append(torch.full_like(piece, -1, dtype=some.dtype))
    return torch.stack(full, dim) if op == "unbind" else torch.cat(full, dim)


def _broadcasts(positions, shape):
    try:
        return torch.broadcast_shapes(positions.shape, shape) == tuple(shape)
    except RuntimeError:
        return False
