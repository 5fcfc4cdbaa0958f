"""Node and edge ablation, the sparsity figure, and model selection."""

import numpy as np
import pytest
import torch
from _refs import activations_of
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from toy_models import PositionMixer, tanh_mlp

from sklearn_lib import (
    ActivationTransformer,
    LIBTransformer,
    ablation_curve,
    edge_ablation_curve,
    edges_needed,
    faithfulness_scorer,
    n_features_scorer,
    sparsest_faithful,
)


@pytest.fixture
def fitted(rng):
    model = tanh_mlp(d_in=4, hidden=8, d_out=3)
    X = rng.normal(size=(200, 4))
    y = rng.integers(0, 3, size=200)  # labels the model does not fit perfectly
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"], truncation_threshold=0).fit(X)
    return model, X, y, lib


def _model_accuracy(model, X, y):
    with torch.no_grad():
        return float(np.mean(model(torch.as_tensor(X)).argmax(-1).numpy() == y))


def test_ablating_nothing_reproduces_the_model(fitted):
    model, X, y, lib = fitted
    K = lib.bases_["fc2"].lambdas.shape[0]
    _, (acc,) = ablation_curve(lib, X, y, n_features=[K])
    assert acc == _model_accuracy(model, X, y)
    _, (r2,) = ablation_curve(lib, X, n_features=K)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_ablating_everything_gives_the_mean_activation_output(fitted):
    model, X, y, lib = fitted
    with torch.no_grad():
        tail = model[2:](torch.as_tensor(lib.mean_)[None]).numpy()  # fc2 onwards, on the mean
    _, (gap,) = ablation_curve(
        lib, X, n_features=0, scoring=lambda ref, out: np.abs(out - tail).max()
    )
    assert gap < 1e-12


def test_ablation_uses_rows_of_the_full_pseudo_inverse(fitted):
    model, X, y, lib = fitted
    k = 3
    acts = activations_of(model, "fc2", X)
    basis = lib.bases_["fc2"]
    right = (acts - basis.mean) @ basis.matrix[:, :k] @ basis.pinv[:k] + basis.mean
    wrong = (acts - basis.mean) @ basis.matrix[:, :k] @ np.linalg.pinv(basis.matrix[:, :k])
    wrong = wrong + basis.mean
    with torch.no_grad():
        outputs = {
            n: model[2:](torch.as_tensor(a)).numpy() for n, a in [("r", right), ("w", wrong)]
        }
    _, (got,) = ablation_curve(lib, X, n_features=k, scoring=lambda ref, out: out[:, 0].sum())
    assert got == pytest.approx(outputs["r"][:, 0].sum(), rel=1e-10)
    assert got != pytest.approx(outputs["w"][:, 0].sum(), rel=1e-3)


def test_sklearn_pca_on_the_same_axis(fitted):
    """A plain PCA on ActivationTransformer output gives the same curve as basis='pca'."""
    model, X, y, _ = fitted
    pca_lib = LIBTransformer(model, "fc2", basis="pca", truncation_threshold=0).fit(X)
    pipe = Pipeline([("acts", ActivationTransformer(model, "fc2")), ("pca", PCA())]).fit(X)
    ks = [0, 1, 2, 4, 8]
    _, ours = ablation_curve(pca_lib, X, n_features=ks)
    _, theirs = ablation_curve(pipe, X, n_features=ks)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(ours) > 0)


def test_ablation_with_positions(rng):
    X = rng.normal(size=(80, 4, 3))
    lib = LIBTransformer(PositionMixer().double(), "mix", truncation_threshold=0).fit(X)
    K = lib.bases_["mix"].lambdas.shape[0]
    ks, scores = ablation_curve(lib, X, n_features=range(K + 1))
    assert scores[-1] == pytest.approx(1.0, abs=1e-12)
    assert scores[0] < scores[-1]
    assert list(ks) == list(range(K + 1))


