"""Small things a scikit-learn user expects (issue 13, part 6)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from toy_models import tanh_mlp

from sklearn_lib import LIBTransformer


@pytest.fixture(scope="module")
def data():
    X = np.random.default_rng(0).normal(size=(300, 4))
    return X, (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)


def test_whiten_gives_unit_variance_and_undoes_itself(data):
    X, _ = data
    raw = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    white = LIBTransformer(tanh_mlp(), "fc2", whiten=True).fit(X)
    np.testing.assert_array_equal(white.components_, raw.components_)
    Z, Z_raw = white.transform(X), raw.transform(X)
    np.testing.assert_allclose(Z.var(axis=0), 1.0, rtol=1e-9)
    np.testing.assert_allclose(Z, Z_raw / np.sqrt(raw.lambdas_), rtol=1e-12)
    np.testing.assert_allclose(white.inverse_transform(Z), raw.inverse_transform(Z_raw), rtol=1e-10)
    acts = raw.inverse_transform(Z_raw)
    np.testing.assert_allclose(white.transform_activations(acts), Z, rtol=1e-9, atol=1e-12)


def test_a_classifier_on_whitened_features_converges_faster():
    # The digits demo's MLP: LIB features' variances span orders of magnitude,
    # and a logistic regression on them took 263 iterations (20 whitened).
    from sklearn.datasets import load_digits

    from sklearn_lib.demo import train_digits_mlp

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    model = train_digits_mlp(X, y, epochs=60)
    iterations = {}
    for whiten in (False, True):
        Z = LIBTransformer(model, "fc2", whiten=whiten).fit_transform(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the raw features may hit max_iter
            iterations[whiten] = int(LogisticRegression(max_iter=2000).fit(Z, y).n_iter_[0])
    assert 3 * iterations[True] < iterations[False]


def test_fewer_features_than_n_components_asks_for_warn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    X = np.random.default_rng(0).normal(size=(100, 4))
    with pytest.warns(UserWarning, match=r"n_components=3 asks for 3 features of '2', but only 1"):
        lib = LIBTransformer(model, "2", n_components=3, truncation_threshold=0.5).fit(X)
    assert lib.n_components_ == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LIBTransformer(model, "2", n_components=1, truncation_threshold=0.5).fit(X)


def test_the_graph_summary_gives_shapes_in_the_arrays_order(data):
    X, _ = data
    lib = LIBTransformer(tanh_mlp(d_out=3), "fc2", downstream_layers=["fc3"]).fit(X)
    graph = lib.interaction_graph(X)
    E = graph.edges[("fc3", "output")]
    assert E.shape == (3, lib.bases_["fc3"].n_components)
    assert f"edges 'fc3' -> 'output': {E.shape[0]} x {E.shape[1]} (out x in" in graph.summary()
