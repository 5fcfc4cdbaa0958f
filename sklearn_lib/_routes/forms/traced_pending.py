"""Pending contractions: a cotangent kept as "rows contracted with a per-sample value".

In attention, the cotangent of ``v`` is ``P^T g`` (the attention pattern
``P`` of each sample times each row's ``g``), and the next node back is
``v = x W_V``: the rows of ``x`` are ``P^T g W_V^T``.  Made in that order,
the weight meets every row of every sample (``R n P h e d`` products); made
as ``P^T (g W_V^T)``, or with ``k W_Q^T`` formed once per batch for the
query path, it meets far fewer.  So a product of two tensors that both
depend on the section's start hands back a :class:`Pending` cotangent,
two operands and their einsum labels, and the weight of a linear map met
later joins it as a third operand: the cheapest pair is contracted first.
Permutes, transposes and reshapes that keep labels whole pass through it;
anything else makes it into a tensor (:meth:`Pending.materialize`).
"""

import contextlib
import math
import string
import threading
from dataclasses import dataclass, replace

import torch

#: The most elements a folded product may hold where its operands hold fewer (8M: 64 MiB
#: in float64, the rows' own chunk budget).
JOINED_ELEMENTS = 1 << 23
#: The label of the row axis; the others are taken from the rest of the alphabet.
ROW = "a"
LABELS = string.ascii_letters.replace(ROW, "")


_FOLDS = threading.local()


@contextlib.contextmanager
def folds_kept(kept):
    """Keep each product of a value and a weight in the dict ``kept`` (it does not depend on
    the rows): with one dict for all chunks of a batch's rows, it is made once per batch."""
    before, _FOLDS.kept = getattr(_FOLDS, "kept", None), kept
    try:
        yield
    finally:
        _FOLDS.kept = before


def _joined(equation, a, b):
    """``einsum(equation, a, b)``, kept while :func:`folds_kept` is on where no rows take part."""
    if ROW in equation:
        return torch.einsum(equation, a, b)
    # a and b are kept alive with the result, so that their memory stays theirs.
    key = ("einsum", equation, _where(a), _where(b))
    return _kept(key, lambda: (torch.einsum(equation, a, b), a, b))[0]


def contract(rows, rl, value, vl, out):
    """``einsum(rl + ',' + vl + '->' + out, rows, value)``, as one batched matrix product
    where it is one (:func:`matmul_form`)."""
    form = matmul_form(rows, rl, value, vl, out)
    if form is None:
        return torch.einsum(f"{rl},{vl}->{out}", rows, value)
    _, lhs, (key, rhs), product = form
    return product(lhs(), _kept(key, rhs))


def matmul_form(rows, rl, value, vl, out):
    """``(signature, lhs, rhs, product)`` with ``product(lhs(), rhs())`` the einsum, or None.

    ``lhs()`` is ``(*batch, left, summed)``, and ``rhs = (key, make)`` makes
    ``(*batch, summed, right)`` from the value, kept under ``key`` while
    :func:`folds_kept` is on: laid out once per batch.  Terms of
    one signature differ only in what they sum over: concatenated along it, they make
    their sum in one product (:func:`sum_of`).  The result is laid out batch axes (the
    samples) first.
    """
    own_r, own_v = dict(zip(rl, rows.shape)), dict(zip(vl, value.shape))
    # An axis one operand only broadcasts (size 1: the rows of all samples, say) is the
    # other's own: a batch axis would copy the broadcast operand once per sample into
    # many small products, where one large product serves.
    for c in set(own_r) & set(own_v) & set(out):
        if own_r[c] == 1 < own_v[c]:
            del own_r[c]
        elif own_v[c] == 1 < own_r[c]:
            del own_v[c]
    batch = [c for c in out if c in own_r and c in own_v]
    left = [c for c in out if c in own_r and c not in own_v]
    right = [c for c in out if c in own_v and c not in own_r]
    summed = [c for c in rl if c in own_v and c not in out]
    plain = len(set(rl)) == len(rl) and len(set(vl)) == len(vl) and len(out) == len(set(out))
    if not plain or any(own_r[c] != own_v[c] for c in summed) or set(out) - set(rl + vl):
        return None
    if set(rl + vl) - set(out) - set(summed):
        return None  # a label summed within one operand
    sizes = [(own_r[c], own_v[c]) for c in batch]
    # Labels are each term's own: what makes terms alike is each output axis' kind and size.
    signature = tuple((c in own_r, c in own_v, own_r.get(c), own_v.get(c)) for c in out)
    key = ("layout", _where(value), vl, tuple(batch), tuple(summed), tuple(right))

    shape = [max(r, v) for r, v in sizes]
    # The result's last axis is laid out last in memory (lhs^T rhs^T where it is the
    # rows'): terms then add up along contiguous rows, and a Gram reads them as they lie.
    flip = bool(left) and out[-1] == left[-1]

    def product(lhs, rhs):
        if flip:
            made, labels = rhs.mT @ lhs.mT, batch + right + left
        else:
            made, labels = lhs @ rhs, batch + left + right
        own = {**own_r, **own_v}
        made = made.reshape(*shape, *(own[c] for c in labels[len(batch) :]))
        return made.permute([labels.index(c) for c in out])

    return (
        signature,
        lambda: _grouped(rows, rl, batch, left, summed),
        (key, lambda: _grouped(value, vl, batch, summed, right)),
        product,
    )


