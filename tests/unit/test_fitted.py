"""The one interface to fitted estimators (``_fitted``): dispatch, states and their sessions."""

import warnings

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from toy_models import PositionMixer, tanh_mlp

from sklearn_lib import (
    ActivationTransformer,
    FlattenedPositionsWarning,
    InteractionGraph,
    LIBTransformer,
)
from sklearn_lib._fitted import fitted, fitted_section, takes_estimator

X = np.random.default_rng(0).normal(size=(60, 4))


@pytest.fixture(scope="module")
def lib():
    return LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)


def test_a_lib_transformer_gives_its_bases_at_any_fitted_layer(lib):
    state = fitted(lib)
    # The owner is a snapshot of lib (one fit's state, whatever another thread does).
    assert vars(state.owner) == vars(lib) and state.is_lib and state.bases is lib.bases_
    assert state.basis is lib.bases_["fc2"]
    assert fitted(lib, "fc3").basis is lib.bases_["fc3"]
    assert fitted(Pipeline([("lib", lib), ("pca", PCA())]), "fc3").basis is lib.bases_["fc3"]
    with pytest.raises(ValueError, match=r"layer='output' is not a fitted node layer"):
        fitted(lib, "output")
    with pytest.raises(ValueError, match=r"layer='fc9' is not a fitted node layer.*'fc2', 'fc3'"):
        fitted(lib, "fc9")


def test_a_pca_pipeline_gives_the_basis_of_its_flattened_activations():
    acts = ActivationTransformer(tanh_mlp(), "fc2")
    pipe = Pipeline([("acts", acts), ("pca", PCA(n_components=3))]).fit(X)
    state = fitted(pipe)
    pca = pipe.named_steps["pca"]
    assert vars(state.owner) == vars(acts) and not state.is_lib and state.layer == "fc2"
    basis = state.basis
    assert basis.kind == "pca" and basis.n_components == 3
    np.testing.assert_array_equal(basis.matrix, pca.components_.T)
    np.testing.assert_array_equal(basis.lambdas, pca.explained_variance_)
    # Its features are PCA's own.
    features = (acts.transform(X) - basis.mean) @ basis.matrix
    np.testing.assert_allclose(features, pca.transform(acts.transform(X)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="this PCA pipeline reads 'fc2'"):
        fitted(pipe, "fc3")


def test_only_a_pca_pipeline_of_flattened_positions_warns():
    X_seq = np.random.default_rng(0).normal(size=(40, 4, 3))  # 4 positions, 5 features at "mix"
    acts = ActivationTransformer(PositionMixer().double(), "mix")
    state = fitted(Pipeline([("acts", acts), ("pca", PCA())]).fit(X_seq))
    expected = (
        r"PCA on 'mix' flattened 4 positions x 5 features into one 20-wide vector per sample"
        r".*LIBTransformer\(model, 'mix', basis='pca'\), the position-shared PCA"
    )
    with pytest.warns(FlattenedPositionsWarning, match=expected):
        state.warn_if_positions_flattened()
    shared = LIBTransformer(PositionMixer().double(), "mix", basis="pca").fit(X_seq)
    flat = Pipeline([("acts", ActivationTransformer(tanh_mlp(), "fc2")), ("pca", PCA())]).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlattenedPositionsWarning)
        fitted(shared).warn_if_positions_flattened()  # one basis shared over positions
        fitted(flat).warn_if_positions_flattened()  # an (n, d) layer: nothing flattened


@pytest.mark.parametrize(
    "estimator", [PCA(), "lib", Pipeline([("pca", PCA())])], ids=["PCA", "str", "PCA pipeline"]
)
def test_other_estimators_are_refused_by_type(estimator):
    with pytest.raises(TypeError, match="Expected a fitted LIBTransformer"):
        fitted(estimator)


def test_unfitted_estimators_are_refused():
    with pytest.raises(NotFittedError):
        fitted(LIBTransformer(tanh_mlp(), "fc2"))
    pipe = Pipeline([("acts", ActivationTransformer(tanh_mlp(), "fc2")), ("pca", PCA())])
    with pytest.raises(NotFittedError):
        fitted(pipe)


def test_takes_estimator_names_the_kinds_fitted_dispatches_on(lib):
    assert takes_estimator(lib) and takes_estimator(Pipeline([("pca", PCA())]))
    assert not takes_estimator(PCA()) and not takes_estimator(np.ones(3))


def test_a_section_needs_a_lib_fit_and_its_own_graph(lib):
    graph = lib.interaction_graph(X)
    state, src, dst = fitted_section(lib, graph, ("fc2", "fc3"))
    assert vars(state.owner) == vars(lib) and (src, dst) == (lib.bases_["fc2"], lib.bases_["fc3"])
    with pytest.raises(ValueError, match="is not one of the graph's"):
        fitted_section(lib, graph, ("fc3", "fc2"))
    lambdas = {"a": np.ones(1), "fc3": np.ones(1)}
    foreign = InteractionGraph(["a", "fc3"], lambdas, {("a", "fc3"): np.ones((1, 1))})
    with pytest.raises(ValueError, match=r"node\(s\) \['a'\] that the estimator was not fitted"):
        fitted_section(lib, foreign, ("a", "fc3"))
    pipe = Pipeline([("acts", ActivationTransformer(tanh_mlp(), "fc2")), ("pca", PCA())]).fit(X)
    with pytest.raises(TypeError, match="Edge ablation needs a fitted LIBTransformer"):
        fitted_section(pipe, graph, ("fc2", "fc3"))


def test_sessions_follow_the_estimators_verbose_unless_told(lib, capsys):
    verbose = LIBTransformer(tanh_mlp(), "fc2", verbose=True).fit(X)
    capsys.readouterr()
    assert fitted(verbose).session().progress.enabled
    assert not fitted(verbose).session(verbose=False).progress.enabled
    assert not fitted(lib).session().progress.enabled and fitted(lib).session(True).progress.enabled
    assert fitted(lib).source(X).n_samples == len(X)
