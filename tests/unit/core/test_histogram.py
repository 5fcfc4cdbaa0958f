"""Streamed histograms: every value counted once, in the bin that holds it."""

import numpy as np
import pytest
import torch

from sklearn_lib._core.histogram import StreamingHistogram


def _stream(hist, batches):
    for batch in batches:
        hist.update(torch.as_tensor(batch, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
def test_counts_equal_numpy_histogram_on_the_final_edges(seed):
    """Ranges that grow downward and upward, batch after batch: the final counts are
    numpy's histogram of every value on the final edges (exact, no value lost)."""
    rng = np.random.default_rng(seed)
    batches = [rng.normal(scale=10.0 ** rng.integers(-2, 3), size=(rng.integers(1, 50), 3))]
    batches += [rng.normal(loc=rng.normal() * 50, size=(rng.integers(0, 50), 3)) for _ in range(6)]
    hist = StreamingHistogram(3, n_bins=16)
    _stream(hist, batches)
    values = np.concatenate(batches)
    for column, (edges, counts) in enumerate(hist.result()):
        expected, _ = np.histogram(values[:, column], bins=edges)
        assert counts.sum() == len(values)
        np.testing.assert_array_equal(counts, expected)
        assert counts[0] > 0 and counts[-1] > 0  # empty end bins trimmed
        assert edges[0] <= values[:, column].min() and edges[-1] > values[:, column].max()


def test_bins_are_at_most_twice_the_range_a_known_range_would_give():
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 1, size=(10, 1)), rng.uniform(-100, 100, size=(10, 1))]
    hist = StreamingHistogram(1, n_bins=20)
    _stream(hist, batches)
    (edges, counts) = hist.result()[0]
    values = np.concatenate(batches)[:, 0]
    span = values.max() - values.min()
    assert np.diff(edges)[0] <= 2 * 2 * span / 20  # two for the doubling, two for its side


def test_a_constant_column_gets_one_bin_of_its_own_scale():
    hist = StreamingHistogram(2, n_bins=4)
    _stream(hist, [np.array([[3.0, 0.0], [3.0, 0.0]])])
    for edges, counts in hist.result():
        assert counts.tolist() == [2]
        assert edges[1] > edges[0]


def test_empty_batches_and_no_data():
    hist = StreamingHistogram(2)
    _stream(hist, [np.empty((0, 2))])
    assert [c.tolist() for _, c in hist.result()] == [[0], [0]]


@pytest.mark.parametrize("n_bins", [0, 1, 3])
def test_an_odd_number_of_bins_is_refused(n_bins):
    with pytest.raises(ValueError, match="even"):
        StreamingHistogram(1, n_bins=n_bins)


@pytest.mark.parametrize(
    "batches",
    [
        [[[1e-318], [1e-318]]],  # a constant below the smallest normal float
        [[[1e308], [-1e308]]],  # a span beyond float64's largest
        [[[1.0], [0.0]], [[1.7e308]]],  # a range doubled up to the limit
        [[[-1e-310], [2e-310]], [[5.0]]],
    ],
)
def test_values_near_float64_s_limits_are_counted_with_finite_edges(batches):
    """No endless doubling of a width rounded to 0, no inf or NaN bins: every value is
    counted, in finite, increasing edges."""
    hist = StreamingHistogram(1, n_bins=4)
    _stream(hist, [np.array(b) for b in batches])
    ((edges, counts),) = hist.result()
    assert counts.sum() == sum(len(b) for b in batches)
    assert np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)
