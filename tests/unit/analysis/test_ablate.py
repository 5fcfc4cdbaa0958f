"""Node and edge ablation (``_analysis.ablate``) against ablations written out in plain torch.

The reference keeps ``k`` features (or the top ``m`` edges, each output
feature from its own kept inputs), rebuilds the activations, runs the rest
of the model with its own modules, and scores with scikit-learn's metrics.
"""

import numpy as np
import pytest
import torch
from _refs import activations_of, brute_force_top
from sklearn.metrics import accuracy_score, r2_score
from toy_models import tanh_mlp

from sklearn_lib._analysis.ablate import (
    EdgeAblation,
    FeatureAblation,
    NodeAblation,
    _trimmed,
    edge_ablation_scores,
    node_ablation_scores,
)
from sklearn_lib._analysis.graph import InteractionGraph
from sklearn_lib._fitting.fit import FitSettings, fit_bases, inspect, plan_fit
from sklearn_lib._model.session import ModelSession
from sklearn_lib._model.sources import ArraySource, StreamSource
from sklearn_lib._routes.integration import rule_tensors
from sklearn_lib._routes.table import decide_routes

N = 40


@pytest.fixture(scope="module")
def fitted():
    """``(model, X, y, bases, outputs)``: tanh_mlp fitted at fc2 and fc3, labels near its argmax."""
    rng = np.random.default_rng(0)
    model = tanh_mlp()
    X = rng.normal(size=(N, 4))
    settings = FitSettings()
    session = ModelSession(model, random_state=0)
    source = ArraySource(X, 16)
    probe = session.inputs(X[:16])
    sections = inspect(session, probe, ["fc2", "fc3"], settings)
    rule = rule_tensors(settings.rule, session.device)
    routes = decide_routes(session, probe, sections, rule, ("gram", "rows"))
    plan = plan_fit(session, source, probe, sections, routes, settings)
    bases = fit_bases(session, source, sections, plan, routes, settings).bases
    with torch.no_grad():
        outputs = model(torch.as_tensor(X)).numpy()
    y = outputs.argmax(1)
    y[::3] = rng.integers(0, 3, size=len(y[::3]))  # some labels the model misses
    return model, X, y, bases, outputs


def rest_of_model(model, name, acts):
    """The model from node layer ``name``'s input to its output, module by module."""
    h = torch.as_tensor(acts)
    with torch.no_grad():
        if name == "fc2":
            h = model.act2(model.fc2(h))
        if name in ("fc2", "fc3"):
            h = model.fc3(h)
    return h.numpy()


def scores(outputs, ablated, y, scoring):
    if scoring == "accuracy":
        return accuracy_score(y, ablated.argmax(1))
    return r2_score(outputs, ablated, multioutput="variance_weighted")


def session_and_source(model, X, batch_size=16):
    return ModelSession(model), ArraySource(X, batch_size)


# -- node ablation -----------------------------------------------------------------------
@pytest.mark.parametrize("scoring", ["r2", "accuracy"])
@pytest.mark.parametrize("layer", ["fc2", "fc3"])
def test_node_ablation_equals_a_hand_written_one(fitted, layer, scoring):
    model, X, y, bases, outputs = fitted
    basis = bases[layer]
    K = basis.matrix.shape[1]
    acts = activations_of(model, layer, X)
    ks = list(range(K + 1))
    expected = []
    for k in ks:
        features = (acts - basis.mean) @ basis.matrix[:, :k]
        rebuilt = features @ basis.pinv[:k] + basis.mean  # the other features mean-ablated
        expected.append(scores(outputs, rest_of_model(model, layer, rebuilt), y, scoring))
    labels = y if scoring == "accuracy" else None
    got = node_ablation_scores(*session_and_source(model, X), basis, ks, y=labels, scoring=scoring)
    assert got.shape == (K + 1,)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    if scoring == "r2":
        assert got[-1] == pytest.approx(1.0, abs=1e-9)  # every feature: the model itself


def test_node_ablation_default_scoring(fitted):
    """Without labels R2 of the outputs, with them accuracy."""
    model, X, y, bases, outputs = fitted
    basis = bases["fc2"]
    r2 = node_ablation_scores(*session_and_source(model, X), basis, [2])
    acc = node_ablation_scores(*session_and_source(model, X), basis, [2], y=y)
    explicit_r2 = node_ablation_scores(*session_and_source(model, X), basis, [2], scoring="r2")
    explicit_acc = node_ablation_scores(
        *session_and_source(model, X), basis, [2], y=y, scoring="accuracy"
    )
    assert r2[0] == explicit_r2[0] and acc[0] == explicit_acc[0] and r2[0] != acc[0]


@pytest.mark.parametrize("n_features", [[-1], [0, 9], [3, 100]])
def test_node_ablation_refuses_features_out_of_range(fitted, n_features):
    model, X, y, bases, outputs = fitted
    assert bases["fc2"].matrix.shape[1] == 8
    with pytest.raises(ValueError, match=r"n_features must lie in \[0, 8\]"):
        node_ablation_scores(*session_and_source(model, X), bases["fc2"], n_features)
    with pytest.raises(ValueError, match=r"n_features must lie in \[0, 8\]"):
        NodeAblation(ModelSession(model), bases["fc2"], np.array(n_features))


