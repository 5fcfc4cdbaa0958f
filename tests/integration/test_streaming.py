"""Every method on a DataLoader or another re-iterable stream of batches, as on an array."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from torch.utils.data import DataLoader, TensorDataset
from toy_models import PositionMixer, TokenMixer, tanh_mlp

from sklearn_lib import (
    ActivationTransformer,
    LIBTransformer,
    ablation_curve,
    edge_ablation_curve,
    edges_needed,
    faithfulness_scorer,
    features_needed,
)


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
            if self.twist == "shrink" and self.passes > 2 and start > 0:
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
    # Autograd: a Jacobian pass after the statistics pass, which sees the stream shrink.
    with pytest.raises(ValueError, match="yielded 20 samples in this pass but 60 in the first"):
        LIBTransformer(model, "fc2", downstream_layers=["fc3"], jacobian="autograd").fit(
            Batches(X, 20, "shrink")
        )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_mlp_chain_fits_in_one_pass(rng, dtype):
    """Linear -> elementwise sections gather their M' in the statistics pass."""
    X = rng.normal(size=(60, 4))
    stream = Batches(X, 20)
    model = tanh_mlp()
    one_pass = LIBTransformer(model, "fc1", downstream_layers=["fc2"], dtype=dtype).fit(stream)
    assert stream.passes == 1 + 1  # the probe and the statistics pass
    autograd = LIBTransformer(model, "fc1", downstream_layers=["fc2"], jacobian="autograd")
    autograd.set_params(dtype=dtype).fit(X)
    rtol = 1e-9 if dtype == "float64" else 1e-4
    for name in ("fc1", "fc2"):
        expected = autograd.bases_[name].lambdas
        np.testing.assert_allclose(
            one_pass.bases_[name].lambdas, expected, rtol=rtol, atol=rtol * expected[0]
        )


def _loader(X, y=None, batch_size=16):  # the estimators' batch size: the same sums
    tensors = [torch.as_tensor(X)] + ([] if y is None else [torch.as_tensor(y)])
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)


@pytest.fixture
def fitted(rng):
    X = rng.normal(size=(70, 4))
    y = rng.integers(0, 3, size=70)
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"], batch_size=16).fit(X)
    return lib, X, y


