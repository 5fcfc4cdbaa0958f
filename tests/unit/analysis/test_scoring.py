"""Streamed scores (``_analysis.scoring``) against scikit-learn's metrics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, r2_score

from sklearn_lib._analysis.scoring import check_labels, make_scorer


def test_streamed_scores_equal_sklearn(rng):
    outputs = rng.normal(size=(50, 4))
    ablated = outputs + 0.3 * rng.normal(size=(50, 4))
    labels = rng.integers(0, 4, size=50)
    r2, acc = make_scorer(None, False)(), make_scorer(None, True)()
    for start in range(0, 50, 16):
        sl = slice(start, start + 16)
        r2.update(torch.as_tensor(ablated[sl]), torch.as_tensor(outputs[sl]), None)
        acc.update(torch.as_tensor(ablated[sl]), None, labels[sl])
    expected = r2_score(outputs, ablated, multioutput="variance_weighted")
    assert r2.result() == pytest.approx(expected, rel=1e-12)
    assert acc.result() == accuracy_score(labels, ablated.argmax(1))


def test_labels_are_checked_against_the_outputs():
    with pytest.raises(ValueError, match=r"y has shape \(3,\).*need class labels of shape \(4,\)"):
        check_labels(np.zeros(3), 4, (5,))
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 5\)"):
        check_labels(np.array([0, 1.5]), 2, (5,))
    # The range is checked where labels are scored (padded positions never are).
    accuracy = make_scorer("accuracy", True)()
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 5\)"):
        accuracy.update(torch.zeros(2, 5), None, np.array([0, 5]))
    # A stream's length is not known yet: only the per-sample shape is checked.
    assert check_labels(np.array([1.0, 2.0]), None, (5,)).dtype == np.int64


def test_accuracy_without_a_scored_label_names_the_rule():
    accuracy = make_scorer("accuracy", True)()
    accuracy.update(torch.zeros(2, 3, 5), None, np.full((2, 3), -100))
    with pytest.raises(ValueError, match="every label of y is -100"):
        accuracy.result()


# -- sequences: pooled rows ----------------------------------------------------------------------
def _sequence_batches(rng, lengths=(3, 5, 4), n=(4, 3, 5), d=3):
    """Outputs ``(n, T, d)`` whose mean depends on the position, ablated, and valid masks."""
    batches = []
    for b, (T, m) in enumerate(zip(lengths, n)):
        original = rng.normal(size=(m, T, d)) + 3.0 * np.arange(T)[:, None]  # by position
        ablated = original + 0.5 * rng.normal(size=(m, T, d))
        valid = np.ones((m, T), dtype=bool)
        if b == 0:
            valid[::2, 2:] = False  # every other sample padded to 2 tokens
        elif b == 1:
            for s in range(m):
                valid[s, T - 1 - s % 3 :] = False  # 1 to 3 padded tokens
        else:
            valid[1, 1:] = False  # one sample of a single token
        # Padding holds any values at all: here far off, to show it is never read.
        original[~valid] = 1e6
        ablated[~valid] = -1e6
        batches.append((original, ablated, valid))
    return batches


def _r2_of(batches):
    r2 = make_scorer("r2", False)()
    for original, ablated, valid in batches:
        r2.update(torch.as_tensor(ablated), torch.as_tensor(original), None, torch.as_tensor(valid))
    return r2.result()


def _left_padded(array, valid):
    """Each sample's valid positions moved to its end, the padding to its start."""
    out = np.empty_like(array)
    for s in range(len(array)):
        real, pad = array[s][valid[s]], array[s][~valid[s]]
        out[s] = np.concatenate([pad, real])
    return out


def test_r2_pools_every_valid_row_as_r2_score_does(rng):
    batches = _sequence_batches(rng)
    original = np.concatenate([o[v] for o, _, v in batches])  # (valid rows, d)
    ablated = np.concatenate([a[v] for _, a, v in batches])
    expected = r2_score(original, ablated, multioutput="variance_weighted")
    assert _r2_of(batches) == pytest.approx(expected, rel=1e-12)


def test_r2_without_a_mask_pools_every_position(rng):
    original, ablated, _ = _sequence_batches(rng, lengths=(4,), n=(6,))[0]
    original = rng.normal(size=original.shape) + np.arange(4)[:, None]
    ablated = original + rng.normal(size=original.shape)
    r2 = make_scorer("r2", False)()
    for sl in (slice(0, 4), slice(4, 6)):
        r2.update(torch.as_tensor(ablated[sl]), torch.as_tensor(original[sl]), None)
    expected = r2_score(
        original.reshape(-1, 3), ablated.reshape(-1, 3), multioutput="variance_weighted"
    )
    assert r2.result() == pytest.approx(expected, rel=1e-12)


def test_r2_does_not_depend_on_the_side_of_the_padding(rng):
    right = _sequence_batches(rng)
    left = [(_left_padded(o, v), _left_padded(a, v), _left_padded(v, v)) for o, a, v in right]
    assert not all(np.array_equal(l[2], r[2]) for l, r in zip(left, right))
    assert abs(_r2_of(left) - _r2_of(right)) <= 1e-12


def test_r2_does_not_depend_on_the_padded_length(rng):
    batches = _sequence_batches(rng)
    longer = []
    for original, ablated, valid in batches:
        pad = [(0, 0), (0, 3), (0, 0)]
        longer.append(
            (
                np.pad(original, pad, constant_values=7.0),
                np.pad(ablated, pad, constant_values=-7.0),
                np.pad(valid, pad[:2], constant_values=False),
            )
        )
    assert abs(_r2_of(longer) - _r2_of(batches)) <= 1e-12


def test_labels_may_be_padded_for_longer_sequences():
    y = np.zeros((4, 7))
    y[:, 5:] = -100
    labels = check_labels(y, 4, (5, 3))  # outputs of 5 positions, labels for 7
    assert labels.shape == (4, 7) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, y)
    assert check_labels(y, None, (5, 3)).shape == (4, 7)  # a stream not read yet
    with pytest.raises(ValueError, match=r"y has shape \(4, 4\).*labels of shape \(4, 5\)"):
        check_labels(np.zeros((4, 4)), 4, (5, 3))  # shorter than the outputs
    with pytest.raises(ValueError, match=r"y has shape \(3, 7\).*labels of shape \(4, 7\)"):
        check_labels(np.zeros((3, 7)), 4, (5, 3))  # the samples still count
    with pytest.raises(ValueError, match=r"y has shape \(4, 7\).*labels of shape \(4,\)"):
        check_labels(y, 4, (3,))  # outputs without positions
    with pytest.raises(ValueError, match=r"y has shape \(4, 7, 1\).*labels of shape \(4, 5\)"):
        check_labels(y[..., None], 4, (5, 3))
