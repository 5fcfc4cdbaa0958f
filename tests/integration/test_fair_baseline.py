"""A PCA of flattened positions is not LIB's baseline: the comparisons say so (issue 21).

``Pipeline([ActivationTransformer, PCA])`` on a layer with positions fits one
``T * d``-wide vector per sample; LIB's basis, and ``basis="pca"``'s, is
``d`` wide and shared over the positions.  Every function that compares
bases warns with :class:`FlattenedPositionsWarning` on the former, once per
call and at the caller's line, naming the layer, its positions and width and
the fair baseline; the position-shared PCA and single-position layers are
silent.
"""

import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from toy_models import GPT2_VOCAB, tanh_mlp, tiny_gpt2

from sklearn_lib import (
    AblationCurveDisplay,
    ActivationTransformer,
    FlattenedPositionsWarning,
    LIBTransformer,
    SpectrumDisplay,
    ablation_curve,
    faithfulness_scorer,
    features_needed,
    n_features_scorer,
)

GPT2_LAYER = "transformer.h.1"
GPT2_SETTINGS = {"output": "logits", "forward_kwargs": {"use_cache": False}}


def _plotting():
    pytest.importorskip("matplotlib").use("Agg")


def _ablation_display(estimator, X):
    _plotting()
    return AblationCurveDisplay.from_estimator(estimator, X, n_features=[1, 2])


def _spectrum_display(estimator, X):
    _plotting()
    return SpectrumDisplay.from_estimator(estimator)


#: Every public function that takes a ``Pipeline([ActivationTransformer, PCA])``.
CALLS = {
    "ablation_curve": lambda est, X: ablation_curve(est, X, n_features=[1, 2]),
    "features_needed": lambda est, X: features_needed(est, X, tolerance=0.5),
    "faithfulness_scorer": faithfulness_scorer,
    "n_features_scorer": n_features_scorer,
    "AblationCurveDisplay.from_estimator": _ablation_display,
    "SpectrumDisplay.from_estimator": _spectrum_display,
}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # only the display cases import it
        pyplot.close("all")


@pytest.fixture(scope="module")
def gpt2():
    """A tiny GPT-2 and its tokens: the flattened PCA and the position-shared one."""
    pytest.importorskip("transformers")
    model = tiny_gpt2()
    X = np.random.default_rng(0).integers(0, GPT2_VOCAB, size=(24, 8))
    acts = ActivationTransformer(model, GPT2_LAYER, **GPT2_SETTINGS)
    flattened = Pipeline([("acts", acts), ("pca", PCA(n_components=4))]).fit(X)
    shared = LIBTransformer(model, GPT2_LAYER, basis="pca", n_components=4, **GPT2_SETTINGS)
    return X, flattened, shared.fit(X)


def _silent(call, estimator, X):
    """Run ``call`` with FlattenedPositionsWarning as an error, so any warning fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlattenedPositionsWarning)
        call(estimator, X)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_pca_of_flattened_positions_warns_once_naming_the_fair_baseline(gpt2, call):
    X, flattened, _ = gpt2
    expected = (
        r"PCA on 'transformer\.h\.1' flattened 8 positions x 16 features into one "
        r"128-wide vector per sample.*not like for like.*"
        r"LIBTransformer\(model, 'transformer\.h\.1', output='logits', "
        r"forward_kwargs=\{'use_cache': False\}, basis='pca'\), the position-shared PCA"
    )
    with pytest.warns(FlattenedPositionsWarning, match=expected) as record:
        call(flattened, X)
    flagged = [w for w in record if issubclass(w.category, FlattenedPositionsWarning)]
    assert len(flagged) == 1
    # At the caller's line (here: CALLS' lambdas, or the display helpers), not ours.
    assert flagged[0].filename == __file__


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_the_position_shared_pca_does_not_warn(gpt2, call):
    X, _, shared = gpt2
    _silent(call, shared, X)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_pca_of_a_layer_without_positions_does_not_warn(call):
    X = np.random.default_rng(0).normal(size=(60, 4))
    pipe = Pipeline([("acts", ActivationTransformer(tanh_mlp(), "fc2")), ("pca", PCA())]).fit(X)
    assert pipe.named_steps["acts"].activation_shape_ == (8,)
    _silent(call, pipe, X)


def test_a_pca_of_a_conv_map_names_its_grid_and_feature_axis(rng):
    """Conv locations are positions too: a 3 x 4 map of 3 channels flattens to 36."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv2d(3, 2, 1),
        torch.nn.Flatten(),
    ).double()
    X = rng.normal(size=(40, 2, 3, 4))
    acts = ActivationTransformer(model, "2", feature_axis=1)
    pipe = Pipeline([("acts", acts), ("pca", PCA(n_components=5))]).fit(X)
    expected = (
        r"PCA on '2' flattened 12 positions \(3 x 4\) x 3 features into one 36-wide "
        r"vector per sample.*LIBTransformer\(model, '2', feature_axis=1, basis='pca'\)"
    )
    with pytest.warns(FlattenedPositionsWarning, match=expected):
        ablation_curve(pipe, X, n_features=[1, 5])


def test_a_grid_search_of_the_flattened_pca_warns(gpt2):
    """The scorers warn where model selection calls them, through scikit-learn's CV loop."""
    X, flattened, _ = gpt2
    search = GridSearchCV(
        flattened,
        {"pca__n_components": [2, 4]},
        scoring={"faithfulness": faithfulness_scorer, "n_features": n_features_scorer},
        refit=False,
        cv=2,
    )
    with pytest.warns(FlattenedPositionsWarning, match=r"'transformer\.h\.1'.*basis='pca'"):
        search.fit(X)
    assert np.isfinite(search.cv_results_["mean_test_faithfulness"]).all()


def test_the_warning_can_be_silenced_for_a_deliberate_comparison(gpt2):
    X, flattened, _ = gpt2
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", FlattenedPositionsWarning)
        _, scores = ablation_curve(flattened, X, n_features=[4])
    assert not [w for w in record if issubclass(w.category, FlattenedPositionsWarning)]
    assert np.isfinite(scores).all()