def _grouped(t, labels, batch, first, second):
    """``t`` as ``(*batch, prod first, prod second)`` (batch axes kept: they broadcast);
    its axes of size 1 named in none of them dropped."""
    named = batch + first + second
    dropped = [i for i, c in enumerate(labels) if c not in named]
    if dropped:
        t, labels = t.squeeze(dropped), "".join(c for c in labels if c in named)
    own = dict(zip(labels, t.shape))
    t = t.permute([labels.index(c) for c in named])
    return t.reshape(*(own[c] for c in batch), math.prod(own[c] for c in first),
                     math.prod(own[c] for c in second))  # fmt: skip


def _kept(key, make):
    """``make()``, kept under ``key`` while :func:`folds_kept` is on."""
    kept = getattr(_FOLDS, "kept", None)
    if kept is None:
        return make()
    if key not in kept:
        kept[key] = make()
    return kept[key]


def _where(t):
    """What identifies a tensor's values: a view made anew (a reshaped weight) is the same."""
    return t.data_ptr(), tuple(t.shape), t.stride(), t.dtype


@dataclass(frozen=True)
class Pending:
    """``scale * einsum(rows, value)`` with output axes ``groups`` (each a run of labels).

    Attributes
    ----------
    rows : torch.Tensor
        The operand with the row axis (labelled :data:`ROW`, first).
    rows_labels, value_labels : str
    value : torch.Tensor
        The operand without it (a per-sample value, or a weight folded into one).
    groups : tuple of str
        The labels of each axis of the result after the row axis; a group of
        several labels is their axes merged in order.
    scale : float
    """

    rows: object
    rows_labels: str
    value: object
    value_labels: str
    groups: tuple
    scale: float = 1.0

    def sizes(self):
        """Each label's size (the larger where one operand broadcasts it)."""
        return _sizes((self.rows, self.rows_labels), (self.value, self.value_labels))

    @property
    def shape(self):
        sizes = self.sizes()
        return (self.rows.shape[0], *(math.prod(sizes[c] for c in g) for g in self.groups))

    def materialize(self):
        """The cotangent as a tensor, ``(R, *shape)``."""
        out = ROW + "".join(self.groups)
        result = contract(self.rows, self.rows_labels, self.value, self.value_labels, out)
        result = result.reshape(self.shape)
        return result if self.scale == 1.0 else result * self.scale

    def form(self):
        """:func:`matmul_form` of the cotangent, the scale taken into the rows."""
        rows = self.rows if self.scale == 1.0 else self.rows * self.scale
        out = ROW + "".join(self.groups)
        return matmul_form(rows, self.rows_labels, self.value, self.value_labels, out)

    def scaled(self, factor):
        return replace(self, scale=self.scale * factor)

    def permuted(self, order):
        """The cotangent of the input of ``permute(order)``: axis ``order[j]`` was axis ``j``."""
        groups = [None] * len(order)
        for j, i in enumerate(order):
            groups[i] = self.groups[j]
        return replace(self, groups=tuple(groups))

    def reshaped(self, shape):
        """The cotangent viewed as ``(R, *shape)``, or None where a label would be cut."""
        sizes, labels, groups = self.sizes(), [c for g in self.groups for c in g], []
        i = 0
        for n in shape:
            group, size = "", 1
            while i < len(labels) and size < n:
                size, group, i = size * sizes[labels[i]], group + labels[i], i + 1
            if size != n:
                return None
            groups.append(group)
        if i < len(labels):  # labels of size 1 left over
            if not groups or any(sizes[c] != 1 for c in labels[i:]):
                return None
            groups[-1] += "".join(labels[i:])
        return replace(self, groups=tuple(groups))


