"""Inputs in every form the estimators accept, as a source of checked batches.

Two forms, accepted by every method that reads data:

- **array-like** samples (numpy arrays, torch tensors, lists of equally
  shaped rows, pandas frames): validated by the estimator with
  scikit-learn's ``validate_data`` and sliced into batches of
  ``batch_size``;
- **streams**: a ``torch.utils.data.DataLoader`` or any re-iterable object
  (whose ``__iter__`` starts a new iteration on every call) yielding
  batches.  A stream is read once per pass, so memory is set by its batch
  size, never by the number of samples.

What a batch may be:

- an array or tensor of shape ``(batch_size, ...)``;
- a tuple ``(inputs, labels, ...)``: the first item is the inputs; so is a
  list from a ``DataLoader`` with its default collate (which turns the
  ``(x, y)`` of ``TensorDataset(X, y)`` into ``[x, y]``);
- a list of per-sample rows from any other stream, stacked into a batch, as
  scikit-learn reads a list of samples.  Once the per-sample shape is known
  (the fitted one, or the first batch's), a list whose items have it is
  rows, and so is a list of 1-D items; a list of one item or of items of
  different shapes is ``(inputs, labels, ...)`` (a wrapped DataLoader's
  ``[x]`` and ``[x, y]``); any other list of two or more equally shaped
  items is refused as ambiguous (yield a tuple or a stacked array);
- ragged lists are refused, and batches of no samples are skipped;
- a ``dict`` (any mapping, as a Hugging Face collator's batch) of arrays or
  tensors with one row per sample each: the model is called with them as
  keyword arguments (see :mod:`~sklearn_lib._model.inputs`; an
  ``attention_mask`` marks padded positions).  A dict of array-likes is
  also an in-memory data set, sliced into dict batches, and so is a list
  of per-sample dicts (stacked field by field, as a list of rows is).

Every batch of a stream is checked as it arrives: at least two dimensions
(a dict: one row per sample in each field, and not only 1-D fields, which
look like one sample of a data set rather than a batch), numbers, finite,
and the per-sample shape of the data it must match (the fitted inputs, or
the stream's first batch; a dict's per-sample shape is a dict of its
fields' shapes), but for the length of sequences of token ids, which may
differ from batch to batch (dynamic padding; see
:func:`~sklearn_lib._model.inputs.has_length`).  A list of per-sample dicts
is stacked into a dict batch.
"""

import contextlib
import hashlib
from collections.abc import Mapping

import numpy as np
import scipy.sparse
import torch

from .._core.numerics import all_finite
from .inputs import MASK_KEY, lengths_of, n_rows, same_but_lengths, take_rows


