"""The products every route shares: Grams of rows, directional derivatives, chunks, probes.

A route gives a section's Jacobian *rows* (or its Gram, or its directional
derivatives, where a closed form has them); these functions turn rows into
what LIB sums, in bounded memory, and call a closed form for one kind of
product (:func:`form_rows`, :func:`form_gram`, :func:`form_directional`).
"""

import torch

from .._core.gram_sum import GramSum
from .._core.numerics import CHUNK_ELEMENTS
from .._model.inputs import attention_mask, valid_positions
from .autograd import quadrature_sum
from .cotangents import ExactRows, SampledRows

#: The products a route serves: rows, their Gram, and directional derivatives.
KINDS = ("rows", "gram", "tangents")


def form_rows(form, x, points, rows, weights, n_samples):
    """Integrated rows of a closed form ``(r, n or 1, P_in, d)``, or NotImplemented."""
    with torch.no_grad():
        g = form.vjp(x, points, rows)
    return g if g is NotImplemented else integrated(g, weights, n_samples)


def integrated(g, weights, n_samples):
    """Rows at every point ``(r, A*n or 1, *positions, d)`` summed over the rule:
    ``(r, n or 1, P_in, d)``."""
    g = g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])
    if g.shape[1] == 1:  # the same at every point
        return g * weights.sum().to(g.dtype)
    return quadrature_sum(g, weights, n_samples)


def form_gram(form, x, points, weights, rows):
    """A closed form's float64 Gram of the integrated rows, or NotImplemented."""
    if isinstance(rows, (ExactRows, SampledRows)) and not form.exact_rows:
        rows = rows[:]  # a closed form takes all at once, unless it says otherwise
    with torch.no_grad():
        gram = form.gram(x, points, weights, rows)
    return gram if gram is NotImplemented else gram.to(torch.float64)


def form_directional(form, x, points, rows, weights, tangents):
    """A closed form's directional derivatives ``(R, n, J)``, integrated over the rule."""
    directions, coefficients = (t.to(points.dtype) for t in tangents)
    n = coefficients.shape[0]
    total = 0
    for a in range(weights.shape[0]):
        with torch.no_grad():
            part = form.vjp(
                x, points[a * n : (a + 1) * n], rows, tangents=(directions, coefficients)
            )
        if part is NotImplemented:
            return part
        total = total + weights[a].to(part.dtype) * part
    return total.to(torch.float64)


def form_square_sums(form, x, points, rows, weights, tangents):
    """Square sums ``(R, J)`` of a closed form's directional derivatives, chunked by rows."""
    # Squared and summed chunk by chunk: the derivatives of all rows at once
    # would take R * n * J numbers (2 GiB at 256 rows, 4096 samples, 256 features).
    sums = new_sums(rows.shape[0], tangents[0].shape[0], points.device)
    for start, stop in row_chunks(points, rows):
        out = form_directional(form, x, points, rows[start:stop], weights, tangents)
        sums[start:stop] = (out**2).sum(1)
    return sums


def masked(x, points, rows):
    """Whether padding applies to a section with these input points and cotangent rows."""
    mask = attention_mask(x)
    if mask is None:
        return False
    output_positions = rows.shape[1]  # (R, P_out, d_next): positions flattened
    return valid_positions(x, points.shape[1:]) is not None or output_positions == mask[0].numel()


def masked_inputs(chunks, x, shape):
    """Chunks of rows ``(r, n, P_in, d)`` with padded input positions zeroed: they count
    nowhere (activations of per-sample ``shape``; unchanged without padding)."""
    valid = valid_positions(x, shape)
    if valid is None:
        return chunks
    view = valid.reshape(1, valid.shape[0], -1, 1)
    return (g * view.to(g.dtype) for g in chunks)


def new_sums(n_rows, n_directions, device):
    """The ``(R, J)`` float64 tensor that square sums are written into, chunk by chunk.

    One tensor made first, not a list of small ones joined at the end: small
    tensors that outlive each chunk's large temporaries fragment the
    allocator's heap, which then grows by every chunk (measured: a peak of
    2.5 GiB instead of 0.6 GiB for 256 rows of 4096 samples of width 256).
    """
    return torch.empty(n_rows, n_directions, dtype=torch.float64, device=device)


def square_sums_of(chunks, tangents, n_rows):
    """:func:`square_sums` of every chunk of rows, written into one ``(R, J)`` tensor."""
    directions, coefficients = tangents
    sums = new_sums(n_rows, directions.shape[0], coefficients.device)
    start = 0
    for g in chunks:
        sums[start : start + g.shape[0]] = square_sums(g, *tangents)
        start += g.shape[0]
    return sums


