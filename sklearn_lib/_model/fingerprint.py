"""Checksums of a model's tensors, to notice that it changed after a fit.

A fitted basis describes the model as it was at ``fit``.  Every call makes
a private copy of the model (:mod:`~sklearn_lib._model.session`); its checksums,
taken before any forward pass, are compared with those of the fit's copy,
and :class:`~sklearn_lib.StaleBasisWarning` names what moved.

Why checksums of values, not version counters: writes through ``.data``,
through numpy, by fused optimisers and by BatchNorm's running statistics
move no counter.  Why these checksums: three per tensor (the sum, the sum
of squares, and a sum weighted by position, which moves when values swap
places), each computed in float64 over chunks of the tensor converted to
float64.  Float32 values are exact in float64, so the checksums of the same
values differ only by float64 rounding (another summation order on another
thread count or device), some 1e-16 of their scale, and one weight of a
16M-value matrix changed by 1% stands out by six orders of magnitude.  They
cost about as much as the copy they are taken of.
"""

import functools
import math

import torch

# Values converted to float64 at once: 8 MiB, whatever the tensor's size.
_CHUNK = 1 << 20

# Relative tolerances, in units of a tensor's scale sqrt(size * sum of
# squares): float64 rounding when fit and call computed in the same dtype;
# when one rounded the values to float32 (6e-8 each), those differences.
_RTOL_SAME = 1e-12
_RTOL_OTHER_DTYPE = 1e-6


@functools.lru_cache(maxsize=8)
def _weights(device):
    # Irregular, deterministic, in [0.5, 1.5): the golden ratio's multiples mod 1.
    steps = torch.arange(_CHUNK, dtype=torch.float64, device=device) * 0.6180339887498949
    return steps.remainder(1.0) + 0.5


def _float_checksums(flat):
    weights = _weights(flat.device)
    total = squares = weighted = 0.0
    pattern = 0  # where the inf and NaN values are, exactly
    for k, start in enumerate(range(0, flat.numel(), _CHUNK)):
        chunk = flat[start : start + _CHUNK].to(torch.float64)
        chunk_total = float(chunk.sum())
        if not math.isfinite(chunk_total):
            # A mask of -inf: its finite entries must still count.
            codes = torch.where(torch.isnan(chunk), 3, torch.sign(chunk).to(torch.int64) + 1)
            codes = torch.where(torch.isfinite(chunk), 0, codes)
            pattern += int((codes * _integer_positions(start, chunk.numel(), chunk.device)).sum())
            chunk = torch.where(torch.isfinite(chunk), chunk, 0.0)
            chunk_total = float(chunk.sum())
        total += chunk_total
        squares += float(torch.dot(chunk, chunk))
        # A chunk's own weight too, so that values swapping chunks move it.
        chunk_weight = 0.5 + (k * 0.7548776662466927) % 1.0
        weighted += chunk_weight * float(torch.dot(chunk, weights[: chunk.numel()]))
    return total, squares, weighted, pattern


def _integer_positions(start, n, device):
    return (torch.arange(start, start + n, device=device) % 7919) + 1


def _integer_checksums(flat):
    # Exact, in int64 (wrapping the same way every time).
    values = flat.to(torch.int64)
    positions = _integer_positions(0, values.numel(), values.device)
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
        integer tensors, such as quantised weights; for floating ones a
        fourth, exact, of where any inf and NaN values are).  Left out, because they
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


def changed_tensors(old, new, same_dtype=True):
    """Names whose checksums differ between two :func:`fingerprint` results.

    Parameters
    ----------
    old, new : dict
    same_dtype : bool
        Whether both copies were made in the same compute dtype; if not,
        the float32 rounding of the values is not a change.
    """
    if old.keys() != new.keys():
        return sorted(set(old).symmetric_difference(new))
    rtol = _RTOL_SAME if same_dtype else _RTOL_OTHER_DTYPE
    changed = []
    for name, (size, *sums) in new.items():
        size0, *sums0 = old[name]
        if size != size0:
            changed.append(name)
        elif isinstance(sums[0], int):
            if sums != sums0:  # exact for integer tensors
                changed.append(name)
        elif sums[3] != sums0[3]:  # inf and NaN moved
            changed.append(name)
        elif not all(map(math.isfinite, [*sums[:3], *sums0[:3]])):
            if sums[:3] != sums0[:3]:  # squares beyond float64's range: exact
                changed.append(name)
        else:
            # sqrt(size * squares) bounds the sums (times 1.5 for the weighted one).
            scale = 1.5 * (size * max(sums[1], sums0[1])) ** 0.5
            if any(abs(a - b) > rtol * scale for a, b in zip(sums[:3], sums0[:3])):
                changed.append(name)
    return changed
