"""What the estimators share (``_base``): sequences of any length, joined and checked."""

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_lib import ActivationTransformer
from sklearn_lib._base import check_activations, join_positions, map_arrays


class Batches:
    """A re-iterable of the given batches."""

    def __init__(self, *batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _nan_padded(parts):
    """Parts ``(n_i, P_i, w)`` written into one NaN table ``(sum n_i, P_max * w)``, by hand."""
    longest = max(part.shape[1] for part in parts)
    width = parts[0].shape[2]
    out = np.full((sum(len(part) for part in parts), longest * width), np.nan)
    row = 0
    for part in parts:
        n, positions, _ = part.shape
        out[row : row + n, : positions * width] = part.reshape(n, -1)
        row += n
    return out


# -- join_positions and map_arrays ---------------------------------------------------------------
def test_join_positions_pads_shorter_batches_with_nan(rng):
    parts = [rng.normal(size=(2, 3, 2)), rng.normal(size=(1, 5, 2)), rng.normal(size=(3, 4, 2))]
    joined = join_positions(parts)
    assert joined.shape == (6, 10)
    np.testing.assert_array_equal(joined, _nan_padded(parts))
    # Whole positions are missing: the 3 positions of the first batch, then NaN.
    assert np.isnan(joined[:2, 6:]).all() and not np.isnan(joined[:2, :6]).any()


def test_join_positions_of_one_length_is_a_concatenation(rng):
    parts = [rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 3, 4))]
    np.testing.assert_array_equal(join_positions(parts), np.concatenate(parts).reshape(7, 12))


def test_map_arrays_calls_fn_once_on_an_array_like():
    seen = []
    A = np.arange(6.0).reshape(3, 2)
    assert map_arrays(A, lambda batch: seen.append(batch) or 2 * batch).tolist() == (2 * A).tolist()
    assert len(seen) == 1 and seen[0] is A


def test_map_arrays_concatenates_a_streams_batches(rng):
    batches = [rng.normal(size=(2, 3)), rng.normal(size=(4, 3))]
    got = map_arrays(Batches(*batches), lambda batch: batch[:, ::-1])
    np.testing.assert_array_equal(got, np.concatenate(batches)[:, ::-1])


def test_map_arrays_with_a_width_joins_batches_of_other_lengths():
    # Token ids of two lengths, mapped to 2 columns per position.
    batches = [np.arange(6).reshape(2, 3), np.arange(10).reshape(2, 5) + 100]

    def per_position(batch):  # (n, T) -> (n, T * 2)
        return np.stack([batch, -batch], axis=-1).astype(np.float64).reshape(len(batch), -1)

    got = map_arrays(Batches(*batches), per_position, width=2)
    expected = _nan_padded([per_position(b).reshape(2, -1, 2) for b in batches])
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (4, 10) and np.isnan(got[:2, 6:]).all()


def test_map_arrays_joins_activations_of_other_lengths(rng):
    """``transform_activations`` of a stream of activations ``(n_i, T_i, d)``."""
    batches = [rng.normal(size=(2, 3, 4)), rng.normal(size=(1, 5, 4))]
    got = map_arrays(Batches(*batches), lambda b: b.reshape(len(b), -1), width=4)
    np.testing.assert_array_equal(got, _nan_padded(batches))


# -- check_activations ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 4, 3), (2, 6, 3), (2, 1, 3), (2, 12), (2, 18), (2, 3)])
def test_a_sequence_layer_takes_activations_of_any_length(rng, shape):
    A = rng.normal(size=shape)
    got = check_activations(A, (4, 3), "Est")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, A.reshape(2, -1, 3))


@pytest.mark.parametrize(
    "shape", [(2, 4, 2), (2, 7), (2, 4, 3, 1), (2, 1, 4, 3)], ids=["width", "flat", "rank", "rank2"]
)
def test_a_sequence_layer_refuses_another_width_naming_any_length(shape):
    with pytest.raises(ValueError, match=r"layer Est was fitted on: \(4, 3\) or \(T, 3\) of any"):
        check_activations(np.zeros(shape), (4, 3), "Est")


