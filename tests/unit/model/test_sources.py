"""Inputs as sources of checked batches (``_data``)."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sklearn_lib._model.inputs import n_rows
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


# -- sequence lengths ----------------------------------------------------------------------------
def _tokens(n, length, seed, pad=0):
    """A dict batch of ``n`` sequences of ``length`` ids, the last ``pad`` of each padded."""
    ids = np.random.default_rng(seed).integers(1, 50, size=(n, length))
    mask = np.ones((n, length), dtype=np.int64)
    mask[:, length - pad :] = 0
    return {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "pixels": np.full((n, 2), float(seed)),  # a float field: one shape throughout
        "label": np.arange(n) + 10 * seed,  # one number per sample
    }


def test_array_sources_never_vary_in_length():
    assert ArraySource(np.zeros((4, 3), dtype=np.int64), 2).lengths_vary is False


@pytest.mark.parametrize(
    "batches, varies",
    [
        ([np.ones((2, 3), dtype=np.int64), np.ones((3, 5), dtype=np.int64)], True),
        ([np.ones((2, 3), dtype=np.int64), np.ones((3, 3), dtype=np.int64)], False),
        ([torch.ones(2, 3, 2, dtype=torch.int32), torch.ones(1, 6, 2, dtype=torch.int32)], True),
        ([np.ones((2, 4), dtype=bool), np.ones((1, 2), dtype=bool)], True),
        ([_tokens(2, 3, 0, pad=1), _tokens(3, 6, 1, pad=2)], True),
        ([_tokens(2, 3, 0), _tokens(3, 3, 1, pad=1)], False),
    ],
    ids=["ids", "ids of one length", "3-D int tensors", "bools", "dicts", "dicts of one length"],
)
def test_a_stream_takes_sequences_of_any_length(batches, varies):
    source = StreamSource(Twice(*batches))
    assert source.lengths_vary is None  # not known before a full pass
    source.probe(2)
    assert source.lengths_vary is None  # the probe reads only the start
    starts, parts = zip(*source.batches())
    assert source.lengths_vary is varies
    assert starts == (0, 2) and source.n_samples == 2 + n_rows(batches[1])
    for part, batch in zip(parts, batches):
        if isinstance(batch, dict):
            assert list(part) == list(batch)
            for key in batch:
                np.testing.assert_array_equal(part[key], batch[key])
        else:
            assert part is batch or np.array_equal(np.asarray(part), np.asarray(batch))


def test_the_fitted_length_is_no_rule_for_later_batches():
    source = StreamSource(Twice(np.ones((2, 7), dtype=np.int64)), (4,), fitted_by="Est")
    assert [len(batch) for _, batch in source.batches()] == [2]
    assert source.shape == (4,)  # the fit's shape stays the reference


@pytest.mark.parametrize(
    "first, later, shown",
    [
        (np.zeros((1, 3)), np.zeros((2, 5)), r"\(5,\).*\(3,\)"),  # floats have no length
        (
            np.zeros((1, 3, 2), dtype=np.int64),
            np.zeros((2, 3, 4), dtype=np.int64),
            r"\(3, 4\).*\(3, 2\)",
        ),  # only the first per-sample axis is a length
        (
            np.zeros((1, 3), dtype=np.int64),
            np.zeros((2, 3, 1), dtype=np.int64),
            r"\(3, 1\).*\(3,\)",
        ),
        (
            _tokens(1, 3, 0),
            {**_tokens(2, 5, 1), "pixels": np.zeros((2, 3))},
            r"'pixels': \(3,\).*'pixels': \(2,\)",
        ),  # a float field
    ],
    ids=["float lengths", "an axis after the length", "another rank", "a float field"],
)
def test_shapes_other_than_lengths_are_refused_naming_the_rule(first, later, shown):
    with pytest.raises(ValueError, match=f"{shown}.*Only the length of a sequence"):
        list(StreamSource(Twice(first, later)).batches())
    with pytest.raises(ValueError, match=f"{shown}.*Only the length of a sequence"):
        StreamSource(Twice(first, later)).probe(20)  # reads both: the first has 1 sample


def _padded_reference(batches, key):
    """``batches[i][key]`` zero-padded on the right to the longest, then concatenated."""
    values = [batch[key] for batch in batches]
    if values[0].ndim < 2:
        return np.concatenate(values)
    longest = max(value.shape[1] for value in values)
    out = np.zeros((sum(len(v) for v in values), longest, *values[0].shape[2:]), values[0].dtype)
    row = 0
    for value in values:
        out[row : row + len(value), : value.shape[1]] = value
        row += len(value)
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_the_probe_pads_sequences_to_the_longest_where_a_mask_marks_padding(n):
    # One sample in the first batch: the probe reads on to hold two (n) samples.
    batches = [_tokens(1, 3, 0), _tokens(2, 5, 1, pad=1), _tokens(1, 8, 2)]
    probe = StreamSource(Twice(*batches)).probe(n)
    assert list(probe) == list(batches[0])
    for key in batches[0]:
        expected = _padded_reference(batches[:2], key)[:2]
        np.testing.assert_array_equal(probe[key], expected)
        assert probe[key].dtype == batches[0][key].dtype
    # The padding is marked as such: sample 0 has its 3 tokens, no more.
    np.testing.assert_array_equal(probe["attention_mask"][0], [1, 1, 1, 0, 0])


def test_the_probe_joins_batches_of_one_length_as_they_are():
    batches = [_tokens(1, 4, 0, pad=1), _tokens(3, 4, 1)]
    probe = StreamSource(Twice(*batches)).probe(3)
    for key in batches[0]:
        np.testing.assert_array_equal(probe[key], np.concatenate([b[key] for b in batches])[:2])


@pytest.mark.parametrize(
    "batches",
    [
        [np.arange(3).reshape(1, 3), np.arange(5).reshape(1, 5)],
        [{"input_ids": np.arange(3).reshape(1, 3)}, {"input_ids": np.arange(5).reshape(1, 5)}],
    ],
    ids=["ids", "a dict without a mask"],
)
def test_without_a_mask_the_probe_leaves_out_sequences_of_another_length(batches):
    """Zero ids are real tokens without a mask: a shorter batch is not padded."""
    probe = StreamSource(Twice(*batches)).probe(2)
    first = batches[0]
    if isinstance(first, dict):
        assert list(probe) == ["input_ids"]
        np.testing.assert_array_equal(probe["input_ids"], first["input_ids"])
    else:
        np.testing.assert_array_equal(probe, first)


def test_a_probe_that_leaves_out_a_batch_reads_on_for_two_samples():
    """The checks that compare samples need two: a left-out batch does not count."""
    batches = [
        np.arange(3).reshape(1, 3),
        np.arange(5).reshape(1, 5),
        np.arange(3, 6).reshape(1, 3),
    ]
    probe = StreamSource(Twice(*batches)).probe(2)
    np.testing.assert_array_equal(probe, np.concatenate([batches[0], batches[2]]))
