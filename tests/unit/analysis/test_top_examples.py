"""Streamed top examples (``_analysis.top_examples``) against a search over every row at once."""

import numpy as np
import pytest
import torch

from sklearn_lib._analysis.top_examples import (
    ImageTiles,
    SampleInputs,
    TokenContexts,
    TopExamples,
    image_layout,
    stable_topk,
    token_ids,
)
from sklearn_lib._fitting.basis import NodeBasis
from sklearn_lib._model.session import Batch


def _basis(name, shape, rng):
    d = shape[-1]
    matrix = rng.normal(size=(d, d))
    return NodeBasis(
        name,
        shape,
        rng.normal(size=d),
        matrix,
        np.linalg.inv(matrix),
        np.sort(rng.uniform(1, 2, d))[::-1],
        d,
    )


def _run(search, batches):
    """Feed ``(x, acts)`` batches as a pass would."""
    start = 0
    for x, acts in batches:
        batch = Batch(x, start)
        search.update(batch, acts)
        start += batch.n
    return search.result()


def _brute_force(acts, valid, basis, features, m):
    """``(samples, positions, values)`` of each feature's ``m`` largest ``|value|`` rows,
    ties in row order, over every row at once."""
    n, *positions, d = acts.shape
    F = (acts.reshape(-1, d) - basis.mean) @ basis.matrix[:, features]
    index = np.stack(np.unravel_index(np.arange(F.shape[0]), (n, *positions)), -1)
    keep = valid.reshape(-1)
    F, index = F[keep], index[keep]
    order = np.argsort(-np.abs(F), axis=0, kind="stable")[:m]  # (m, F)
    return index[order, 0].T, index[order, 1:].transpose(1, 0, 2), np.take_along_axis(F, order, 0).T


@pytest.mark.parametrize("seed", range(3))
def test_stable_topk_equals_a_stable_sort(seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 4, size=(5, 40)).astype(float)  # many exact ties
    values, rows = stable_topk(torch.as_tensor(score), 7)
    order = np.argsort(-score, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(rows.numpy(), order)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(score, order, 1))


@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("positions", [(), (5,), (3, 4)])
def test_streamed_search_equals_a_search_over_every_row(positions, batch):
    """Nodes without positions, sequences and conv maps; batches merged one by one."""
    rng = np.random.default_rng(len(positions) + batch)
    n, d, m = 16, 4, 6
    basis = _basis("node", (*positions, d), rng)
    acts = rng.normal(size=(n, *positions, d))
    acts[3] = acts[1]  # exact ties: equal rows, found in data order
    features = np.array([0, 2, 3])
    search = TopExamples([basis], [features], m, None, "cpu")
    got = _run(
        search,
        [
            (torch.zeros(len(a), 1), {"node": torch.as_tensor(a)})
            for a in np.array_split(acts, range(batch, n, batch))
        ],
    )["node"]
    samples, where, values = _brute_force(acts, np.ones((n, *positions), bool), basis, features, m)
    np.testing.assert_array_equal(got.samples, samples)
    np.testing.assert_array_equal(got.positions, where)
    np.testing.assert_allclose(got.values, values, rtol=1e-12)
    assert got.n_rows == n * int(np.prod(positions))
    for f, (edges, counts) in enumerate(got.histograms):
        column = (acts.reshape(-1, d) - basis.mean) @ basis.matrix[:, features[f]]
        np.testing.assert_array_equal(counts, np.histogram(column, bins=edges)[0])


def test_padding_is_never_an_example_and_never_counted():
    rng = np.random.default_rng(0)
    n, T, d = 6, 5, 3
    basis = _basis("h", (T, d), rng)
    acts = rng.normal(size=(n, T, d))
    mask = np.ones((n, T), dtype=np.int64)
    mask[:, 3:] = 0
    acts[:, 3:] = 100.0  # padding holds the largest values of all
    ids = rng.integers(0, 50, size=(n, T))
    x = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask)}
    search = TopExamples([basis], [np.arange(d)], 4, None, "cpu")
    got = _run(search, [(x, {"h": torch.as_tensor(acts)})])["h"]
    assert got.positions.max() < 3
    assert got.n_rows == n * 3
    assert sum(c.sum() for _, c in got.histograms) == d * n * 3
    samples, where, values = _brute_force(acts, mask.astype(bool), basis, np.arange(d), 4)
    np.testing.assert_array_equal(got.samples, samples)
    np.testing.assert_allclose(got.values, values, rtol=1e-12)


def test_fewer_rows_than_examples_keeps_the_real_ones_only():
    rng = np.random.default_rng(1)
    basis = _basis("h", (2, 3), rng)
    mask = torch.tensor([[1, 0], [1, 0]])
    x = {"input_ids": torch.zeros(2, 2, dtype=torch.long), "attention_mask": mask}
    got = _run(
        TopExamples([basis], [[0]], 10, None, "cpu"),
        [(x, {"h": torch.as_tensor(rng.normal(size=(2, 2, 3)))})],
    )["h"]
    assert got.values.shape == (1, 2)  # two real tokens, not 10 placeholders


