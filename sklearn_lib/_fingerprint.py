"""Checksums of a model's tensors, to notice that it changed after a fit.

A fitted basis describes the model as it was at ``fit``.  Every call makes
a private copy of the model (:mod:`~sklearn_lib._session`); its checksums,
taken before any forward pass, are compared with those of the fit's copy,
and :class:`~sklearn_lib.StaleBasisWarning` names what moved.

Why checksums of values, not version counters: writes through ``.data``,
through numpy, by fused optimisers and by BatchNorm's running statistics
move no counter.  Why these checksums: each is a sum of per-block
reductions over fixed blocks of the flattened tensor, so it does not depend
on the thread count, and the blocks' float32 results add up in float64, so
rounding stays near float32's own 1e-7.  Three per tensor: the sum, the sum
of squares, and a sum weighted by position (a fixed, irregular weight per
row and column of the blocks), which moves when values swap places.  They
cost less than the copy they are taken of.
"""

import torch

# Blocks of the flattened tensor: reductions within a block run in one
# thread's order whatever the thread count.
_BLOCK = 4096

# Relative changes below these are rounding (another compute dtype rounds
# the values at 6e-8), not edits; smaller edits go unnoticed.
_RTOL = {torch.float64: 1e-10, torch.float32: 1e-6}


def _weights(n, dtype, device):
    # Irregular, deterministic and in [0.5, 1.5): the golden ratio's multiples mod 1.
    steps = torch.arange(n, dtype=torch.float64, device=device) * 0.6180339887498949
    return (steps.remainder(1.0) + 0.5).to(dtype)


def _float_checksums(flat):
    rows = flat.numel() // _BLOCK
    blocks = [flat[: rows * _BLOCK].view(rows, _BLOCK), flat[rows * _BLOCK :].view(1, -1)]
    columns = _weights(_BLOCK, flat.dtype, flat.device)
    row_weights = _weights(rows + 1, torch.float64, flat.device)
    total = squares = weighted = 0.0
    for block, weights in zip(blocks, (row_weights[:rows], row_weights[rows:])):
        if block.numel() == 0:
            continue
        total += float(block.sum(1).double().sum())
        squares += float((torch.linalg.vector_norm(block, dim=1).double() ** 2).sum())
        by_column = torch.mv(block, columns[: block.shape[1]]).double()
        weighted += float((by_column * weights).sum())
    return total, squares, weighted


def _integer_checksums(flat):
    # Exact, in int64 (wrapping the same way every time).
    values = flat.to(torch.int64)
    positions = torch.arange(values.numel(), device=values.device) % 7919 + 1
    return (
        int(values.sum()),
        int((values * values).sum()),
        int((values * positions).sum()),
    )


def fingerprint(model):
    """Checksums of a model's persistent tensors.

    Parameters
    ----------
    model : torch.nn.Module
        A private copy.

    Returns
    -------
    dict of str to tuple
        Per ``state_dict`` name: its size and three checksums (exact for
        integer tensors, such as quantised weights).  Left out, because they
        change when the model runs without changing what it computes:
        non-persistent buffers (caches that grow with the inputs) and
        integer scalars (counters such as BatchNorm's ``num_batches_tracked``).
    """
    sums = {}
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            flat = tensor.detach().reshape(-1)
            if flat.is_floating_point():
                sums[name] = (flat.numel(), *_float_checksums(flat))
            elif tensor.ndim > 0:
                sums[name] = (flat.numel(), *_integer_checksums(flat))
    return sums


def changed_tensors(old, new, dtype):
    """Names whose checksums differ between two :func:`fingerprint` results.

    Parameters
    ----------
    old, new : dict
    dtype : torch.dtype
        The compute dtype of the copies (float32's tolerance when they
        differ or for any other dtype).
    """
    if old.keys() != new.keys():
        return sorted(set(old).symmetric_difference(new))
    rtol = _RTOL.get(dtype, _RTOL[torch.float32])
    changed = []
    for name, (size, *sums) in new.items():
        size0, *sums0 = old[name]
        if size != size0:
            changed.append(name)
        elif isinstance(sums[0], int):
            if sums != sums0:
                changed.append(name)
        else:
            squares = max(sums[1], sums0[1])
            # sqrt(size * squares) bounds the sums (times 1.5 for the weighted one).
            scale = 1.5 * (size * squares) ** 0.5
            bounds = (rtol * scale, rtol * squares, rtol * scale)
            if any(abs(a - b) > bound for a, b, bound in zip(sums, sums0, bounds)):
                changed.append(name)
    return changed
