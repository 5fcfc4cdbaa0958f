"""Histograms of many columns at once, streamed, without knowing their ranges first.

A dashboard shows the distribution of each feature over all the data, but
the data come in batches and a feature's range is unknown until the last
one.  :class:`StreamingHistogram` keeps, per column, ``n_bins`` equal bins
over a range that doubles (merging pairs of bins) whenever a batch falls
outside it, toward the side it fell on.  Every value is counted exactly
once, in the bin that holds it at the end; memory is ``n_columns x n_bins``
whatever the number of values.  The final bins are at most twice as wide
as a histogram of the known range would make them (then trimmed of empty
bins at either end).
"""

import numpy as np
import torch

__all__ = ["StreamingHistogram"]

#: Bounds of a bin width: above float64's smallest normal number, and small enough that
#: a whole range (and its doubling) stays finite.
_TINY, _HUGE = 1e-300, 1e300


class StreamingHistogram:
    """Counts of each column's values in bins that widen as values arrive.

    Parameters
    ----------
    n_columns : int
        Columns (features) counted side by side.
    n_bins : int, default=40
        Bins per column; even, so that pairs merge.
    device : torch.device or str, default="cpu"

    Examples
    --------
    >>> import torch
    >>> hist = StreamingHistogram(1, n_bins=4)
    >>> hist.update(torch.tensor([[0.0], [1.0]]))
    >>> hist.update(torch.tensor([[5.0]]))  # outside: the range doubles, upward
    >>> edges, counts = hist.result()[0]
    >>> counts.tolist(), edges[:3].round(3).tolist()  # [0, 8) in 4 bins of 2, the last empty
    ([2, 0, 1], [-0.0, 2.0, 4.0])
    """

    def __init__(self, n_columns, n_bins=40, device="cpu"):
        if n_bins < 2 or n_bins % 2:
            raise ValueError(f"n_bins={n_bins} must be an even number of at least 2")
        self.n_bins = n_bins
        self.counts = torch.zeros(n_columns, n_bins, dtype=torch.int64, device=device)
        self.low = None  # (n_columns,) float64: each column's lowest edge
        self.width = None  # (n_columns,) float64: each column's bin width

    def update(self, values):
        """Count a batch of rows.

        Parameters
        ----------
        values : torch.Tensor of shape (m, n_columns)
            Finite values; ``m`` may be 0.
        """
        if values.shape[0] == 0:
            return
        values = values.to(torch.float64)
        smallest, largest = values.amin(0), values.amax(0)
        if self.low is None:
            self._start(smallest, largest)
        self._widen(smallest, largest)
        # A value on the top edge, or a rounding past it, belongs to the last bin.
        offset = (values / 2 - self.low / 2) / self.width * 2  # halves: no overflow
        bins = offset.floor().nan_to_num(nan=0.0).clamp_(0, self.n_bins - 1).long()
        offsets = torch.arange(values.shape[1], device=bins.device) * self.n_bins
        flat = (bins + offsets).reshape(-1)
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).view_as(self.counts)

    def _start(self, smallest, largest):
        """Bins over the first batch's range, widened by a millionth on both sides: its
        smallest and largest values then lie inside bins, not on edges, which rounding
        could put on either side."""
        # Halves first: the span of values near float64's limits would overflow.
        span = (largest / 2 - smallest / 2) * 2
        # A constant column gets a range of its own scale (1 where it is 0), never
        # below the smallest normal float (a width of 0 would never grow).
        floor = torch.where(smallest == 0, 1.0, smallest.abs()) * 1e-6
        span = torch.clamp(torch.maximum(span, floor), min=_TINY, max=_HUGE)
        self.low = smallest - span * 1e-6
        self.width = span * (1 + 2e-6) / self.n_bins

    def _widen(self, smallest, largest):
        """Double the range of every column that ``[smallest, largest]`` leaves, as often
        as needed: downward where values fell below it, else upward.  A range at
        float64's limits stops growing; values beyond it count in its end bins."""
        half = self.n_bins // 2
        while True:
            room = self.n_bins * self.width < _HUGE
            below = (smallest < self.low) & room
            above = (largest >= self.low + self.n_bins * self.width) & room
            grow = below | above
            if not bool(grow.any()):
                return
            merged = self.counts.view(-1, half, 2).sum(-1)  # bins 2i, 2i+1 -> i
            zeros = torch.zeros_like(merged)
            # Growing downward, the old range becomes the upper half; upward, the lower.
            placed = torch.where(
                below[:, None], torch.cat([zeros, merged], 1), torch.cat([merged, zeros], 1)
            )
            self.counts = torch.where(grow[:, None], placed, self.counts)
            self.low = torch.where(below, self.low - self.n_bins * self.width, self.low)
            self.width = torch.where(grow, 2 * self.width, self.width)

    def result(self):
        """``[(edges, counts)]`` per column: numpy arrays of ``b + 1`` and ``b`` entries,
        the empty bins at either end left out (one bin at least)."""
        if self.low is None:
            return [(np.array([0.0, 1.0]), np.zeros(1, dtype=np.int64))] * self.counts.shape[0]
        counts = self.counts.cpu().numpy()
        low, width = self.low.cpu().numpy(), self.width.cpu().numpy()
        out = []
        for column, row in enumerate(counts):
            used = np.flatnonzero(row)
            first, last = (used[0], used[-1] + 1) if used.size else (0, 1)
            edges = low[column] + width[column] * np.arange(first, last + 1)
            out.append((edges, row[first:last]))
        return out
