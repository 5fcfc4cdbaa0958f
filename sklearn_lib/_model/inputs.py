"""Model inputs: one tensor, or a dict of tensors passed as keyword arguments.

A batch of model inputs is either a tensor ``x`` (the model is called as
``model(x)``) or a dict of tensors with one row per sample in each, as
Hugging Face tokenizers and collators make them (``input_ids``,
``attention_mask``, ...), and the model is called as ``model(**x)``.  Every
function that handles a batch of inputs (slicing, repeating, calling the
model, naming it in an error) takes both forms through this module.

Padding.  A dict with an ``attention_mask`` of shape ``(n, T)`` (1 for real
tokens, 0 for padding) marks padded positions.  A node layer whose
activations have shape ``(n, T, d)`` (positions equal to the mask's
per-sample shape) then counts only its valid rows in every average and
score: :func:`valid_positions` is the one place that decides which rows
count.

Lengths.  Sequences need not have one length: a field of integers or
booleans (token ids, masks, position ids) with an axis after the batch axis
has a *length*, its first per-sample axis, and batches of one data set (and
the calls after a fit) may differ in it, as dynamically padded batches do.
Every other axis, and every float field, keeps the shape it had.
:func:`has_length` and :func:`same_but_lengths` are the one place that says
so.
"""

import numpy as np
import torch

#: The key whose 0 entries mark padded positions.
MASK_KEY = "attention_mask"


def is_dict(x):
    """True for a dict batch of inputs (passed to the model as keyword arguments)."""
    return isinstance(x, dict)


def n_rows(x):
    """The number of samples in a batch of inputs."""
    if is_dict(x):
        return next(iter(x.values())).shape[0]
    return x.shape[0]


def take_rows(x, index):
    """The samples ``index`` (a slice or an index tensor) of a batch of inputs."""
    if is_dict(x):
        return {key: value[index] for key, value in x.items()}
    return x[index]


def repeat_rows(x, copies):
    """A batch of inputs repeated ``copies`` times along the batch axis, copy-major."""

    def repeat(value):
        return value.repeat(copies, *([1] * (value.ndim - 1)))

    if is_dict(x):
        return {key: repeat(value) for key, value in x.items()}
    return repeat(x)


def device_of(x):
    """The device of a batch of inputs."""
    return next(iter(x.values())).device if is_dict(x) else x.device


def call_model(model, x, kwargs):
    """``model(x, **kwargs)`` or ``model(**x, **kwargs)`` on copies of the inputs.

    Copies, so that a model that edits its inputs in place cannot change the
    batch that later runs of the same pass reuse, nor the caller's tensors:
    those of ``forward_kwargs`` too, wherever they sit in it (lists, tuples,
    dicts).
    """
    kwargs = {key: _copied(value) for key, value in kwargs.items()}
    if is_dict(x):
        clash = sorted(set(x) & set(kwargs))
        if clash:
            raise ValueError(
                f"The batch and forward_kwargs both give the keyword argument(s) {clash}; "
                "give each one in one place"
            )
        return model(**{key: value.clone() for key, value in x.items()}, **kwargs)
    return model(x.clone(), **kwargs)