@pytest.mark.parametrize(
    "layer, good, bad",
    [
        ((5,), [(2, 5)], [(2, 6), (2, 10), (2, 2, 5)]),
        ((2, 2, 3), [(2, 2, 2, 3), (2, 12)], [(2, 3, 2, 3), (2, 2, 3, 3), (2, 18), (2, 4, 3)]),
    ],
    ids=["features", "a feature map"],
)
def test_other_layers_take_their_own_shape_only(layer, good, bad):
    for shape in good:
        A = np.arange(float(np.prod(shape))).reshape(shape)
        np.testing.assert_array_equal(
            check_activations(A, layer, "Est"), A.reshape(2, -1, layer[-1])
        )
    for shape in bad:
        with pytest.raises(ValueError, match=r"do not match the layer Est") as info:
            check_activations(np.zeros(shape), layer, "Est")
        assert "any length" not in str(info.value)


def test_check_activations_lets_padded_positions_through(rng):
    A = rng.normal(size=(2, 5, 3))
    A[0, 3:] = np.nan  # whole positions, as transform pads them
    got = check_activations(A.reshape(2, -1), (4, 3), "Est")
    np.testing.assert_array_equal(got, A)
    A[1, 0, 1] = np.nan  # one missing value
    with pytest.raises(ValueError, match="contains NaN outside whole positions"):
        check_activations(A, (4, 3), "Est")


# -- activations of each token -------------------------------------------------------------------
class MaskedTokens(nn.Module):
    """Token ids and a mask -> masked embeddings -> ``proj``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(9, 3)
        self.proj = nn.Linear(3, 4)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None].to(h.dtype)
        return self.proj(h)


def _tokens(rng, n, length, pad):
    ids = rng.integers(1, 9, size=(n, length))
    mask = np.ones((n, length), dtype=np.int64)
    mask[::2, length - pad :] = 0  # every other sample padded on the right
    return {"input_ids": ids * mask, "attention_mask": mask}


def _token_rows(model, batches):
    """``proj``'s input at every real token, and ``(sample, t)``, written out."""
    values, index, start = [], [], 0
    model = model.double()
    for batch in batches:
        with torch.no_grad():
            h = model.embed(torch.as_tensor(batch["input_ids"])).numpy()
        for s, (row, mask) in enumerate(zip(h, batch["attention_mask"])):
            for t in range(len(mask)):
                if mask[t]:
                    values.append(row[t] * mask[t])
                    index.append((start + s, t))
        start += len(batch["input_ids"])
    return np.array(values), np.array(index)


def test_transform_tokens_reads_every_real_token_of_any_length(rng):
    model = MaskedTokens()
    est = ActivationTransformer(model, "proj", batch_size=4).fit(_tokens(rng, 6, 4, pad=1))
    batches = [_tokens(rng, 3, 3, pad=1), _tokens(rng, 2, 6, pad=4), _tokens(rng, 1, 2, pad=0)]
    values, index = est.transform_tokens(Batches(*batches))
    expected_values, expected_index = _token_rows(model, batches)
    assert index.dtype == np.int64 and values.dtype == np.float64
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_allclose(values, expected_values, rtol=1e-12, atol=1e-15)


def test_transform_tokens_without_a_mask_reads_every_position(rng):
    model = nn.Sequential(nn.Embedding(9, 3), nn.Linear(3, 2)).double()
    est = ActivationTransformer(model, "1").fit(rng.integers(0, 9, size=(5, 4)))
    ids = rng.integers(0, 9, size=(3, 6))  # another length than the fit's
    values, index = est.transform_tokens(ids)
    with torch.no_grad():
        expected = model[0](torch.as_tensor(ids)).numpy().reshape(-1, 3)
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(index, np.argwhere(np.ones((3, 6), dtype=bool)))
    # transform at this length: one row per sample, every position's columns.
    np.testing.assert_allclose(est.transform(ids), expected.reshape(3, -1), rtol=1e-12, atol=0)


def test_transform_tokens_indexes_every_position_axis(rng):
    """A feature map's locations: ``(sample, h, w)``."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X = rng.normal(size=(4, 2, 3, 3))
    est = ActivationTransformer(model, "2", feature_axis=-1).fit(X)
    values, index = est.transform_tokens(X)
    with torch.no_grad():
        expected = torch.tanh(model[0](torch.as_tensor(X))).numpy()
    np.testing.assert_allclose(values, expected.reshape(-1, 4), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(index, np.argwhere(np.ones((4, 2, 3), dtype=bool)))


def test_float_inputs_of_another_shape_are_still_refused(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    est = ActivationTransformer(model, "2").fit(rng.normal(size=(4, 5, 3)))
    with pytest.raises(ValueError, match="X has"):
        est.transform(rng.normal(size=(4, 6, 3)))
