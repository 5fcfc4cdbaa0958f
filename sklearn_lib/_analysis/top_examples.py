"""The strongest examples of each feature, streamed: what a feature responds to.

One pass over the data keeps, for each chosen feature of each node layer,
the ``n_examples`` rows (a sample, or one position of it: a token, a
location of a conv map) where the feature is largest in absolute value (a
LIB feature's sign is a convention), and a histogram of all its values
(:class:`~sklearn_lib._core.histogram.StreamingHistogram`).  Memory holds
``n_features x n_examples`` rows per node, whatever the number of samples:
each batch's candidates are merged with the kept ones by one ``topk`` per
node (a heap per feature, batched).  Padded positions are never examples
and never counted.

What an example shows of its input is kept with it (:class:`TokenContexts`
for token ids, :class:`ImageTiles` for images, :class:`SampleInputs` for
tables), since a stream cannot be read again to fetch it.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._core.histogram import StreamingHistogram
from .._model.inputs import is_dict

__all__ = [
    "FeatureExamples",
    "ImageTiles",
    "SampleInputs",
    "TokenContexts",
    "TopExamples",
    "image_layout",
    "stable_topk",
    "token_ids",
]


def token_ids(x):
    """The token ids of a batch of inputs: an integer ``(n, T)`` tensor, or the
    ``input_ids`` field of keyword inputs (else their one integer ``(n, T)`` field);
    None where there is none."""
    if is_dict(x):
        if "input_ids" in x:
            return x["input_ids"]
        fields = [v for k, v in x.items() if k != "attention_mask" and _is_ids(v)]
        return fields[0] if len(fields) == 1 else None
    return x if _is_ids(x) else None


def _is_ids(x):
    return torch.is_tensor(x) and x.ndim == 2 and not (x.is_floating_point() or x.is_complex())


class TokenContexts:
    """Keeps, with each example, the token ids around it and the feature's value at each.

    Parameters
    ----------
    before, after : int
        Tokens kept before and after the example's own.
    """

    def __init__(self, before=12, after=4):
        self.before, self.after = before, after

    @property
    def width(self):
        return self.before + 1 + self.after

    def records(self, x, features, samples, positions):
        """``(ids, values)`` of the candidates' windows: ``(F, k, W)`` each; ids of -1
        and values of NaN beyond the sequence or at its padding.

        ``features`` is the batch's ``(n, T, F)`` (NaN at padded positions),
        ``samples`` and ``positions`` are ``(F, k)`` rows of the batch.
        """
        ids = token_ids(x)
        n, length, n_features = features.shape
        if ids is not None and length == 1 and ids.shape[1] != 1:
            # A node without positions (a pooled one): the sample's first tokens,
            # which have no values of their own.
            kept = torch.nn.functional.pad(ids.long()[:, : self.width], (0, self.width), value=-1)
            kept_ids = kept[:, : self.width][samples]  # (F, k, W)
            return kept_ids, torch.full(kept_ids.shape, float("nan"), device=ids.device)
        if ids is None or tuple(ids.shape) != (n, length):
            raise ValueError(
                "Token contexts need the inputs' token ids, an integer (n_samples, T) array "
                f"or an 'input_ids' field, with the node layer's {length} positions; these "
                "inputs have none: pass input_kind='tabular' or 'image' instead"
            )
        pad = (self.before, self.after)
        ids = torch.nn.functional.pad(ids.long(), pad, value=-1)  # (n, T + W - 1)
        values = torch.nn.functional.pad(features.transpose(1, 2), pad, value=float("nan"))
        windows = ids.unfold(1, self.width, 1)  # (n, T, W)
        value_windows = values.unfold(2, self.width, 1)  # (n, F, T, W)
        feature = torch.arange(n_features, device=ids.device)[:, None].expand_as(samples)
        kept_values = value_windows[samples, feature, positions]  # (F, k, W)
        kept_ids = windows[samples, positions].masked_fill(kept_values.isnan(), -1)
        return kept_ids, kept_values


class SampleInputs:
    """Keeps, with each example, its sample's input values (flattened; the first
    ``limit``), for table rows."""

    def __init__(self, limit=64):
        self.limit = limit

    def records(self, x, features, samples, positions):
        """``(F, k, D)`` float32: each candidate's sample input, flattened."""
        flat = _flat_inputs(x)[:, : self.limit]
        return (flat[samples],)


def _flat_inputs(x):
    if is_dict(x):
        raise ValueError(
            "Image tiles and table rows need the inputs as one array; these are keyword "
            f"inputs ({sorted(x)}): pass input_kind='tokens' for token ids"
        )
    return x.reshape(x.shape[0], -1).to(torch.float32)


