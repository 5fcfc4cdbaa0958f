"""The activation statistics of the statistics pass: means and Grams as running sums.

Sums over ranks are :mod:`~sklearn_lib._core.distributed`'s.
"""

import torch

from .._core.distributed import all_reduce_sum, distributed, global_count
from .._core.gram_sum import GramSum


class MomentAccumulator:
    """Running mean and Gram matrix of one node's activations, accumulated in float64.

    An accumulator of a pass (see ``_model.session``): rows are the node's
    activations with positions flattened into samples (padded positions
    left out, see :meth:`~sklearn_lib._model.session.Batch.valid`).  Sums are taken
    around a fixed shift (the first batch's mean when centring): the centred
    Gram is then ``S2/N - m m^T`` with a small ``m``, which avoids the
    cancellation of the textbook ``E[f f^T] - mu mu^T``.

    Parameters
    ----------
    name : str
        The node layer (``"output"`` for the model output).
    n_features : int
    device : torch.device
    center : bool, default=True
        If False the Gram is uncentred (the mean is still the data's mean).
    gram : bool, default=True
        If False only the mean is accumulated (cheap for wide outputs).
    low : torch.dtype or None, default=None
        The fit's compute dtype where it is not float64: the Gram's products
        are taken in it where its first batch certifies them
        (:class:`~sklearn_lib._core.gram_sum.GramSum`).
    """

    def __init__(self, name, n_features, device, center=True, gram=True, low=None):
        self.reads = (name,)
        self.name = name
        self.center = center
        self.count = 0
        self.sum = torch.zeros(n_features, dtype=torch.float64, device=device)
        # The mean alone needs no shift; a Gram's is its first batch's mean.
        self.shift = None if gram else torch.zeros_like(self.sum)
        self.sq = GramSum(n_features, device, low) if gram else None

    def update(self, batch, acts):
        """Add the rows of ``acts[name]``.

        Rows are centred in float64 and multiplied in float64 unless the
        first batch certifies products in the fit's dtype: a float32 Gram
        carries errors near 1e-6 of its largest entries, which swamp the
        directions of small variance that can still matter (the paper's
        attention input has important ones at 1e-11 of the largest variance;
        measured, a float32 Gram moved its top Lambda by 0.1%), and its
        certificate fails there.
        """
        f = acts[self.name].detach()
        rows = f.reshape(-1, self.sum.shape[0])  # (m, d)
        valid = batch.valid(f.shape[1:])
        if valid is not None:
            rows = rows[valid.reshape(-1)]
        if self.sq is None:
            # The mean alone (a language model's logits): summed in float64 as
            # it is read, with no float64 copy of the batch.
            self.sum += rows.sum(0, dtype=torch.float64)
            self.count += rows.shape[0]
            return
        if self.shift is None:
            self.shift = self._shift(rows)
        if self.sq.precision == rows.dtype != torch.float64:
            # Certified low-precision products: centred in the rows' dtype, which rounds
            # the differences exactly as float64 centring and a cast would (the shift is
            # one of its numbers, and IEEE subtraction rounds the exact difference).  The
            # sum is the rows' own in float64: rounded differences would bias the mean.
            centred = rows - self.shift.to(rows.dtype)
            self.sum += rows.sum(0, dtype=torch.float64) - rows.shape[0] * self.shift
        else:
            centred = rows.to(torch.float64) - self.shift  # (m, d)
            self.sum += centred.sum(0)
        self.sq.add(centred)
        self.count += rows.shape[0]

    def _shift(self, rows):
        """The first batch's mean (zeros where not centring); a number of the rows' dtype
        where the Gram may take their products in it."""
        centre = self.center and rows.shape[0] > 0  # not a batch of padding only
        shift = rows.to(torch.float64).mean(0) if centre else torch.zeros_like(self.sum)
        if distributed():
            # Every rank must use the same shift for the sums to add up:
            # the average of the ranks' first-batch means.
            all_reduce_sum(shift)
            shift /= torch.distributed.get_world_size()
        return shift.to(rows.dtype).to(torch.float64) if rows.dtype == self.sq.low else shift

    def result(self):
        """All-reduce the sums over ranks; then :attr:`mean` and :attr:`gram` hold."""
        all_reduce_sum(self.sum)
        if self.sq is not None:
            self.sq.reduce()
        self.count = global_count(self.count, self.sum.device)
        return self

    @property
    def mean(self):
        """``E[f]``, the data's mean whether or not the Gram is centred."""
        return self.shift + self.sum / self.count

    @property
    def gram(self):
        """``E[(f - mu)(f - mu)^T]`` with ``1/N``, or ``E[f f^T]`` if not centring."""
        if self.center:
            offset = self.sum / self.count  # mu - shift
            return self.sq.total / self.count - torch.outer(offset, offset)
        return self.sq.total / self.count