def is_stream(X):
    """True for a DataLoader or another iterable of batches (not an array-like)."""
    if isinstance(X, torch.utils.data.DataLoader):
        return True
    if scipy.sparse.issparse(X):
        return False  # validation rejects it with sklearn's own message
    array_like = (np.ndarray, torch.Tensor, list, tuple, str, bytes, Mapping)
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
    X : ndarray or torch.Tensor of shape (n_samples, ...), or a dict of them
    batch_size : int
    """

    #: Samples come in the same order in every pass.
    ordered = True

    #: Every batch has the array's sequence length.
    lengths_vary = False

    def __init__(self, X, batch_size):
        self.X = X
        self.batch_size = batch_size
        self.n_samples = n_rows(X)

    def batches(self):
        """Yield ``(start, batch)`` with ``batch = X[start:start + batch_size]``."""
        for start in range(0, self.n_samples, self.batch_size):
            yield start, take_rows(self.X, slice(start, start + self.batch_size))


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
    values : bool, default=False
        A stream of activations or features, not of model inputs: its
        sequences may differ in length whatever their dtype, and NaN passes
        (padded positions; the method that reads them checks them).
    """

    def __init__(self, stream, shape=None, fitted_by=None, values=False):
        self.loader = isinstance(stream, torch.utils.data.DataLoader)
        # A DataLoader is never its own iterator (and iter() would start its workers).
        iterator = None if self.loader else iter(stream)
        if iterator is stream:
            raise TypeError(
                "X is an iterator, which can be read only once, but the data is read "
                "once per pass; pass a re-iterable object such as a DataLoader"
            )
        # One shared iterator would let a single pass (transform) see only
        # what an earlier one left.  Disguised (a new generator over it), the
        # first-batch check of every later pass catches it.
        if iterator is not None and iterator is iter(stream):
            raise TypeError(
                f"X ({type(stream).__name__}) hands out one shared iterator: iter(X) returns "
                "the same object every time, so a pass would see only what the previous one "
                "left. Its __iter__ must start a new iteration over the data on every call "
                "(e.g. be a generator function); pass a DataLoader itself, not an object "
                "that returns its iterator"
            )
        self.stream = stream
        self.values = values
        if shape is not None:
            shape = dict(shape) if isinstance(shape, Mapping) else tuple(shape)
        self.shape = shape
        self.fitted_by = fitted_by
        self.n_samples = None  # known after the first full pass
        #: Whether batches differ in sequence length; None until a pass has seen them all.
        self.lengths_vary = None
        self._first = None  # digest of the first batch the probe or the first pass saw
        self.probe_left_out = 0  # batches of other lengths the probe left out

    @property
    def ordered(self):
        """False for a DataLoader that shuffles: another order of samples in every pass.

        Sums (fits, graphs, scores without labels) do not mind; anything
        that pairs samples with rows (labels, ``transform``'s output) does.
        """
        if not self.loader:
            return True
        random = (
            torch.utils.data.RandomSampler,
            torch.utils.data.SubsetRandomSampler,
            torch.utils.data.WeightedRandomSampler,
        )
        return not any(
            isinstance(sampler, random) or getattr(sampler, "shuffle", False)
            for sampler in _samplers(self.stream)
        )

    @property
    def repeats(self):
        """Whether every pass is known to yield the same batches in the same order.

        Any stream but a ``DataLoader`` must (that is the contract); a
        ``DataLoader`` does when it samples sequentially from a map-style
        dataset.  A custom sampler, or an ``IterableDataset``, may shuffle.
        """
        if not self.loader:
            return True
        if isinstance(self.stream.dataset, torch.utils.data.IterableDataset):
            return False
        return all(
            isinstance(sampler, (torch.utils.data.SequentialSampler, type(None)))
            or type(sampler) is torch.utils.data.BatchSampler
            for sampler in _samplers(self.stream)
        )

    def batches(self):
        """Yield ``(start, batch)`` of one pass, each checked; empty batches are skipped.

        Every pass must see the same data: the same number of samples and,
        for a stream that does not shuffle, the same first batch as the
        first pass (or the probe) saw.  That also catches a stream that
        cannot start over and goes on where the last pass stopped.
        """
        count, shapes = 0, set()
        with contextlib.closing(self._checked(self.stream)) as checked:
            for batch in checked:
                if count == 0:
                    self._check_first(batch)
                shapes.add(_digest_shape(batch))
                yield count, batch
                count += n_rows(batch)
        self.lengths_vary = len(shapes) > 1
        if count == 0:
            if self.n_samples:
                raise ValueError(
                    f"The stream yielded no batch in this pass, but {self.n_samples} samples "
                    "in the first; its __iter__ must start over on every call"
                )
            raise ValueError(
                "The stream yielded no batch: is it exhausted? Its __iter__ must start over "
                "on every call"
            )
        if self.n_samples is None:
            self.n_samples = count
        elif count != self.n_samples:
            raise ValueError(
                f"The stream yielded {count} samples in this pass but {self.n_samples} in the "
                "first; every pass must see the same data"
            )

    def probe(self, n):
        """The first samples, at most ``n``, as one numpy array.

        As many batches as it takes to hold ``n`` samples or the first
        batch's size, whichever is smaller (two at least, for the checks
        that compare samples), so the probe is never bigger than what the
        passes run.  Sequences of other lengths are padded to the longest
        where an ``attention_mask`` marks padding (:func:`_joined`).
        """
        seen, total, target, left_out = [], 0, n, 0
        with contextlib.closing(self._checked(self.stream)) as checked:
            for batch in checked:
                batch = to_numpy(batch)
                if not seen:
                    self._check_first(batch)
                    target = min(n, max(2, n_rows(batch)))
                elif not _joinable(seen[0], batch):
                    left_out += 1
                    if left_out >= _PROBE_BATCHES:
                        break
                    continue
                seen.append(batch)
                total += n_rows(batch)
                if total >= target:
                    break
        if not seen:
            raise ValueError("The stream yielded no batch")
        self.probe_left_out = left_out
        return take_rows(_joined(seen), slice(0, target))

    def check_probe(self, probe, n):
        """Refuse a probe of fewer than ``n`` samples because other lengths were left out."""
        if n_rows(probe) < n and self.probe_left_out:
            raise ValueError(
                f"The stream's first batches hold {n_rows(probe)} sample(s) of the first "
                "batch's length and others of other lengths, without an attention_mask to "
                f"pad them to one: the checks of a fit compare {n} samples of one length. "
                "Yield batches of two or more sequences, or pad them with an attention_mask "
                "(DataCollatorWithPadding does)"
            )
        return probe

    def _check_first(self, batch):
        if not self.repeats:
            return
        digest = _digest(batch)
        if self._first is None:
            self._first = digest
        elif digest != self._first:
            raise ValueError(
                "The stream's first batch differs from the one an earlier pass started "
                "with, but every pass must see the same data: its __iter__ must start "
                "over on every call, and neither shuffle nor augment (shuffle with a "
                "DataLoader, shuffle=True)"
            )

    def _checked(self, stream):
        # Closed when left early (the probe, an error): a generator that
        # entered a mode (torch.inference_mode) around its yields leaves it
        # now, in order, not when garbage-collected.
        iterator = iter(stream)
        try:
            for raw in iterator:
                batch = self._check(raw)
                if batch is not None and n_rows(batch):
                    yield batch
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    # -- one batch ---------------------------------------------------------------------
    def _inputs(self, batch):
        """The model inputs of one batch as yielded (see the module docstring)."""
        if isinstance(batch, Mapping):
            return dict(batch)  # keyword arguments of the model
        if isinstance(batch, list) and batch and all(isinstance(b, Mapping) for b in batch):
            return stack_records(batch)  # per-sample dicts, as rows are stacked
        if not isinstance(batch, (tuple, list)):
            return batch
        if not batch:
            return None  # no samples: skipped
        collated = self.loader and self.stream.collate_fn in (
            torch.utils.data.default_collate,
            torch.utils.data.default_convert,
        )
        if isinstance(batch, tuple) or collated:
            return batch[0]  # (inputs, labels, ...)
        return self._list_inputs(batch)

    def _list_inputs(self, items):
        """The inputs of a list batch: per-sample rows, stacked, or the first of its fields."""
        try:
            shapes = [tuple(np.shape(item)) for item in items]
        except ValueError:  # numpy refuses ragged nested lists
            shapes = None
        if shapes is None or (len(set(shapes)) > 1 and len(shapes[0]) < 2):
            raise ValueError(
                f"A batch of the stream is a list of {len(items)} ragged rows (shapes "
                f"{(shapes or ['ragged'])[:4]}); rows of one batch must have one shape"
            )
        same = len(set(shapes)) == 1
        if same and (shapes[0] == self.shape or len(shapes[0]) <= 1):
            # Items of the per-sample shape, or 1-D (inputs need two dimensions).
            return _stack(items)
        if not same or len(items) == 1:
            # (inputs, labels, ...) of different shapes, or [inputs] as a
            # DataLoader over TensorDataset(X) yields it; the per-sample shape
            # of the inputs is checked next.
            return items[0]
        # The same rule in every batch: a later one must not be read in
        # another way than the first.
        raise ValueError(
            f"A batch of the stream is a list of {len(items)} arrays of one shape "
            f"{shapes[0]}: per-sample rows or (inputs, labels, ...)? Yield a tuple "
            "(inputs, labels) for the second, or a stacked array (np.stack, torch.stack) "
            "for the first"
        )

    def _check(self, batch):
        batch = self._inputs(batch)
        if batch is None:
            return None
        check_has_values(batch)
        if isinstance(batch, Mapping):
            batch = check_fields(batch, "A batch of the stream")
            if all(value.ndim == 1 for value in batch.values()):
                shapes = {key: tuple(value.shape) for key, value in batch.items()}
                raise ValueError(
                    f"A batch of the stream is a dict of 1-D fields {shapes}: one sample (as "
                    "the rows of a Hugging Face data set are), or a batch of one number per "
                    "sample? A stream must yield batches: collate the samples (a DataLoader "
                    "over them does), or pass a dict of arrays or a list of per-sample dicts"
                )
            if not n_rows(batch):
                return None
            shape = {key: tuple(v.shape[1:]) for key, v in batch.items()}
            self._check_shape(shape, lengths_of(batch))
            return batch
        if not torch.is_tensor(batch):
            batch = np.asarray(batch)
            if not (np.issubdtype(batch.dtype, np.number) or batch.dtype == bool):
                raise ValueError(f"A batch of the stream holds {batch.dtype} values, not numbers")
            if not batch.flags.writeable:  # e.g. a pandas frame's values; torch warns on them
                batch = batch.copy()
        if batch.ndim < 2:
            raise ValueError(
                f"Each batch needs shape (batch_size, ...), got shape {tuple(batch.shape)}"
            )
        if self.values:
            self._check_shape(tuple(batch.shape[1:]), True)
            return batch
        self._check_shape(tuple(batch.shape[1:]), lengths_of(batch))
        _check_finite(batch, "a batch of the stream")
        return batch

    def _check_shape(self, shape, lengths):
        """Every batch has the reference's per-sample shape, but for sequence lengths."""
        if self.shape is None:
            self.shape = shape
        elif not same_but_lengths(shape, self.shape, lengths):
            against = (
                f"{self.fitted_by} was fitted on inputs of per-sample shape"
                if self.fitted_by
                else "the first batch had"
            )
            raise ValueError(
                f"A batch has per-sample shape {shape}, but {against} {self.shape}. Only the "
                "length of a sequence (the first axis after the batch axis of integer fields, "
                "such as token ids and an attention_mask) may differ between batches"
            )