def test_edge_ablation_with_all_edges_reproduces_the_model(fitted):
    model, X, y, lib = fitted
    graph = lib.interaction_graph(X)
    for section in graph.sections:
        total = graph.edges[section].size
        _, (acc,) = edge_ablation_curve(lib, graph, X, y, section=section, n_edges=total)
        assert acc == _model_accuracy(model, X, y)
        _, (r2,) = edge_ablation_curve(lib, graph, X, section=section, n_edges=total)
        assert r2 == pytest.approx(1.0, abs=1e-12)


def test_edge_ablation_matches_a_manual_computation(fitted):
    """Keep only edge (i=0, j=0) of fc3 -> output: logit 0 from feature 0 alone,
    the other logits from no feature (the mean)."""
    model, X, y, lib = fitted
    graph = lib.interaction_graph(X)
    section = ("fc3", "output")
    mask = graph.top_edges(section, 1)
    src = lib.bases_["fc3"]
    acts = activations_of(model, "fc3", X)
    f_hat = (acts - src.mean) @ src.kept_matrix
    expected = np.empty((len(X), 3))
    for i in range(3):
        masked = f_hat * mask[i]
        with torch.no_grad():
            out = model.fc3(torch.as_tensor(masked @ src.kept_pinv + src.mean)).numpy()
        expected[:, i] = out[:, i]
    _, (gap,) = edge_ablation_curve(
        lib,
        graph,
        X,
        section=section,
        n_edges=1,
        scoring=lambda ref, out: np.abs(out - expected).max(),
    )
    assert gap < 1e-12


def test_edges_needed_is_the_smallest_count(fitted):
    model, X, y, lib = fitted
    graph = lib.interaction_graph(X)
    results = edges_needed(lib, graph, X, y, tolerance=0.02)
    assert set(results) == set(graph.sections)
    for section, result in results.items():
        total = graph.edges[section].size
        curve = edge_ablation_curve(lib, graph, X, y, section=section, n_edges=range(total + 1))[1]
        assert result.n_total == total and result.baseline == curve[-1]
        assert curve[result.n_needed] >= result.baseline - 0.02
        if result.n_needed > 0:
            assert curve[result.n_needed - 1] < result.baseline - 0.02
        assert result.score == curve[result.n_needed]
        assert 0 <= result.fraction <= 1


def test_sparsest_faithful_rule():
    cv_results = {
        "mean_test_faithfulness": np.array([0.999, 0.99, 0.97, 0.80]),
        "mean_test_n_features": np.array([-8.0, -5.0, -3.0, -1.0]),
    }
    assert sparsest_faithful(0.98)(cv_results) == 1
    assert sparsest_faithful(0.95)(cv_results) == 2
    assert sparsest_faithful(0.9999)(cv_results) == 0  # none reaches it: most faithful


def test_grid_search_picks_the_sparsest_faithful_threshold(fitted):
    model, X, y, _ = fitted
    y_model = model(torch.as_tensor(X)).argmax(-1).detach().numpy()
    thresholds = [0.3, 0.05, 1e-3, 0.0]
    search = GridSearchCV(
        LIBTransformer(model, "fc2"),
        {"truncation_threshold": thresholds},
        scoring={"faithfulness": faithfulness_scorer, "n_features": n_features_scorer},
        refit=sparsest_faithful(0.9),
        cv=2,
    ).fit(X, y_model)
    faith = search.cv_results_["mean_test_faithfulness"]
    width = -search.cv_results_["mean_test_n_features"]
    ok = [i for i in range(len(thresholds)) if faith[i] >= 0.9]
    best = min(ok, key=lambda i: (width[i], -faith[i]))
    assert search.best_index_ == best
    assert search.best_estimator_.truncation_threshold == thresholds[best]
    # The same scorers work for a sklearn PCA pipeline.
    pipe = Pipeline([("acts", ActivationTransformer(model, "fc2")), ("pca", PCA(n_components=2))])
    pipe.fit(X)
    assert n_features_scorer(pipe) == -2.0
    assert 0 < faithfulness_scorer(pipe, X, y_model) <= 1