def sum_of(terms):
    """The sum of cotangents (tensors and :class:`Pending`), each alike pending pair made in
    one product: their summed axes concatenated."""
    alike, fresh, others = {}, [], []
    for term in terms:
        form = term.form() if isinstance(term, Pending) else None
        if form is not None:
            alike.setdefault(form[0], []).append((term, form))
        elif isinstance(term, Pending):
            fresh.append(term.materialize())
        else:
            others.append(term)  # a tensor another node may hold too: never changed
    for group in alike.values():
        (term, (_, _, _, product)), shape = group[0], group[0][0].shape
        lhs = torch.cat([form[1]() for _, form in group], -1)
        keys = tuple(form[2][0] for _, form in group)
        rhs = _kept(keys, lambda group=group: torch.cat([_kept(*f[2]) for _, f in group], -2))
        fresh.append(product(lhs, rhs).reshape(shape))
    # Fresh tensors are this sum's own: the others are added to one of them in place.
    total, owned = (fresh.pop(), True) if fresh else (others.pop(), False)
    for term in fresh + others:
        if owned and torch.broadcast_shapes(total.shape, term.shape) == total.shape:
            total.add_(term)
        else:
            total, owned = total + term, True
    return total


def pending_product(g, g_sub, value, value_sub, target_sub):
    """``einsum(g, value)`` onto ``target_sub`` as a :class:`Pending` (``g`` has the row axis
    first, not in ``g_sub``); the subscripts are the caller's letters, relabelled here."""
    relabel = {c: LABELS[i] for i, c in enumerate(sorted(set(g_sub + value_sub + target_sub)))}
    return Pending(
        g,
        ROW + "".join(relabel[c] for c in g_sub),
        value,
        "".join(relabel[c] for c in value_sub),
        tuple(relabel[c] for c in target_sub),
    )


def fold(p, weight, w_sub, out_sub, in_sub):
    """The cotangent of ``y`` where ``u = einsum(in_sub + ',' + w_sub -> out_sub)(y, weight)``
    and ``p`` is ``u``'s: the weight joins the contraction, cheapest pair first.

    Returns None where ``p``'s axes do not match ``out_sub`` one to one.
    """
    if len(out_sub) != len(p.groups):
        return None
    mapping = dict(zip(out_sub, p.groups))
    used = set(p.rows_labels + p.value_labels)
    fresh = iter(c for c in LABELS if c not in used)
    for c in in_sub + w_sub:
        mapping.setdefault(c, next(fresh))
    sizes = p.sizes()
    w_shape = []
    for c, n in zip(w_sub, weight.shape):
        group = mapping[c]
        w_shape += [sizes[x] for x in group] if len(group) > 1 else [n]
    if math.prod(w_shape) != weight.numel():
        return None
    w_labels = "".join(mapping[c] for c in w_sub)
    groups = tuple(mapping[c] for c in in_sub)
    return _cheapest(p, weight.reshape(w_shape), w_labels, groups)