def test_transform_methods_on_a_stream_equal_the_array(fitted):
    lib, X, y = fitted
    # Batches of the estimator's batch size run the same products, so the
    # results are equal to the last bit, on a GPU too; other sizes to rounding.
    stream = Batches(X, 16)
    Z = lib.transform(X)
    np.testing.assert_array_equal(lib.transform(stream), Z)
    assert stream.passes == 1  # transform reads the stream once
    np.testing.assert_array_equal(lib.transform(_loader(X, y)), Z)
    np.testing.assert_allclose(lib.transform(Batches(X, 9)), Z, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(lib.inverse_transform(Batches(Z, 9)), lib.inverse_transform(Z))
    acts = lib.inverse_transform(Z)
    np.testing.assert_allclose(
        lib.transform_activations(Batches(acts, 9)), lib.transform_activations(acts), rtol=1e-15
    )
    np.testing.assert_array_equal(lib.score(_loader(X), y), lib.score(X, y))
    np.testing.assert_array_equal(lib.score(Batches(X, 16)), lib.score(X))
    fresh = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"], batch_size=16)
    np.testing.assert_allclose(fresh.fit_transform(_loader(X)), Z, rtol=1e-10, atol=1e-12)


def test_activation_transformer_on_a_stream(rng):
    X = rng.normal(size=(40, 4, 3))
    model = PositionMixer().double()
    on_array = ActivationTransformer(model, "mix", batch_size=16).fit(X)
    on_stream = ActivationTransformer(model, "mix", batch_size=16).fit(_loader(X))
    assert on_stream.activation_shape_ == on_array.activation_shape_ == (4, 5)
    assert on_stream.input_shape_ == (4, 3) and on_stream.n_features_in_ == 4
    np.testing.assert_array_equal(on_stream.transform(_loader(X)), on_array.transform(X))
    np.testing.assert_array_equal(on_stream.fit_transform(Batches(X, 16)), on_array.transform(X))


def test_graph_and_ablations_on_a_stream_equal_the_array(fitted):
    lib, X, y = fitted
    graph = lib.interaction_graph(X)
    streamed = lib.interaction_graph(_loader(X))
    assert streamed.info == graph.info
    for section in graph.sections:
        np.testing.assert_array_equal(streamed.edges[section], graph.edges[section])
    ks = [0, 1, 3, 8]
    for labels in (None, y):
        np.testing.assert_array_equal(
            ablation_curve(lib, _loader(X), labels, n_features=ks)[1],
            ablation_curve(lib, X, labels, n_features=ks)[1],
        )
        np.testing.assert_array_equal(
            edge_ablation_curve(
                lib, graph, _loader(X), labels, section=("fc3", "output"), n_edges=[0, 5, 9]
            )[1],
            edge_ablation_curve(
                lib, graph, X, labels, section=("fc3", "output"), n_edges=[0, 5, 9]
            )[1],
        )
    assert edges_needed(lib, graph, _loader(X), y, tolerance=0.05) == edges_needed(
        lib, graph, X, y, tolerance=0.05
    )
    assert features_needed(lib, Batches(X, 16), y) == features_needed(lib, X, y)
    assert faithfulness_scorer(lib, _loader(X), y) == faithfulness_scorer(lib, X, y)
    pipe = Pipeline([("acts", ActivationTransformer(tanh_mlp(), "fc2")), ("pca", PCA())]).fit(X)
    np.testing.assert_array_equal(
        ablation_curve(pipe, _loader(X), y, n_features=ks)[1],
        ablation_curve(pipe, X, y, n_features=ks)[1],
    )


def test_streams_are_checked_in_every_method(fitted):
    lib, X, y = fitted
    with pytest.raises(ValueError, match=r"per-sample shape \(3,\), but LIBTransformer was fitted"):
        lib.transform(Batches(X[:, :3], 9))
    with pytest.raises(ValueError, match="NaN or infinity"):
        lib.interaction_graph(Batches(X, 20, "nan"))
    with pytest.raises(TypeError, match="iterator, which can be read only once"):
        lib.score(iter([X[:30], X[30:]]))
    with pytest.raises(ValueError, match="y has 69 samples, but X has at least 70"):
        ablation_curve(lib, _loader(X), y[:69], n_features=[1], scoring="r2")
    with pytest.raises(ValueError, match="y has 71 samples, but X has 70"):
        ablation_curve(lib, _loader(X), np.append(y, 0), n_features=[1], scoring="r2")
    with pytest.raises(ValueError, match=r"y has shape \(69,\)"):
        lib.score(X, y[:69])
    with pytest.raises(ValueError, match="inverse_transform expects"):
        lib.inverse_transform(Batches(np.ones((20, 5)), 9))


def test_labels_must_match_a_stream_in_length_and_order(fitted):
    lib, X, y = fitted
    with pytest.raises(ValueError, match="y has 64 samples, but X has at least 70"):
        ablation_curve(lib, _loader(X), y[:64], n_features=[1])
    shuffled = DataLoader(TensorDataset(torch.as_tensor(X)), batch_size=16, shuffle=True)
    with pytest.raises(ValueError, match="shuffles its samples"):
        lib.score(shuffled, y)
    lib.score(shuffled)  # without labels the order does not matter
    graph = lib.interaction_graph(shuffled)
    np.testing.assert_allclose(
        graph.edges[("fc2", "fc3")], lib.interaction_graph(X).edges[("fc2", "fc3")], rtol=1e-10
    )
    with pytest.warns(UserWarning, match="random order"):
        lib.transform(shuffled)