def image_layout(shape):
    """``((H, W, C), channels_first)`` of images of per-sample ``shape``: ``(H, W)``,
    ``(H, W, C)``, or ``(C, H, W)`` where the first axis is 1 or 3 and the last not."""
    if len(shape) == 2:
        return (*shape, 1), False
    if shape[0] in (1, 3) and shape[-1] not in (1, 3):
        return (*shape[1:], shape[0]), True
    return tuple(shape), False


class ImageTiles:
    """Keeps, with each example, its sample's input as an image tile: bytes scaled by
    the tile's own range (a tile shows its pattern, whatever the inputs' units), and
    averaged down to at most ``max_side`` pixels a side, so that memory and the page
    stay small for large images.

    Parameters
    ----------
    image_shape : tuple of int or None
        Per-sample shape of the images (``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``);
        None: the inputs' own.
    max_side : int, default=64
    """

    def __init__(self, image_shape=None, max_side=64):
        self.image_shape, self.max_side = image_shape, max_side

    def records(self, x, features, samples, positions):
        """``(F, k, h, w, C)`` uint8 tiles of the candidates' samples."""
        flat = _flat_inputs(x)
        shape = self._shape(tuple(x.shape[1:]), flat.shape[1])
        (height, width, channels), first = image_layout(shape)
        # Each sample once (features share their batch's strongest samples), then picked.
        unique, inverse = torch.unique(samples, return_inverse=True)
        images = flat[unique].reshape(-1, *shape)
        if not first:  # (N, H, W[, C]) -> (N, C, H, W)
            images = images.reshape(-1, height, width, channels).permute(0, 3, 1, 2)
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        span = images.amax(dim=(1, 2, 3), keepdim=True) - low
        scaled = (images - low) / torch.where(span > 0, span, 1.0) * 255
        factor = -(-max(height, width) // self.max_side)
        if factor > 1:
            scaled = torch.nn.functional.avg_pool2d(scaled, factor, ceil_mode=True)
        tiles = scaled.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return (tiles[inverse],)  # (F, k, h, w, C)

    def _shape(self, given, size):
        shape = self.image_shape or given
        if len(shape) not in (2, 3) or math.prod(shape) != size:
            raise ValueError(
                f"Image tiles need each sample's image shape: the inputs have per-sample "
                f"shape {given} ({size} values), which image_shape={self.image_shape} does "
                "not describe; pass image_shape=(H, W), (H, W, C) or (C, H, W)"
            )
        return shape


@dataclass
class FeatureExamples:
    """The strongest examples of some features of one node layer.

    Attributes
    ----------
    node : str
    features : ndarray of shape (F,)
        The features' indices in the basis.
    values : ndarray of shape (F, m)
        Each feature's value at its examples, strongest (largest ``|value|``) first.
    samples : ndarray of shape (F, m)
        The examples' samples (their indices in the data).
    positions : ndarray of shape (F, m, A)
        Their positions (``A`` position axes: 1 for a sequence, 2 for a conv map, 0
        for a node without positions).
    records : tuple of ndarray
        What each example keeps of its input, ``(F, m, ...)`` each (see
        :class:`TokenContexts` and :class:`SampleInputs`).
    histograms : list of (edges, counts)
        Each feature's values over every row.
    n_rows : int
        Rows searched (real tokens or locations, or samples).
    """

    node: str
    features: np.ndarray
    values: np.ndarray
    samples: np.ndarray
    positions: np.ndarray
    records: tuple
    histograms: list
    n_rows: int


class _NodeSearch:
    """The running top examples of one node's features."""

    def __init__(self, basis, features, n_examples, recorder, device):
        self.node, self.n_examples, self.recorder = basis.name, n_examples, recorder
        self.features = np.asarray(features, dtype=np.int64)
        # The chosen columns alone: an output's identity basis is never made whole.
        self.mean = torch.as_tensor(basis.mean, dtype=torch.float64, device=device)  # (d,)
        columns = np.asarray(basis.matrix[:, self.features])  # (d, F)
        self.matrix = torch.as_tensor(columns, dtype=torch.float64, device=device)
        self.histogram = StreamingHistogram(len(self.features), device=device)
        self.kept = None  # dict of (F, m, ...) tensors: score, value, sample, position, records
        self.n_rows = 0

    def update(self, batch, f):
        valid = batch.valid(f.shape[1:])
        n, positions = f.shape[0], tuple(f.shape[1:-1])
        features = (f.reshape(n, -1, f.shape[-1]).to(torch.float64) - self.mean) @ self.matrix
        rows = features.reshape(-1, features.shape[-1])  # (n * P, F)
        if valid is not None:
            valid = valid.reshape(-1)
            features = features.masked_fill(~valid.view(n, -1, 1), float("nan"))
            rows = rows[valid]
        self.n_rows += rows.shape[0]
        self.histogram.update(rows)
        self._merge(self._candidates(batch, features, positions))

    def _candidates(self, batch, features, positions):
        """The batch's strongest ``k`` rows per feature, with their records."""
        n, n_positions, _ = features.shape
        score = features.abs().nan_to_num(nan=-1.0).reshape(-1, features.shape[-1]).T
        k = min(self.n_examples, score.shape[1])
        score, rows = stable_topk(score, k)  # (F, k)
        samples, flat_position = rows // n_positions, rows % n_positions
        value = features.reshape(-1, features.shape[-1]).T.gather(1, rows)
        found = {
            "score": score,
            "value": value,
            "sample": samples + batch.start,
            "position": _unravel(flat_position, positions),
        }
        if self.recorder is not None:
            records = self.recorder.records(batch.x, features, samples, flat_position)
            found.update({f"record{i}": r for i, r in enumerate(records)})
        return found

    def _merge(self, found):
        if self.kept is not None:
            found = {key: torch.cat([self.kept[key], found[key]], 1) for key in found}
        k = min(self.n_examples, found["score"].shape[1])
        # Stable on ties: the earlier row (kept, then in data order) first.
        order = torch.sort(found["score"], dim=1, descending=True, stable=True).indices[:, :k]
        self.kept = {key: _take(value, order) for key, value in found.items()}

    def result(self):
        kept = {key: value.cpu().numpy() for key, value in (self.kept or {}).items()}
        real = kept.get("score", np.empty((len(self.features), 0))) >= 0
        # Fewer real rows than n_examples: padding's placeholders (score -1) are cut.
        m = int(real.sum(1).min()) if real.size else 0
        return FeatureExamples(
            node=self.node,
            features=self.features,
            values=kept.get("value", np.empty((len(self.features), 0)))[:, :m],
            samples=kept.get("sample", np.empty((len(self.features), 0), np.int64))[:, :m],
            positions=kept.get("position", np.empty((len(self.features), 0, 0), np.int64))[:, :m],
            records=tuple(kept[key][:, :m] for key in sorted(kept) if key.startswith("record")),
            histograms=self.histogram.result(),
            n_rows=self.n_rows,
        )


def stable_topk(score, k):
    """``(values, indices)`` of the ``k`` largest entries of each row of ``score``,
    largest first, equal values in index order (``torch.topk`` breaks ties
    arbitrarily; a repeated token makes exact ties).

    The ``k``-th largest value is each row's threshold: every entry above it
    is taken, and of those equal to it the first ones, as many as are left.
    """
    if k == 0:
        return score[:, :0], score[:, :0].long()
    threshold = torch.topk(score, k, dim=1).values[:, -1:]  # (F, 1)
    above, tied = score > threshold, score == threshold
    needed = k - above.sum(1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(1) <= needed))
    rows = chosen.nonzero()[:, 1].view(score.shape[0], k)  # each row's k, in index order
    values = score.gather(1, rows)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), rows.gather(1, order)