def test_node_ablation_reads_the_output_only_for_r2(fitted):
    model, X, y, bases, outputs = fitted
    session = ModelSession(model)
    assert NodeAblation(session, bases["fc2"], np.array([1])).reads == ("fc2", "output")
    labelled = NodeAblation(session, bases["fc2"], np.array([1]), y=y, scoring="accuracy")
    assert labelled.reads == ("fc2",)


# -- edge ablation -----------------------------------------------------------------------
def random_graph(bases, rng):
    """A graph of random, distinct edges of the bases' kept widths."""
    edges = {
        (src.name, dst.name): rng.permutation(dst.n_components * src.n_components)
        .reshape(dst.n_components, src.n_components)
        .astype(float)
        + 1.0
        for src, dst in zip(list(bases.values())[:-1], list(bases.values())[1:])
    }
    lambdas = {name: b.lambdas[: b.n_components] for name, b in bases.items()}
    return InteractionGraph(list(bases), lambdas, edges)


def section_of(model, src, acts):
    """From node layer ``src``'s input to the next node's input (or the output)."""
    with torch.no_grad():
        h = torch.as_tensor(acts)
        return (model.act2(model.fc2(h)) if src == "fc2" else model.fc3(h)).numpy()


def edge_ablated_outputs(model, src, dst, acts, mask):
    """Each next feature from its kept input features only, then the rest of the model."""
    f_hat = (acts - src.mean) @ src.kept_matrix
    features = np.zeros((len(acts), dst.n_components))
    for i in range(dst.n_components):
        inputs = (f_hat * mask[i]) @ src.kept_pinv + src.mean  # others mean-ablated
        nxt = section_of(model, src.name, inputs)
        features[:, i] = (nxt - dst.mean) @ dst.kept_matrix[:, i]
    rebuilt = features @ dst.kept_pinv + dst.mean
    return rebuilt if dst.name == "output" else rest_of_model(model, dst.name, rebuilt)


@pytest.mark.parametrize("scoring", ["r2", "accuracy"])
@pytest.mark.parametrize("section", [("fc2", "fc3"), ("fc3", "output")])
def test_edge_ablation_equals_a_hand_written_one(fitted, rng, section, scoring):
    model, X, y, bases, outputs = fitted
    src, dst = bases[section[0]], bases[section[1]]
    graph = random_graph(bases, rng)
    E = graph.edges[section]
    n_edges = [0, 1, 5, E.size // 2, E.size]
    acts = activations_of(model, src.name, X)
    expected = []
    for m in n_edges:
        ablated = edge_ablated_outputs(model, src, dst, acts, brute_force_top(E, m))
        expected.append(scores(outputs, ablated, y, scoring))
    labels = y if scoring == "accuracy" else None
    session, source = session_and_source(model, X)
    got = edge_ablation_scores(session, source, graph, src, dst, n_edges, y=labels, scoring=scoring)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_edge_ablation_with_explicit_masks(fitted):
    """Masks that are not top-m sets: equal rows share one run, others their own."""
    model, X, y, bases, outputs = fitted
    src, dst = bases["fc2"], bases["fc3"]
    mask = np.zeros((dst.n_components, src.n_components), dtype=bool)
    mask[0, ::2] = True
    mask[1] = mask[0]
    mask[2, 1] = True
    session, source = session_and_source(model, X)
    acc = EdgeAblation(session, src, dst, [mask, ~mask], n_samples=N)
    (got,) = session.run_pass(source, [acc], "edge ablation")
    acts = activations_of(model, "fc2", X)
    expected = [
        scores(outputs, edge_ablated_outputs(model, src, dst, acts, m), None, "r2")
        for m in (mask, ~mask)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_edge_ablation_refuses_edges_out_of_range_and_other_graphs(fitted, rng):
    model, X, y, bases, outputs = fitted
    graph = random_graph(bases, rng)
    src, dst = bases["fc2"], bases["fc3"]
    size = graph.edges[("fc2", "fc3")].size
    for n_edges in ([-1], [size + 1], [0, size, size + 5]):
        with pytest.raises(ValueError, match=rf"n_edges must lie in \[0, {size}\]"):
            edge_ablation_scores(*session_and_source(model, X), graph, src, dst, n_edges)
    graph.edges[("fc2", "fc3")] = graph.edges[("fc2", "fc3")][:, :-1]
    with pytest.raises(ValueError, match="was the graph computed from this estimator"):
        edge_ablation_scores(*session_and_source(model, X), graph, src, dst, [1])


# -- data order ----------------------------------------------------------------------------
def loader(X, shuffle):
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(X))
    return StreamSource(torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=shuffle))


