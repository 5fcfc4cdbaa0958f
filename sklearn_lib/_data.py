"""Where ``fit`` reads model inputs from: an array, or a stream of batches.

A stream (a ``torch.utils.data.DataLoader`` or any re-iterable object that
yields batches) is iterated once per pass of the algorithm, so memory is set
by the batch size, never by the number of samples.
"""

import numpy as np
import scipy.sparse
import torch

from ._utils import batch_slices


def is_stream(X):
    """True for a DataLoader or another iterable of batches (not an array-like)."""
    if isinstance(X, torch.utils.data.DataLoader):
        return True
    if scipy.sparse.issparse(X):
        return False  # validation rejects it with sklearn's own message
    array_like = (np.ndarray, torch.Tensor, list, tuple, str, bytes, dict)
    return (
        hasattr(X, "__iter__")
        and not isinstance(X, array_like)
        and not hasattr(X, "__array__")
        and not hasattr(X, "iloc")  # pandas
    )


class ArraySource:
    """Batches of an in-memory array."""

    def __init__(self, X, batch_size):
        self.X = X
        self.batch_size = batch_size
        self.n_samples = X.shape[0]

    def batches(self):
        for sl in batch_slices(self.n_samples, self.batch_size):
            yield self.X[sl]


class StreamSource:
    """Batches of a re-iterable stream, checked against the first batch.

    Parameters
    ----------
    stream : iterable
        Yields arrays or tensors of model inputs, or tuples whose first item
        is one (a DataLoader over ``TensorDataset(X, y)`` yields ``[x, y]``).
    """

    def __init__(self, stream):
        if iter(stream) is stream:
            raise TypeError(
                "X is an iterator, which can be read only once, but fitting reads the data "
                "once per pass; pass a re-iterable object such as a DataLoader"
            )
        self.stream = stream
        self.n_samples = None  # known after the first full pass
        self.input_shape = None

    def batches(self):
        count = 0
        for batch in self.stream:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            if not torch.is_tensor(batch):
                batch = np.asarray(batch)
            if batch.ndim < 2:
                raise ValueError(
                    f"Each batch needs shape (batch_size, ...), got shape {tuple(batch.shape)}"
                )
            shape = tuple(batch.shape[1:])
            if self.input_shape is None:
                self.input_shape = shape
            elif shape != self.input_shape:
                raise ValueError(
                    f"A batch has per-sample shape {shape}, but the first batch had "
                    f"{self.input_shape}"
                )
            floating = (
                batch.is_floating_point()
                if torch.is_tensor(batch)
                else (np.issubdtype(batch.dtype, np.floating))
            )
            finite = bool(torch.isfinite(torch.as_tensor(batch)).all()) if floating else True
            if not finite:
                raise ValueError("Input contains NaN or infinity (in a batch of the stream)")
            count += batch.shape[0]
            yield batch
        if self.n_samples is None:
            self.n_samples = count
        elif count != self.n_samples:
            raise ValueError(
                f"The stream yielded {count} samples in this pass but {self.n_samples} in the "
                "first; fitting needs the same data in every pass"
            )

    def probe(self, n):
        """Up to ``n`` first samples, as one numpy array."""
        parts, total = [], 0
        # Leaving the checked generator early skips its sample count.
        for batch in self.batches():
            parts.append(np.asarray(batch.cpu() if torch.is_tensor(batch) else batch))
            total += len(parts[-1])
            if total >= n:
                break
        if not parts:
            raise ValueError("The stream yielded no batch")
        return np.concatenate(parts)[:n]