def _check_finite(values, where):
    floating = (
        values.is_floating_point()
        if torch.is_tensor(values)
        else np.issubdtype(values.dtype, np.floating)
    )
    if floating and not all_finite(torch.as_tensor(values)):
        raise ValueError(f"Input contains NaN or infinity (in {where})")


def check_fields(batch, what):
    """A dict batch of inputs with every field checked: arrays or tensors, one row per sample.

    Parameters
    ----------
    batch : Mapping
        Field name to an array-like or tensor of shape ``(n, ...)``.
    what : str
        Names the batch in errors ("A batch of the stream", "X").

    Returns
    -------
    dict of str to ndarray or torch.Tensor
        In the mapping's order; numpy arrays for array-likes.
    """
    if not batch:
        raise ValueError(f"{what} is an empty dict; it needs the model's keyword inputs")
    fields = {}
    for key, value in batch.items():
        if not isinstance(key, str):
            raise TypeError(f"{what} has the key {key!r}; keyword inputs need str keys")
        if not torch.is_tensor(value):
            try:
                value = np.asarray(value)
            except ValueError as exc:  # numpy refuses ragged nested lists
                raise ValueError(
                    f"{what} has a ragged field {key!r} ({exc}); pad its rows to one length "
                    "(an attention_mask marks the padding)"
                ) from exc
            if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
                raise ValueError(
                    f"{what} has the field {key!r} of {value.dtype} values, not numbers"
                )
            if not value.flags.writeable:
                value = value.copy()
        if value.ndim < 1:
            raise ValueError(
                f"{what} has the field {key!r} of shape {tuple(value.shape)}; every field "
                "needs one row per sample, shape (n_samples, ...)"
            )
        _check_finite(value, f"the field {key!r}")
        fields[key] = value
    lengths = {key: value.shape[0] for key, value in fields.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"The fields of {what} have different numbers of samples: {lengths}; every "
            "field needs one row per sample"
        )
    return fields


