"""scikit-learn integration: estimator checks, pipelines, grid search, clone, pickle."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks
from toy_models import PositionMixer, elementwise_model, tanh_mlp

from sklearn_lib import ActivationTransformer, LIBTransformer


@parametrize_with_checks(
    [
        LIBTransformer(elementwise_model(), "2", downstream_layers=["3"], device="cpu"),
        LIBTransformer(elementwise_model(), "2", basis="pca", device="cpu"),
        ActivationTransformer(elementwise_model(), "2", device="cpu"),
    ],
    # Every check passes, so no expected failure is listed; a regression in
    # any of them fails this test.
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture
def digits_mlp():
    """Digits with a small untrained-but-fixed tanh MLP (64 -> 8 -> 8 -> 10)."""
    X, y = load_digits(return_X_y=True)
    return tanh_mlp(d_in=64, hidden=8, d_out=10), X[:400] / 16.0, y[:400]


def test_pipeline_grid_search_over_threshold(digits_mlp):
    model, X, y = digits_mlp
    pipe = Pipeline(
        [("lib", LIBTransformer(model, "fc2")), ("clf", LogisticRegression(max_iter=500))]
    )
    search = GridSearchCV(pipe, {"lib__truncation_threshold": [1e-1, 1e-2, 1e-3]}, cv=2)
    search.fit(X, y)
    widths = [
        clone(pipe).set_params(lib__truncation_threshold=t).fit(X, y)[0].n_components_
        for t in (1e-1, 1e-2, 1e-3)
    ]
    assert widths[0] <= widths[1] <= widths[2]
    assert search.best_estimator_[0].model is model
    assert set(search.cv_results_["param_lib__truncation_threshold"]) == {1e-1, 1e-2, 1e-3}


def test_side_by_side_with_pca_pipeline(digits_mlp):
    model, X, y = digits_mlp
    lib_pipe = Pipeline(
        [("lib", LIBTransformer(model, "fc2", basis="pca")), ("clf", LogisticRegression())]
    )
    pca_pipe = Pipeline(
        [
            ("acts", ActivationTransformer(model, "fc2")),
            ("pca", PCA()),
            ("clf", LogisticRegression()),
        ]
    )
    lib_pipe.fit(X, y)
    pca_pipe.fit(X, y)
    # The same basis up to the sign of each feature, so the same predictions.
    np.testing.assert_array_equal(lib_pipe.predict(X), pca_pipe.predict(X))


def test_clone_shares_the_model():
    model = tanh_mlp()
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"], n_components=2)
    cloned = clone(lib)
    assert cloned.model is model
    assert cloned.get_params()["n_components"] == 2
    assert (
        cloned.downstream_layers == ["fc3"]
        and cloned.downstream_layers is not lib.downstream_layers
    )
    assert clone(ActivationTransformer(model, "fc2")).model is model


def test_clone_and_grid_search_keep_the_jacobian_route(rng):
    lib = LIBTransformer(tanh_mlp(), "fc2", jacobian="autograd")
    assert clone(lib).jacobian == "autograd" and lib.get_params()["jacobian"] == "autograd"
    X = rng.normal(size=(40, 4))
    search = GridSearchCV(
        lib, {"jacobian": ["auto", "autograd"]}, scoring=lambda est, X, y=None: est.score(X), cv=2
    ).fit(X)
    assert set(search.cv_results_["param_jacobian"]) == {"auto", "autograd"}
    # Both routes give one basis.
    routes = [clone(lib).set_params(jacobian=j).fit(X).lambdas_ for j in ("auto", "autograd")]
    np.testing.assert_allclose(routes[0], routes[1], rtol=1e-10)


def test_clone_keeps_set_output_config(rng):
    pytest.importorskip("pandas")
    lib = LIBTransformer(tanh_mlp(), "fc2").set_output(transform="pandas")
    out = clone(lib).fit_transform(rng.normal(size=(30, 4)))
    assert list(out.columns) == [f"libtransformer{j}" for j in range(out.shape[1])]


def test_pickle_round_trip(rng):
    X = rng.normal(size=(60, 4))
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)
    restored = pickle.loads(pickle.dumps(lib))
    np.testing.assert_array_equal(restored.transform(X), lib.transform(X))
    np.testing.assert_array_equal(restored.bases_["fc3"].pinv, lib.bases_["fc3"].pinv)


def test_feature_names_with_positions(rng):
    X = rng.normal(size=(40, 4, 3))
    lib = LIBTransformer(PositionMixer().double(), "mix").fit(X)
    names = lib.get_feature_names_out()
    k = lib.n_components_
    assert len(names) == lib.transform(X).shape[1] == 4 * k
    assert names[0] == "libtransformer0_pos0" and names[k] == "libtransformer0_pos1"
    acts = ActivationTransformer(PositionMixer().double(), "mix").fit(X)
    assert acts.transform(X).shape == (40, 4 * 5)
    assert len(acts.get_feature_names_out()) == 20
