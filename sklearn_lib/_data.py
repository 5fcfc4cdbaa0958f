"""Inputs in every form the estimators accept, as a source of checked batches.

Two forms, accepted by every method that reads data:

- **array-like** samples (numpy arrays, torch tensors, lists of equally
  shaped rows, pandas frames): validated by the estimator with
  scikit-learn's ``validate_data`` and sliced into batches of
  ``batch_size``;
- **streams**: a ``torch.utils.data.DataLoader`` or any re-iterable object
  yielding batches (arrays, tensors, or tuples/lists whose first item is
  one, as a DataLoader over ``TensorDataset(X, y)`` yields ``[x, y]``).  A
  stream is read once per pass, so memory is set by its batch size, never
  by the number of samples.

Every batch of a stream is checked as it arrives: at least two dimensions,
numbers, finite, and the per-sample shape of the data it must match (the
fitted inputs, or the stream's first batch).
"""

import numpy as np
import scipy.sparse
import torch

from ._numerics import all_finite


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
    """Batches of a validated in-memory array.

    Parameters
    ----------
    X : ndarray or torch.Tensor of shape (n_samples, ...)
    batch_size : int
    """

    #: Samples come in the same order in every pass.
    ordered = True

    def __init__(self, X, batch_size):
        self.X = X
        self.batch_size = batch_size
        self.n_samples = X.shape[0]

    def batches(self):
        """Yield ``(start, batch)`` with ``batch = X[start:start + batch_size]``."""
        for start in range(0, self.n_samples, self.batch_size):
            yield start, self.X[start : start + self.batch_size]


class StreamSource:
    """Batches of a re-iterable stream, each checked as it arrives.

    Parameters
    ----------
    stream : iterable
        Yields arrays or tensors, or tuples/lists whose first item is one.
    shape : tuple, optional
        The per-sample shape every batch must have (e.g. the fitted inputs');
        None takes the first batch's.
    fitted_by : str, optional
        Who was fitted on ``shape``, for the error message.
    """

    def __init__(self, stream, shape=None, fitted_by=None):
        if iter(stream) is stream:
            raise TypeError(
                "X is an iterator, which can be read only once, but the data is read "
                "once per pass; pass a re-iterable object such as a DataLoader"
            )
        self.stream = stream
        self.shape = None if shape is None else tuple(shape)
        self.fitted_by = fitted_by
        self.n_samples = None  # known after the first full pass

    @property
    def ordered(self):
        """False for a DataLoader that shuffles: another order of samples in every pass.

        Sums (fits, graphs, scores without labels) do not mind; anything
        that pairs samples with rows (labels, ``transform``'s output) does.
        """
        if not isinstance(self.stream, torch.utils.data.DataLoader):
            return True
        sampler = self.stream.sampler
        random = (
            torch.utils.data.RandomSampler,
            torch.utils.data.SubsetRandomSampler,
            torch.utils.data.WeightedRandomSampler,
        )
        return not (isinstance(sampler, random) or getattr(sampler, "shuffle", False))

    def batches(self):
        """Yield ``(start, batch)``; the sample count must be the same in every full pass."""
        count = 0
        for batch in self.stream:
            batch = self._check(batch)
            yield count, batch
            count += batch.shape[0]
        if count == 0:
            raise ValueError("The stream yielded no batch")
        if self.n_samples is None:
            self.n_samples = count
        elif count != self.n_samples:
            raise ValueError(
                f"The stream yielded {count} samples in this pass but {self.n_samples} in the "
                "first; every pass must see the same data"
            )

    def _check(self, batch):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if not torch.is_tensor(batch):
            batch = np.asarray(batch)
            if not (np.issubdtype(batch.dtype, np.number) or batch.dtype == bool):
                raise ValueError(f"A batch of the stream holds {batch.dtype} values, not numbers")
        if batch.ndim < 2:
            raise ValueError(
                f"Each batch needs shape (batch_size, ...), got shape {tuple(batch.shape)}"
            )
        shape = tuple(batch.shape[1:])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            against = (
                f"{self.fitted_by} was fitted on inputs of per-sample shape"
                if self.fitted_by
                else "the first batch had"
            )
            raise ValueError(f"A batch has per-sample shape {shape}, but {against} {self.shape}")
        floating = (
            batch.is_floating_point()
            if torch.is_tensor(batch)
            else np.issubdtype(batch.dtype, np.floating)
        )
        if floating and not all_finite(torch.as_tensor(batch)):
            raise ValueError("Input contains NaN or infinity (in a batch of the stream)")
        return batch

    def probe(self, n):
        """Up to ``n`` first samples, as one numpy array (a partial pass, not counted)."""
        parts, total = [], 0
        # Leaving the checked generator early skips its sample count.
        for _, batch in self.batches():
            parts.append(np.asarray(batch.cpu() if torch.is_tensor(batch) else batch))
            total += len(parts[-1])
            if total >= n:
                break
        if not parts:
            raise ValueError("The stream yielded no batch")
        return np.concatenate(parts)[:n]


def to_tensor(X, device, dtype):
    """Copy a batch of model inputs to ``device``.

    Floating inputs take the compute ``dtype``; integer inputs (token ids)
    and booleans keep their own dtype, because casting ids to float breaks
    embeddings silently.  The result never shares memory with ``X``, so a
    model that edits its input in place cannot touch the caller's data.
    """
    if torch.is_tensor(X):
        target = dtype if X.is_floating_point() else X.dtype
        return X.detach().to(device=device, dtype=target, copy=True)
    X = np.asarray(X)
    target = dtype if np.issubdtype(X.dtype, np.floating) else None
    # torch.tensor copies (read-only and non-contiguous arrays are fine).
    return torch.tensor(X, dtype=target, device=device)