def stack_records(records):
    """A list of per-sample dicts as one dict of fields, each stacked along a new batch axis.

    Parameters
    ----------
    records : list of Mapping
        One dict per sample (as the rows of a Hugging Face data set), with
        the same keys and, per key, the same shape.

    Returns
    -------
    dict of str to ndarray
    """
    keys = list(records[0])
    for i, record in enumerate(records):
        if list(record) != keys:
            raise ValueError(
                f"Sample {i} has the fields {list(record)}, but sample 0 has {keys}; every "
                "sample needs the same fields"
            )
    fields = {}
    for key in keys:
        values = [to_numpy(record[key]) for record in records]
        shapes = {np.shape(value) for value in values}
        if len(shapes) > 1:
            raise ValueError(
                f"The field {key!r} has different shapes across samples ({sorted(shapes)[:4]}); "
                "pad the samples to one length (an attention_mask marks the padding)"
            )
        fields[key] = np.stack(values)
    return fields


#: Batches a probe reads at most while it leaves out sequences of another length.
_PROBE_BATCHES = 16


def _joinable(first, batch):
    """Whether ``batch`` joins a probe that starts with ``first`` (numpy batches).

    Sequences of another length join by padding, which is only meaningful
    with an ``attention_mask`` (0 at the padding, so no statistic reads it);
    without one, only batches of the first's per-sample shape join.
    """
    padded = isinstance(first, dict) and MASK_KEY in first and first[MASK_KEY].ndim >= 2
    return padded or _digest_shape(batch) == _digest_shape(first)