def test_token_contexts_hold_the_tokens_and_values_around_each_example():
    rng = np.random.default_rng(2)
    n, T, d = 8, 10, 3
    basis = _basis("h", (T, d), rng)
    acts = rng.normal(size=(n, T, d))
    ids = rng.integers(0, 99, size=(n, T))
    recorder = TokenContexts(before=3, after=2)
    got = _run(
        TopExamples([basis], [[0, 1]], 5, recorder, "cpu"),
        [
            (torch.as_tensor(ids[:5]), {"h": torch.as_tensor(acts[:5])}),
            (torch.as_tensor(ids[5:]), {"h": torch.as_tensor(acts[5:])}),
        ],
    )["h"]
    context_ids, context_values = got.records
    assert context_ids.shape == (2, 5, 6)
    features = (acts - basis.mean) @ basis.matrix[:, [0, 1]]  # (n, T, 2)
    for f in range(2):
        for e in range(5):
            s, t = got.samples[f, e], got.positions[f, e, 0]
            for w, u in enumerate(range(t - 3, t + 3)):
                if 0 <= u < T:
                    assert context_ids[f, e, w] == ids[s, u]
                    assert context_values[f, e, w] == pytest.approx(features[s, u, f], rel=1e-12)
                else:
                    assert context_ids[f, e, w] == -1 and np.isnan(context_values[f, e, w])


def test_token_contexts_of_a_node_without_positions_are_the_first_tokens():
    rng = np.random.default_rng(3)
    basis = _basis("pooled", (3,), rng)
    ids = rng.integers(0, 9, size=(4, 7))
    got = _run(
        TopExamples([basis], [[0]], 2, TokenContexts(2, 1), "cpu"),
        [(torch.as_tensor(ids), {"pooled": torch.as_tensor(rng.normal(size=(4, 3)))})],
    )
    context_ids, context_values = got["pooled"].records
    np.testing.assert_array_equal(context_ids[0, 0], ids[got["pooled"].samples[0, 0], :4])
    assert np.isnan(context_values).all()


def test_token_contexts_need_token_ids():
    rng = np.random.default_rng(4)
    basis = _basis("h", (5, 3), rng)
    search = TopExamples([basis], [[0]], 2, TokenContexts(), "cpu")
    with pytest.raises(ValueError, match="token ids"):
        _run(search, [(torch.zeros(2, 5, 3), {"h": torch.as_tensor(rng.normal(size=(2, 5, 3)))})])


def test_sample_inputs_keep_each_example_s_input():
    rng = np.random.default_rng(5)
    basis = _basis("h", (3,), rng)
    X = rng.normal(size=(9, 2, 2))
    got = _run(
        TopExamples([basis], [[0, 2]], 3, SampleInputs(), "cpu"),
        [(torch.as_tensor(X), {"h": torch.as_tensor(rng.normal(size=(9, 3)))})],
    )["h"]
    (rows,) = got.records
    np.testing.assert_allclose(rows, X.reshape(9, 4)[got.samples], rtol=1e-6)
    with pytest.raises(ValueError, match="one array"):
        SampleInputs().records({"a": torch.zeros(1)}, None, None, None)


def test_token_ids_of_the_input_forms():
    ids = torch.zeros(2, 3, dtype=torch.long)
    assert token_ids(ids) is ids
    assert token_ids({"input_ids": ids, "attention_mask": ids}) is ids
    assert token_ids({"tokens": ids, "attention_mask": ids}) is ids
    assert token_ids(torch.zeros(2, 3)) is None
    assert token_ids({"a": ids, "b": ids}) is None  # two candidates: none is guessed


def test_sample_inputs_keep_the_first_values_only():
    X = torch.arange(2 * 100, dtype=torch.float64).reshape(2, 100)
    (rows,) = SampleInputs(limit=64).records(X, None, torch.tensor([[1, 0]]), None)
    np.testing.assert_array_equal(rows[0, 0], np.arange(100, 164))


@pytest.mark.parametrize(
    "shape, layout",
    [
        ((8, 8), ((8, 8, 1), False)),
        ((3, 32, 32), ((32, 32, 3), True)),
        ((32, 32, 3), ((32, 32, 3), False)),
        ((1, 28, 28), ((28, 28, 1), True)),
    ],
)
def test_image_layout(shape, layout):
    assert image_layout(shape) == layout


@pytest.mark.parametrize("shape", [(3, 6, 5), (6, 5, 3), (6, 5)])
def test_image_tiles_are_each_sample_scaled_to_bytes_channels_last(shape):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, *shape))
    (tiles,) = ImageTiles().records(torch.as_tensor(X), None, torch.tensor([[2, 0]]), None)
    assert tiles.dtype == torch.uint8 and tiles.shape == (1, 2, 6, 5, 1 if len(shape) == 2 else 3)
    image = X[2] if shape[0] != 3 else np.moveaxis(X[2], 0, -1)
    image = image.reshape(6, 5, -1)
    expected = (image - image.min()) / (image.max() - image.min()) * 255
    np.testing.assert_allclose(tiles[0, 0].numpy(), expected.round(), atol=1)


def test_large_images_are_averaged_down_to_small_tiles():
    X = torch.zeros(2, 3, 200, 130)
    X[:, :, :100] = 1.0  # top half bright
    (tiles,) = ImageTiles(max_side=64).records(X, None, torch.tensor([[0]]), None)
    assert tiles.shape == (1, 1, 50, 33, 3)  # 4 x 4 pixels per tile pixel
    assert tiles[0, 0, :25].min() == 255 and tiles[0, 0, 25:].max() == 0


def test_flat_images_need_their_shape():
    flat = torch.zeros(2, 64)
    (tiles,) = ImageTiles((8, 8)).records(flat, None, torch.tensor([[1]]), None)
    assert tiles.shape == (1, 1, 8, 8, 1)
    with pytest.raises(ValueError, match=r"image_shape=\(8, 7\) does not describe"):
        ImageTiles((8, 7)).records(flat, None, torch.tensor([[1]]), None)
    with pytest.raises(ValueError, match="pass image_shape"):
        ImageTiles().records(flat, None, torch.tensor([[1]]), None)