def test_labels_with_a_shuffled_dataloader_are_refused(fitted, rng):
    model, X, y, bases, outputs = fitted
    graph = random_graph(bases, rng)
    session = ModelSession(model)
    with pytest.raises(ValueError, match="DataLoader that shuffles its samples"):
        node_ablation_scores(session, loader(X, True), bases["fc2"], [1], y=y)
    with pytest.raises(ValueError, match="DataLoader that shuffles its samples"):
        edge_ablation_scores(session, loader(X, True), graph, bases["fc2"], bases["fc3"], [1], y=y)
    # In order, a DataLoader pairs labels with samples as an array does.
    ordered = node_ablation_scores(session, loader(X, False), bases["fc2"], [1, 3], y=y)
    arrays = node_ablation_scores(session, ArraySource(X, 16), bases["fc2"], [1, 3], y=y)
    np.testing.assert_array_equal(ordered, arrays)
    # Without labels the order does not matter: R2 pools every sample.
    shuffled = node_ablation_scores(session, loader(X, True), bases["fc2"], [1, 3])
    arrays = node_ablation_scores(session, ArraySource(X, 16), bases["fc2"], [1, 3])
    np.testing.assert_allclose(shuffled, arrays, rtol=1e-9)


def test_labels_of_another_length_are_refused(fitted):
    model, X, y, bases, outputs = fitted
    with pytest.raises(ValueError, match=r"y has shape \(39,\)"):
        node_ablation_scores(*session_and_source(model, X), bases["fc2"], [1], y=y[:-1])


# -- labels of sequences of several lengths ------------------------------------------------------
def test_labels_padded_for_longer_batches_are_cut_to_the_batchs_length(rng):
    targets = rng.integers(0, 3, size=(2, 6))
    targets[:, 4:] = -100  # y padded for a batch of 6 positions
    cut = _trimmed(targets, (4, 3))
    np.testing.assert_array_equal(cut, [row[:4] for row in targets.tolist()])
    assert cut.shape == (2, 4)


@pytest.mark.parametrize(
    "targets, output_shape",
    [
        (np.zeros((2, 4), dtype=np.int64), (4, 3)),  # the batch's own length
        (np.zeros(2, dtype=np.int64), (4, 3)),  # one label per sample
        (np.zeros((2, 5), dtype=np.int64), (3,)),  # outputs without positions
    ],
    ids=["same length", "1-D labels", "no positions"],
)
def test_labels_without_excess_are_left_as_they_are(targets, output_shape):
    assert _trimmed(targets, output_shape) is targets


def test_labels_shorter_than_a_batch_are_refused_saying_to_pad_them():
    with pytest.raises(ValueError, match=r"labels at 3 positions.*sequences of 4.*-100"):
        _trimmed(np.zeros((2, 3), dtype=np.int64), (4, 3))


@pytest.mark.parametrize("position", [4, 5])
def test_a_label_beyond_the_batchs_length_is_refused_naming_minus_100(rng, position):
    targets = np.full((2, 6), -100)
    targets[:, :4] = rng.integers(0, 3, size=(2, 4))
    targets[1, position] = 0  # a scored label where the batch has no position
    with pytest.raises(ValueError, match=r"labels at 6 positions.*sequences of 4.*must be -100"):
        _trimmed(targets, (4, 3))


# -- single-feature ablation ------------------------------------------------------------------
@pytest.mark.parametrize("scoring", ["r2", "accuracy"])
@pytest.mark.parametrize("layer", ["fc2", "fc3"])
def test_feature_ablation_equals_a_hand_written_one(fitted, layer, scoring):
    """Feature j alone mean-ablated: its part ``(f - mu) C_j C+_j`` removed, the rest of the
    activations (the part outside the basis included) kept; variant 0 is the model itself."""
    model, X, y, bases, outputs = fitted
    basis = bases[layer]
    acts = activations_of(model, layer, X)
    chosen = np.array([2, 0, basis.matrix.shape[1] - 1])
    expected = [scores(outputs, rest_of_model(model, layer, acts), y, scoring)]
    for j in chosen:
        part = np.outer((acts - basis.mean) @ basis.matrix[:, j], basis.pinv[j])
        expected.append(scores(outputs, rest_of_model(model, layer, acts - part), y, scoring))
    session, source = session_and_source(model, X, batch_size=7)
    labels = y if scoring == "accuracy" else None
    acc = FeatureAblation(session, basis, chosen, y=labels, scoring=scoring, n_samples=N)
    (got,) = session.run_pass(source, [acc], "test")
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert len(set(np.round(got[1:], 9))) > 1  # the features differ in what they do


def test_feature_ablation_runs_variants_in_chunks(fitted, monkeypatch):
    """Chunks of a few variants (a small memory budget) give the same scores."""
    model, X, y, bases, outputs = fitted
    basis = bases["fc2"]
    chosen = np.arange(basis.matrix.shape[1])
    session, source = session_and_source(model, X)
    (whole,) = session.run_pass(source, [FeatureAblation(session, basis, chosen)], "test")
    monkeypatch.setattr("sklearn_lib._analysis.ablate.CHUNK_ELEMENTS", 1)
    session, source = session_and_source(model, X)
    (chunked,) = session.run_pass(source, [FeatureAblation(session, basis, chosen)], "test")
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)