def _joined(batches):
    """Joinable batches (:func:`_joinable`) of numpy inputs as one, padded to the longest."""
    if isinstance(batches[0], dict):
        return {key: concatenate_padded([b[key] for b in batches]) for key in batches[0]}
    return np.concatenate(batches)


def _digest_shape(batch):
    """A batch's per-sample shape, hashable (a dict batch's: per field)."""
    if isinstance(batch, dict):
        return tuple((key, tuple(value.shape[1:])) for key, value in batch.items())
    return tuple(batch.shape[1:])


def concatenate_padded(arrays, fill=0):
    """Arrays ``(n_i, L_i, ...)`` joined along the batch axis, padded to the longest ``L``.

    Batches of sequences of different lengths as one: a probe's inputs
    (padded with 0, which their ``attention_mask`` marks) or a stream's
    results (padded with NaN, as padded positions are).  Arrays of one
    shape are only concatenated.
    """
    if all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays)
    longest = max(a.shape[1] for a in arrays)
    return np.concatenate(
        [
            np.pad(
                a,
                [(0, 0), (0, longest - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                constant_values=fill,
            )
            for a in arrays
        ]
    )


def _digest(batch):
    """Shape, dtype and a hash of a batch's bytes: equal for equal batches, small to keep."""
    if isinstance(batch, dict):
        return tuple((key, _digest(value)) for key, value in batch.items())
    values = np.ascontiguousarray(to_numpy(batch))
    return values.shape, values.dtype, hashlib.blake2b(values.reshape(-1).view(np.uint8)).digest()


def _samplers(loader):
    """A DataLoader's sampler, its batch sampler and the batch sampler's own sampler."""
    batch_sampler = loader.batch_sampler
    return [loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None)]


def _stack(items):
    if all(torch.is_tensor(item) for item in items):
        return torch.stack([item.detach() for item in items])
    return np.stack([to_numpy(item) for item in items])


def to_numpy(batch):
    """A batch as a numpy array (float32 for floating tensors numpy lacks, as bfloat16).

    A dict batch becomes a dict of numpy arrays.
    """
    if isinstance(batch, dict):
        return {key: to_numpy(value) for key, value in batch.items()}
    if not torch.is_tensor(batch):
        return np.asarray(batch)
    check_has_values(batch)
    batch = batch.detach().cpu()
    if batch.is_floating_point() and batch.dtype not in (torch.float64, torch.float32):
        batch = batch.to(torch.float32)  # bfloat16 and float16 have no numpy dtype here
    return batch.numpy()


def to_tensor(X, device, dtype):
    """Copy a batch of model inputs to ``device``.

    Floating inputs take the compute ``dtype``; integer inputs (token ids)
    and booleans keep their own dtype, because casting ids to float breaks
    embeddings silently.  The result never shares memory with ``X``, so a
    model that edits its input in place cannot touch the caller's data.
    A dict batch becomes a dict of tensors, field by field.
    """
    if isinstance(X, Mapping):
        return {key: to_tensor(value, device, dtype) for key, value in X.items()}
    if torch.is_tensor(X):
        check_has_values(X)
        target = dtype if X.is_floating_point() else X.dtype
        return X.detach().to(device=device, dtype=target, copy=True)
    # Contiguous: torch takes no negative strides (X[::-1]); torch.tensor copies anyway.
    X = np.ascontiguousarray(X)
    target = dtype if np.issubdtype(X.dtype, np.floating) else None
    return torch.tensor(X, dtype=target, device=device)


def check_has_values(X):
    """Raise ValueError for a tensor without values (on the ``meta`` device), alone or
    in a dict: torch's own error says only that it cannot copy out of it."""
    for value in X.values() if isinstance(X, Mapping) else (X,):
        if torch.is_tensor(value) and value.is_meta:
            raise ValueError(
                f"X holds a tensor of shape {tuple(value.shape)} on the 'meta' device, which "
                "has a shape but no values; pass the data itself (on the CPU or a GPU)"
            )
