"""``fit`` on a DataLoader or another re-iterable stream of batches."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from toy_models import PositionMixer, TokenMixer, tanh_mlp

from sklearn_lib import LIBTransformer


class Batches:
    """A re-iterable stream of numpy batches, optionally with a twist."""

    def __init__(self, X, size, twist=None):
        self.X, self.size, self.twist, self.passes = X, size, twist, 0

    def __iter__(self):
        self.passes += 1
        for start in range(0, len(self.X), self.size):
            batch = self.X[start : start + self.size]
            if self.twist == "shape" and start > 0:
                batch = batch[:, :-1]
            if self.twist == "nan" and start > 0:
                batch = batch.copy()
                batch[0, 0] = np.nan
            if self.twist == "shrink" and self.passes > 1 and start > 0:
                break
            yield batch


def _assert_same_fit(a, b):
    for name in a.bases_:
        np.testing.assert_allclose(a.bases_[name].lambdas, b.bases_[name].lambdas, rtol=1e-10)
        np.testing.assert_allclose(a.bases_[name].mean, b.bases_[name].mean, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.abs(a.components_), np.abs(b.components_), rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("basis", ["lib", "pca"])
def test_dataloader_fit_equals_array_fit(rng, basis):
    X = rng.normal(size=(130, 4, 3))
    y = rng.integers(0, 3, size=130)
    model = PositionMixer().double()
    params = dict(downstream_layers=["head"], basis=basis)
    on_array = LIBTransformer(model, "mix", **params).fit(X)
    loader = DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=17)
    on_stream = LIBTransformer(model, "mix", **params).fit(loader)
    _assert_same_fit(on_array, on_stream)
    assert on_stream.n_features_in_ == 4 and on_stream.input_shape_ == (4, 3)
    np.testing.assert_allclose(on_stream.transform(X), on_array.transform(X), rtol=1e-8, atol=1e-10)


def test_token_stream_and_pass_count(rng):
    X = rng.integers(0, 7, size=(90, 3))
    stream = Batches(X, 25)
    model = TokenMixer().double()
    fitted = LIBTransformer(model, "mix", downstream_layers=["head"]).fit(stream)
    _assert_same_fit(fitted, LIBTransformer(model, "mix", downstream_layers=["head"]).fit(X))
    # probe + statistics (with the last section's Jacobians, the output's basis
    # being known) + one Jacobian pass per other node layer
    assert stream.passes == 1 + 1 + 1
    # A PCA output basis needs the statistics first: one more pass.
    stream = Batches(X, 25)
    LIBTransformer(model, "mix", downstream_layers=["head"], output_basis="pca").fit(stream)
    assert stream.passes == 1 + 1 + 2


def test_stream_errors(rng):
    X = rng.normal(size=(60, 4))
    model = tanh_mlp()
    with pytest.raises(TypeError, match="iterator, which can be read only once"):
        LIBTransformer(model, "fc2").fit(iter([X[:30], X[30:]]))
    with pytest.raises(
        ValueError, match=r"per-sample shape \(3,\), but the first batch had \(4,\)"
    ):
        LIBTransformer(model, "fc2").fit(Batches(X, 20, "shape"))
    with pytest.raises(ValueError, match="NaN or infinity"):
        LIBTransformer(model, "fc2").fit(Batches(X, 20, "nan"))
    with pytest.raises(ValueError, match="yielded 20 samples in this pass but 60 in the first"):
        LIBTransformer(model, "fc2").fit(Batches(X, 20, "shrink"))