def offered(chunks, keep):
    """``chunks`` passed through, each offered to ``keep`` until it declines one."""
    taking = True
    for g in chunks:
        taking = taking and keep(g)
        yield g


def row_chunks(points, rows):
    """Chunks of rows that hold a few times ``points.numel()`` elements at once."""
    chunk = max(1, CHUNK_ELEMENTS // max(points.numel(), 1))
    return [(s, min(s + chunk, rows.shape[0])) for s in range(0, rows.shape[0], chunk)]


def fold_positions(points):
    """Alpha-major points ``(A*n, *positions, d)`` as one-position points ``(A*n*P, 1, d)``."""
    return points.reshape(-1, 1, points.shape[-1])


def probe_rows(rows, n_combinations):
    """The first row and seeded random +-1 combinations of all rows.

    Jacobian products are linear in the cotangent, so a combination of every
    row tests every output position and feature at once: a closed form wrong
    at any of them fails the check.
    """
    generator = torch.Generator().manual_seed(0)
    signs = 2 * torch.randint(0, 2, (n_combinations, rows.shape[0]), generator=generator) - 1
    if isinstance(rows, ExactRows):
        mixed = rows.combine(signs.to(rows.device))
    else:
        mixed = (signs.to(rows) @ rows.flatten(1)).view(n_combinations, *rows.shape[1:])
    return torch.cat([rows[:1], mixed])


def gram_of(chunks, n_samples, d):
    """``sum g g^T`` over chunks of rows ``(r, n or 1, P, d)``, float64 (0 without chunks)."""
    sums = None
    for g in chunks:
        sums = sums or GramSum(d, g.device)
        add_rows(sums, [g], n_samples)
    return 0 if sums is None else sums.total


def add_rows(sums, chunks, n_samples, scale=1.0):
    """Add ``scale * sum g g^T`` over chunks of rows ``(r, n or 1, P, d)`` to ``sums``.

    ``sums`` is a :class:`~sklearn_lib._core.gram_sum.GramSum`, which sums in
    place in float64 (see :func:`new_sums` for why in place).
    """
    for g in chunks:
        # A sample axis of size 1: the same rows for all n samples.
        count = n_samples if g.shape[1] == 1 else 1
        sums.add(as_rows(g), alpha=scale * count)  # (r * n * P_in, d)
    return sums


def as_rows(g):
    """``g`` as a matrix of rows ``(-1, d)``, in memory order where that avoids a copy.

    The Gram does not depend on the order of the rows, and closed forms may
    return permuted views.
    """
    return g.permute(*_memory_order(g), g.ndim - 1).reshape(-1, g.shape[-1])


def _memory_order(g):
    """The axes of ``g`` but its last, outermost in memory first."""
    return sorted(range(g.ndim - 1), key=lambda i: -g.stride(i))


def times(g, matrix):
    """``g @ matrix`` as one matrix product of ``g``'s rows in memory order: a permuted
    view would otherwise be multiplied as a stack of small products, ``matrix`` copied to
    each."""
    order = _memory_order(g)
    product = as_rows(g) @ matrix
    product = product.reshape(*(g.shape[i] for i in order), matrix.shape[-1])
    back = sorted(range(len(order)), key=order.__getitem__)
    return product.permute(*back, len(order))


def directional(g, directions, coefficients):
    """Directional derivatives from rows ``g`` of shape (r, n, P, d): (r, n, J), float64.

    The product is in the rows' dtype, as they were made (float32 rows carry
    float32's error already; a float64 copy of them would cost more than the
    product), and summed over positions in float64.
    """
    along = times(g, directions.T.to(g.dtype)).to(torch.float64)  # (r, n, P, J)
    return (along * coefficients).sum(2)


def square_sums(g, directions, coefficients):
    """``sum_x`` of the squared directional derivatives of rows ``g`` (r, n or 1, P, d): (r, J).

    Rows that are the same for every sample (an affine section) need no
    per-sample product: ``sum_x (sum_s a_sj c_xsj)^2 = sum_ss' a_sj a_s'j F_ss'j``
    with ``F_ss'j = sum_x c_xsj c_xs'j``.
    """
    if g.shape[1] > 1:
        return (directional(g, directions, coefficients) ** 2).sum(1)
    along = g[:, 0].to(torch.float64) @ directions.T  # (r, P, J)
    F = torch.einsum("xsj,xtj->jst", coefficients, coefficients)  # (J, P, P)
    # A quadratic form of the PSD F_j: >= 0, though rounding may leave a zero one
    # slightly negative (-1e-27 measured), which a graph's edges may not be.
    return torch.einsum("rsj,jst,rtj->rj", along, F, along).clamp_(min=0)