def _copied(value):
    """``value`` with every tensor in it cloned (through lists, tuples and dicts)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_copied(v) for v in value))
    if type(value) in (list, tuple):
        return type(value)(_copied(v) for v in value)
    if type(value) is dict:
        return {key: _copied(v) for key, v in value.items()}
    return value


def describe(x):
    """The shape and dtype of a batch of inputs, for error messages."""
    if is_dict(x):
        fields = ", ".join(f"{key}: {tuple(value.shape)} {value.dtype}" for key, value in x.items())
        return f"inputs {{{fields}}}"
    return f"inputs of shape {tuple(x.shape)}, dtype {x.dtype}"


def has_length(value):
    """Whether a field's first per-sample axis is a sequence length that may vary.

    Parameters
    ----------
    value : ndarray or torch.Tensor of shape (n, ...)
        One field of a batch (or the whole batch, for a tensor input).

    Returns
    -------
    bool
        True for integers or booleans (token ids, masks) with at least one
        axis after the batch axis.  Float values are features or embeddings
        of a fixed shape, as in every scikit-learn estimator.
    """
    if value.ndim < 2:
        return False
    if torch.is_tensor(value):
        return not (value.is_floating_point() or value.is_complex())
    return np.issubdtype(value.dtype, np.integer) or value.dtype == bool


def lengths_of(batch):
    """Which fields of a batch have a length (:func:`has_length`): a bool, or a dict of them.

    An ``attention_mask`` has one whatever its dtype (a float mask of 0 and 1
    is read as one too).
    """
    if isinstance(batch, dict):
        return {
            key: has_length(value) or (key == MASK_KEY and value.ndim >= 2)
            for key, value in batch.items()
        }
    return has_length(batch)


def same_but_lengths(shape, reference, lengths):
    """Whether per-sample ``shape`` is ``reference`` but for the lengths of fields that have one.

    Parameters
    ----------
    shape, reference : tuple or dict of str to tuple
        Per-sample shapes (a dict batch's: one per field).
    lengths : bool or dict of str to bool
        :func:`lengths_of` the batch of ``shape``.
    """
    if isinstance(shape, dict) or isinstance(reference, dict):
        if not (isinstance(shape, dict) and isinstance(reference, dict)):
            return False
        if list(shape) != list(reference):
            return False
        return all(same_but_lengths(shape[k], reference[k], lengths[k]) for k in shape)
    shape, reference = tuple(shape), tuple(reference)
    if lengths and len(shape) == len(reference) >= 1:
        return shape[1:] == reference[1:]
    return shape == reference


def check_mask(x, start=0):
    """``x``, once its ``attention_mask`` (if any) is a padding mask with a token in every sample.

    The mask must hold 1 (or True) for real tokens and 0 (or False) for
    padding, as Hugging Face's tokenizers make it.  An additive mask (0 for
    tokens, a large negative number for padding) would read the other way
    round, so any other value is refused; so is a sample without a real
    token, which has no activations to average.

    Parameters
    ----------
    x : torch.Tensor or dict of torch.Tensor
    start : int, default=0
        The index of the batch's first sample in the data, for the message.
    """
    if not is_dict(x) or MASK_KEY not in x:
        return x
    mask = x[MASK_KEY]
    ids = x.get("input_ids")
    if torch.is_tensor(ids) and ids.ndim == mask.ndim >= 2 and ids.shape != mask.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)}, but input_ids has "
            f"{tuple(ids.shape)}: the mask marks the padding of each token, so the two must "
            "have one shape"
        )
    if mask.dtype != torch.bool and mask.numel():
        values = torch.unique(mask.detach()).cpu()
        if not bool(((values == 0) | (values == 1)).all()):
            shown = ", ".join(f"{v:g}" for v in values[:4].tolist())
            raise ValueError(
                f"attention_mask must be 1 (or True) for real tokens and 0 (or False) for "
                f"padding, as Hugging Face's tokenizers make it; this one holds {shown}"
                f"{' ...' if len(values) > 4 else ''}. An additive mask (0 for tokens, a large "
                "negative number for padding) reads the other way round: pass the 0/1 mask"
            )
    empty = ~(mask != 0).reshape(mask.shape[0], -1).any(1)
    if bool(empty.any()):
        first = int(empty.nonzero()[0]) + start
        raise ValueError(
            f"Sample {first} has no real token: its attention_mask is all zeros, so it has "
            "no activations to average; leave such samples out"
        )
    return x


def attention_mask(x):
    """The batch's padding mask as a bool tensor ``(n, *positions)``, or None."""
    if not is_dict(x) or MASK_KEY not in x:
        return None
    return x[MASK_KEY] != 0


def valid_positions(x, shape):
    """Which rows of activations of per-sample ``shape`` count, or None for all.

    Parameters
    ----------
    x : torch.Tensor or dict of torch.Tensor
        The batch of inputs.
    shape : tuple
        Per-sample activation shape ``(*positions, d)`` (features last).

    Returns
    -------
    torch.Tensor of bool, shape (n, *positions), or None
        The attention mask when the activations' positions are the mask's
        (padded positions are left out), else None: every row counts.
    """
    mask = attention_mask(x)
    if mask is None or tuple(mask.shape[1:]) != tuple(shape[:-1]):
        return None
    return mask


def point_mask(x, shape, m, dtype):
    """:func:`valid_positions` at ``m`` points of the batch (alpha-major, ``m // n`` per
    sample), as multipliers ``(m, *positions, 1)`` of ``dtype``, or None for all."""
    valid = valid_positions(x, shape)
    if valid is None:
        return None
    return repeat_rows(valid, m // valid.shape[0]).unsqueeze(-1).to(dtype)


def without_padding(x):
    """The batch with every position marked valid (for checks that compare samples).

    The cut check swaps activations between samples; with different masks,
    the swapped sample would also attend differently, which is not a path
    around the node layer.  With every position valid the padding tokens are
    ordinary tokens and the comparison is exact.
    """
    mask = attention_mask(x)
    if mask is None:
        return x
    return {**x, MASK_KEY: torch.ones_like(x[MASK_KEY])}