def test_ablation_errors(fitted, rng):
    model, X, y, lib = fitted
    graph = lib.interaction_graph(X)
    with pytest.raises(ValueError, match=r"n_features must lie in \[0, 8\]"):
        ablation_curve(lib, X, n_features=[9])
    with pytest.raises(ValueError, match="scoring='accuracy' needs class labels"):
        ablation_curve(lib, X, n_features=[1], scoring="accuracy")
    with pytest.raises(ValueError, match="'scoring' parameter of ablation_curve"):
        ablation_curve(lib, X, y, n_features=[1], scoring="f1")
    with pytest.raises(TypeError, match="Expected a fitted LIBTransformer"):
        ablation_curve(PCA(), X, n_features=[1])
    with pytest.raises(ValueError, match="is not one of the graph's"):
        edge_ablation_curve(lib, graph, X, section=("fc2", "output"), n_edges=1)
    other = LIBTransformer(model, "fc2", downstream_layers=["fc3"], n_components=2).fit(X)
    with pytest.raises(ValueError, match="was the graph computed from this estimator"):
        edge_ablation_curve(other, graph, X, section=("fc2", "fc3"), n_edges=1)
    with pytest.raises(ValueError, match=r"n_edges must lie in \[0, 24\]"):
        edge_ablation_curve(lib, graph, X, section=("fc2", "fc3"), n_edges=25)


def test_progress_is_off_by_default_and_on_with_verbose(fitted, capsys, monkeypatch):
    monkeypatch.setattr("sklearn_lib._model.progress._has_tqdm", lambda: False)  # plain lines
    model, X, y, _ = fitted
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
    graph = lib.interaction_graph(X)
    ablation_curve(lib, X, y, n_features=[1])
    assert capsys.readouterr().err == ""
    LIBTransformer(model, "fc2", verbose=True).fit(X).interaction_graph(X)
    ablation_curve(lib, X, y, n_features=[1], verbose=True)
    edges_needed(lib, graph, X, y, sections=[("fc3", "output")], verbose=True)
    err = capsys.readouterr().err
    assert "Jacobians 'fc2' -> 'output'" in err and "edges 'fc2' -> 'output'" in err
    assert "ablation: 200/200 samples" in err and "edge ablation 'fc3' -> 'output'" in err


def test_features_needed_is_the_smallest_count(fitted):
    from sklearn_lib import features_needed

    model, X, y, lib = fitted
    single = LIBTransformer(model, "fc2", truncation_threshold=0).fit(X)
    result = features_needed(single, X, y, tolerance=0.01)
    K = single.bases_["fc2"].lambdas.shape[0]
    _, curve = ablation_curve(single, X, y, n_features=range(K + 1))
    assert result.n_total == K and result.baseline == curve[-1]
    assert curve[result.n_needed] >= curve[-1] - 0.01
    assert result.n_needed == 0 or curve[result.n_needed - 1] < curve[-1] - 0.01


def test_ablation_of_a_downstream_layer_from_one_fit(fitted):
    model, X, y, lib = fitted
    own = LIBTransformer(model, "fc3", truncation_threshold=0).fit(X)
    ks = [0, 1, 2, 3]
    np.testing.assert_allclose(
        ablation_curve(lib, X, y, n_features=ks, layer="fc3")[1],
        ablation_curve(own, X, y, n_features=ks)[1],
    )
    with pytest.raises(ValueError, match="layer='output' is not a fitted node layer"):
        ablation_curve(lib, X, y, n_features=ks, layer="output")


def test_verbose_passes_are_progress_bars_with_tqdm(fitted, capsys):
    pytest.importorskip("tqdm")
    model, X, y, lib = fitted
    ablation_curve(lib, X, y, n_features=[1])
    assert capsys.readouterr().err == ""  # nothing by default, bars or not
    ablation_curve(lib, X, y, n_features=[1], verbose=True)
    err = capsys.readouterr().err
    # tqdm's bar: what, samples done of all, and a rate.
    assert "ablation: 100%" in err and "200/200" in err and "sample/s" in err


def test_a_scorer_that_gives_nan_is_named(fitted):
    """Issue 24's review: every comparison with NaN fails, so the search said all
    features were needed, with a score of NaN."""
    from sklearn_lib import features_needed

    _, X, _, lib = fitted
    with pytest.raises(ValueError, match="the scoring gave nan with .* feature"):
        features_needed(lib, X, scoring=lambda ablated, original: float("nan"))
