"""Sums over ranks: every statistic is a running sum, so batches and ranks compose.

When ``torch.distributed`` is initialised, every rank accumulates over its
own shard and the sums are all-reduced at the end of each pass, so all ranks
end with the statistics of the whole data set.
"""

import torch


def distributed():
    """True when a ``torch.distributed`` process group is running."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(tensor):
    """Sum ``tensor`` over ranks in place (a no-op in a single process)."""
    if distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def global_count(count, device):
    """The number of samples over all ranks."""
    return int(all_reduce_sum(torch.tensor(float(count), dtype=torch.float64, device=device)))


def row_average(total, n_rows, n_samples):
    """``(total / rows, N)`` over every rank: a per-row average as numpy, and ``N``.

    ``total`` is a sum over this rank's ``n_samples`` samples, which hold
    ``n_rows`` rows that count (every position, or the valid ones of padded
    sequences).
    """
    total = all_reduce_sum(total)
    rows = global_count(n_rows, total.device)
    return (total / rows).cpu().numpy(), global_count(n_samples, total.device)


def agreed(values, device):
    """``values`` (ints) where every rank holds the same, and -1 where ranks differ.

    For decisions each rank takes on its own data (a closed form's check on
    its probe) that must be the same everywhere, or the ranks would run
    different passes and hang.  A single process agrees with itself.
    """
    values = torch.as_tensor(values, dtype=torch.int64, device=device)
    if not distributed():
        return values.tolist()
    low, high = values.clone(), values.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    return torch.where(low == high, low, torch.full_like(low, -1)).tolist()