def _unravel(flat, shape):
    """``(F, k)`` flat position indices as ``(F, k, len(shape))`` coordinates."""
    coords = []
    for size in reversed(shape):
        coords.append(flat % size)
        flat = flat // size
    if not coords:
        return flat.new_zeros(*flat.shape, 0)
    return torch.stack(coords[::-1], -1)


def _take(value, order):
    """``value[f, order[f, j], ...]`` for ``(F, n, ...)`` values and ``(F, k)`` order."""
    index = order.reshape(*order.shape, *([1] * (value.ndim - 2)))
    return value.gather(1, index.expand(*order.shape, *value.shape[2:]))


class TopExamples:
    """Accumulator of a pass: the strongest examples of chosen features of node layers.

    Parameters
    ----------
    bases : list of NodeBasis
        The node layers searched (the model output among them as ``"output"``).
    features : list of array-like of int
        Per basis, the features' indices in it.
    n_examples : int
        Examples kept per feature.
    recorder : TokenContexts, SampleInputs or None
        What each example keeps of its input.
    device : torch.device
    """

    def __init__(self, bases, features, n_examples, recorder, device):
        self.searches = [
            _NodeSearch(basis, chosen, n_examples, recorder, device)
            for basis, chosen in zip(bases, features)
        ]
        self.reads = tuple(basis.name for basis in bases)

    def update(self, batch, acts):
        for search in self.searches:
            search.update(batch, acts[search.node])

    def result(self):
        """``{node: FeatureExamples}``."""
        return {search.node: search.result() for search in self.searches}