def _cheapest(p, weight, w_labels, groups):
    """Contract the pair of (rows, value, weight) that makes the whole cheapest, or None
    where contracting rows and value first (then the weight) is no dearer."""
    out = set("".join(groups))
    operands = {
        "rows": (p.rows, p.rows_labels),
        "value": (p.value, p.value_labels),
        "weight": (weight, w_labels),
    }
    u_labels = ROW + "".join(p.groups)
    best = (_pair_cost(operands["rows"], operands["value"], u_labels, operands["weight"]),)
    # An order whose first product outgrows its operands (the weight's width times a
    # value of many positions) would hold more than the pass does: memory caps it.
    limit = max(JOINED_ELEMENTS, *(t.numel() for t, _ in operands.values()))
    for first, second, third in (("value", "weight", "rows"), ("rows", "weight", "value")):
        a, b, c = operands[first], operands[second], operands[third]
        keep = "".join(dict.fromkeys(x for x in a[1] + b[1] if x in out or x in c[1] or x == ROW))
        size = _sizes(a, b)
        if math.prod(size[x] for x in keep) > limit:
            continue
        cost = _pair_cost(a, b, keep, c)
        if cost < best[0]:
            best = (cost, first, second, third, keep)
    if len(best) == 1:
        return None
    _, first, second, third, keep = best
    (a, la), (b, lb) = operands[first], operands[second]
    joined = _joined(f"{la},{lb}->{keep}", a, b)
    other, lo = operands[third]
    if first == "rows":
        return Pending(joined, keep, other, lo, groups, p.scale)
    return Pending(other, lo, joined, keep, groups, p.scale)


def _sizes(*operands):
    """Each label's size over ``(tensor, labels)`` operands (the larger where one broadcasts)."""
    found = {}
    for tensor, labels in operands:
        for label, n in zip(labels, tensor.shape):
            found[label] = max(found.get(label, 1), n)
    return found


def _pair_cost(a, b, keep, c):
    """Products of ``einsum(a, b -> keep)`` and then of that with ``c``."""
    first = _sizes(a, b)
    second = {**_sizes(c), **{x: max(first[x], _sizes(c).get(x, 1)) for x in keep}}
    return math.prod(first.values()) + math.prod(second[x] for x in set(keep + c[1]))


@dataclass(frozen=True)
class Pieces:
    """A cotangent made of pieces along its last axis, as a split's input receives them:
    ``{offset: tensor}``, zero between them.

    A linear map met next takes each piece with its own columns of the weight
    (``sum_i g_i W_i``), with no joined copy and no products of the zeros of a
    piece without rows (the query of a fused ``q, k, v`` projection, whose
    rows came another way); anything else joins them
    (:meth:`materialize`).

    Attributes
    ----------
    parts : tuple of (int, torch.Tensor)
        Each piece's offset along the last axis and its cotangent, ``(R, ..., size)``.
    width : int
        The last axis' full size.
    """

    parts: tuple
    width: int

    @property
    def shape(self):
        return (*self.parts[0][1].shape[:-1], self.width)

    def materialize(self):
        """The cotangent as one tensor, zeros between the pieces."""
        first = self.parts[0][1]
        joined = first.new_zeros(torch.broadcast_shapes(*(t.shape[:-1] for _, t in self.parts))
                                 + (self.width,))  # fmt: skip
        for offset, t in self.parts:
            joined[..., offset : offset + t.shape[-1]] = t
        return joined

    def reshaped(self, shape):
        """The cotangent viewed as ``(R, *shape)`` where the last axis is kept, else None."""
        if shape[-1] != self.width:
            return None
        rows = self.parts[0][1].shape[0]
        parts = tuple(
            (offset, t.expand(*self.shape[:-1], t.shape[-1]).reshape(rows, *shape[:-1], -1))
            for offset, t in self.parts
        )  # fmt: skip
        return Pieces(parts, self.width)

    def times(self, weight):
        """``g @ weight`` for a weight ``(width, out)``: each piece with its rows of it."""
        total = None
        for offset, t in self.parts:
            part = t @ weight[offset : offset + t.shape[-1]]
            total = part if total is None else total.add_(part)
        return total
