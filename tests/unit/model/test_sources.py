"""Inputs as sources of checked batches (``_data``)."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sklearn_lib._model.sources import ArraySource, StreamSource, is_stream, to_tensor


class Twice:
    """A re-iterable of two batches."""

    def __init__(self, *batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_what_counts_as_a_stream():
    X = np.zeros((4, 2))
    assert is_stream(DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2))
    assert is_stream(Twice(X, X))
    for array_like in (X, torch.zeros(4, 2), [[1.0, 2.0]], pd.DataFrame(X)):
        assert not is_stream(array_like)


def test_array_batches_cover_the_samples_in_order():
    X = np.arange(10).reshape(5, 2)
    starts, parts = zip(*ArraySource(X, 2).batches())
    assert starts == (0, 2, 4)
    np.testing.assert_array_equal(np.concatenate(parts), X)


def test_stream_batches_are_checked_and_counted():
    X = np.arange(12.0).reshape(6, 2)
    source = StreamSource(Twice((X[:4], "labels"), [X[4:]]))
    starts, parts = zip(*source.batches())
    assert starts == (0, 4) and source.n_samples == 6  # tuples give their first item
    np.testing.assert_array_equal(np.concatenate(parts), X)
    np.testing.assert_array_equal(source.probe(3), X[:3])
    with pytest.raises(ValueError, match=r"per-sample shape \(3,\), but Est was fitted.*\(2,\)"):
        list(StreamSource(Twice(np.zeros((2, 3))), (2,), fitted_by="Est").batches())
    with pytest.raises(ValueError, match="holds <U1 values, not numbers"):
        list(StreamSource(Twice(np.array([["a", "b"]]))).batches())
    with pytest.raises(ValueError, match=r"needs shape \(batch_size, ...\)"):
        list(StreamSource(Twice(np.zeros(3))).batches())
    with pytest.raises(ValueError, match="yielded no batch"):
        list(StreamSource(Twice()).batches())
    with pytest.raises(TypeError, match="read only once"):
        StreamSource(iter([X]))


def test_to_tensor_copies_and_keeps_token_ids():
    ids = np.array([[1, 2, 3]])
    tokens = to_tensor(ids, torch.device("cpu"), torch.float32)
    assert tokens.dtype == torch.int64
    floats = torch.ones(2, 3)
    moved = to_tensor(floats, torch.device("cpu"), torch.float32)
    moved += 1  # a model editing its input in place
    assert floats.eq(1).all() and moved.dtype == torch.float32
    frozen = np.ones((2, 2))
    frozen.setflags(write=False)
    assert to_tensor(frozen, torch.device("cpu"), torch.float64).dtype == torch.float64
