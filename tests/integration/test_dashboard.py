"""FeatureDashboard end to end: the examples it shows against a brute-force search over every
token, every input form, the page's data, and clear errors."""

import base64
import copy
import json

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from torch import nn
from torch.utils.data import DataLoader
from toy_models import GPT2_VOCAB, tanh_mlp, tiny_gpt2

from sklearn_lib import ActivationTransformer, FeatureDashboard, LIBTransformer

GPT2_NODES = ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]
VOCAB = [f"t{i}" for i in range(GPT2_VOCAB)]


@pytest.fixture(scope="module")
def gpt2():
    pytest.importorskip("transformers", reason="needs transformers (the models extra)")
    return tiny_gpt2()  # the tests' GPT-2: width 16, 8 positions, far from linear


def _lib(model, basis="lib", **kw):
    # Few stochastic sources: the fit is quick, and any basis will do for the searches.
    if basis == "lib":
        kw = {"n_stochastic_sources": 2, "random_state": 0, **kw}
    return LIBTransformer(
        model,
        GPT2_NODES[0],
        downstream_layers=GPT2_NODES[1:],
        output="logits",
        forward_kwargs={"use_cache": False},
        basis=basis,
        batch_size=16,
        **kw,
    )


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, GPT2_VOCAB, size=(32, 8))


@pytest.fixture(scope="module")
def fits(gpt2, ids):
    return _lib(gpt2).fit(ids), _lib(gpt2, basis="pca").fit(ids)


def _padded_stream(ids, lengths, batch=8):
    """Hugging Face's dynamic padding: each batch padded (right) to its own longest."""
    batches = []
    for start in range(0, len(ids), batch):
        rows = range(start, min(start + batch, len(ids)))
        T = max(lengths[i] for i in rows)
        input_ids = np.zeros((len(rows), T), dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for r, i in enumerate(rows):
            input_ids[r, : lengths[i]] = ids[i, : lengths[i]]
            mask[r, : lengths[i]] = 1
        batches.append(
            {"input_ids": torch.as_tensor(input_ids), "attention_mask": torch.as_tensor(mask)}
        )
    return _Stream(batches)


class _Stream:
    """A re-iterable stream of batches (a list would be read as samples)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _brute_force(model, node, basis, X, m):
    """Every real token's features at ``node``; each feature's ``m`` strongest, ties in
    data order: ``(samples, positions, values)``."""
    acts = ActivationTransformer(
        model, node, output="logits", forward_kwargs={"use_cache": False}
    ).fit(X)
    rows, index = acts.transform_tokens(X)
    F = (rows - basis.mean) @ np.asarray(basis.matrix)
    order = np.argsort(-np.abs(F), axis=0, kind="stable")[:m]  # (m, K)
    return index[order, 0].T, index[order, 1].T, np.take_along_axis(F, order, 0).T


@pytest.mark.parametrize("form", ["array", "padded stream"])
@pytest.mark.parametrize("basis", ["lib", "pca"])
def test_top_examples_equal_a_brute_force_search_over_all_tokens(gpt2, ids, fits, basis, form):
    """The issue's check: same samples and positions, same values to 1e-6, at every node
    layer, over arrays and over dynamically padded batches."""
    lib = fits[0] if basis == "lib" else fits[1]
    X = ids
    if form == "padded stream":
        lengths = np.random.default_rng(1).integers(3, 9, size=len(ids))
        X = _padded_stream(ids, lengths)
        lib = _lib(gpt2, basis=basis).fit(X)
    dashboard = FeatureDashboard.from_estimator(lib, X, n_features=6, n_examples=7, graph=None)
    (examples,) = dashboard.examples.values()
    assert list(examples) == GPT2_NODES
    for node in GPT2_NODES:
        found = examples[node]
        np.testing.assert_array_equal(found.features, np.arange(6))
        samples, positions, values = _brute_force(gpt2, node, lib.bases_[node], X, 7)
        np.testing.assert_array_equal(found.samples, samples[:6])
        np.testing.assert_array_equal(found.positions[..., 0], positions[:6])
        np.testing.assert_allclose(found.values, values[:6], rtol=0, atol=1e-6)


def test_token_contexts_are_decoded_around_each_example(gpt2, ids, fits):
    lib, _ = fits
    dashboard = FeatureDashboard.from_estimator(
        lib, ids, n_features=3, n_examples=4, graph=None, tokenizer=VOCAB, context=(2, 1)
    )
    data = dashboard.data
    assert data["input"]["kind"] == "tokens"
    strings = data["input"]["token_strings"]
    for node in data["views"][0]["nodes"]:
        for card in node["features"]:
            for example in card["examples"]:
                s, (t,) = example["sample"], example["position"]
                window = ids[s, max(t - 2, 0) : t + 2]
                assert [strings[i] for i in example["context"]] == [VOCAB[i] for i in window]
                assert example["focus"] == min(t, 2)
                focus_value = example["context_values"][example["focus"]]
                assert focus_value == pytest.approx(example["value"], rel=2e-3)


def test_a_view_per_estimator_with_edges_modules_and_ablation(gpt2, ids, fits):
    lib, pca = fits
    graph = lib.interaction_graph(ids[:8], n_stochastic_sources=2, random_state=0)
    dashboard = FeatureDashboard.from_estimator(
        lib,
        ids,
        compare=pca,
        n_features=5,
        n_examples=3,
        graph={"LIB": graph, "PCA": None},
        ablation=True,
    )
    lib_view, pca_view = dashboard.data["views"]
    assert (lib_view["name"], pca_view["name"]) == ("LIB", "PCA")
    assert (lib_view["basis"], pca_view["basis"]) == ("lib", "pca")
    assert pca_view["sections"] == [] and pca_view["modularity"] is None
    section = lib_view["sections"][0]
    assert (section["source"], section["target"]) == tuple(GPT2_NODES[:2])
    E = graph.edges[tuple(GPT2_NODES[:2])][:5, :5]
    for s, d, w in zip(section["src"], section["dst"], section["weight"]):
        assert w == pytest.approx(E[d, s], rel=1e-3)
    assert len(section["src"]) == np.count_nonzero(E)
    card = lib_view["nodes"][1]["features"][0]
    strongest = int(np.argmax(E[0]))
    assert card["incoming"][0][:2] == [GPT2_NODES[0], strongest]
    assert lib_view["ablation"]["metric"] == "R²"
    assert lib_view["ablation"]["baseline"] == pytest.approx(1.0)
    assert all(c["ablation"] <= 1e-9 for n in lib_view["nodes"] for c in n["features"])
    assert all(isinstance(c["module"], int) for n in lib_view["nodes"] for c in n["features"])
    lambdas = lib.bases_[GPT2_NODES[0]].lambdas
    first = lib_view["nodes"][0]["features"][0]
    assert first["share"] == pytest.approx(lambdas[0] / lambdas[: lib.n_components_].sum(), 1e-3)


def test_the_page_is_written_and_holds_every_node(gpt2, ids, fits, tmp_path):
    lib, _ = fits
    graph = lib.interaction_graph(ids[:8], n_stochastic_sources=2, random_state=0)
    dashboard = FeatureDashboard.from_estimator(lib, ids, n_features=4, n_examples=2, graph=graph)
    path = dashboard.save_html(tmp_path / "page.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") or text.lower().startswith("<!doctype html>")
    assert all(node in text for node in GPT2_NODES)
    assert "NaN" not in json.dumps(dashboard.data)
    assert "<iframe srcdoc=" in dashboard._repr_html_()
    assert "LIB" in repr(dashboard)


def test_the_model_is_untouched(gpt2, ids, fits):
    lib, _ = fits
    state = copy.deepcopy(gpt2.state_dict())
    FeatureDashboard.from_estimator(lib, ids, n_features=2, n_examples=2, ablation=True, graph=None)
    for key, value in gpt2.state_dict().items():
        assert torch.equal(value, state[key])


# -- images, tables and conv maps --------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)[:300]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    return model, X, y[:300]


def test_flat_digits_as_image_tiles_with_every_input_form(digits):
    model, X, y = digits
    lib = LIBTransformer(model, "2", downstream_layers=["4"]).fit(X)
    kw = dict(n_features=3, n_examples=4, image_shape=(8, 8), ablation=True)
    arrays = FeatureDashboard.from_estimator(lib, X, y, **kw)
    loader = DataLoader(torch.as_tensor(X), batch_size=37)
    streamed = FeatureDashboard.from_estimator(lib, loader, y, **kw)
    # The same page whatever the input form, but for the histograms' bins, which start
    # from the first batch's range (their counts agree).
    assert _without_histograms(arrays.data) == _without_histograms(streamed.data)
    data = arrays.data
    assert data["input"] == {"kind": "image", "image_shape": [8, 8, 1]}
    assert data["views"][0]["ablation"]["metric"] == "accuracy"
    example = data["views"][0]["nodes"][0]["features"][0]["examples"][0]
    pixels = np.frombuffer(base64.b64decode(example["pixels"]), dtype=np.uint8).reshape(8, 8)
    image = X[example["sample"]].reshape(8, 8)
    expected = (image - image.min()) / (image.max() - image.min()) * 255
    np.testing.assert_allclose(pixels, expected.round(), atol=1)


def _without_histograms(data):
    data = copy.deepcopy(data)
    for view in data["views"]:
        for node in view["nodes"]:
            for card in node["features"]:
                assert sum(card.pop("histogram")["counts"]) == 300
    return data


def test_tabular_rows_name_their_columns(rng):
    model = tanh_mlp()
    X = rng.normal(size=(40, 4))
    lib = LIBTransformer(model, "fc2").fit(X)
    dashboard = FeatureDashboard.from_estimator(
        lib, X, n_features=2, n_examples=3, columns=["a", "b", "c", "d"], graph=None
    )
    assert dashboard.data["input"] == {"kind": "tabular", "columns": ["a", "b", "c", "d"]}
    example = dashboard.data["views"][0]["nodes"][0]["features"][0]["examples"][0]
    np.testing.assert_allclose(example["row"], X[example["sample"]], rtol=1e-3)


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.body = nn.Conv2d(6, 5, 3, padding=1)
        self.head = nn.Linear(5 * 6 * 6, 4)

    def forward(self, x):
        h = self.body(torch.tanh(self.conv(x)))
        return self.head(torch.tanh(h).flatten(1))


def test_conv_map_locations_are_examples_of_rgb_images(rng):
    torch.manual_seed(0)
    model = _ConvNet()
    X = rng.normal(size=(20, 3, 6, 6)).astype(np.float32)
    lib = LIBTransformer(model, "body", feature_axis={"body": 1}).fit(X)
    dashboard = FeatureDashboard.from_estimator(lib, X, n_features=2, n_examples=3, graph=None)
    assert dashboard.data["input"] == {"kind": "image", "image_shape": [6, 6, 3]}
    node = dashboard.data["views"][0]["nodes"][0]
    assert node["positions_shape"] == [6, 6]
    found = dashboard.examples["LIB"]["body"]
    # Brute force over every location: features last, one row per (sample, h, w).
    acts = ActivationTransformer(model, "body", feature_axis=1).fit(X).transform(X)
    F = (acts.reshape(20 * 36, 6) - lib.bases_["body"].mean) @ lib.bases_["body"].matrix[:, :2]
    best = np.argsort(-np.abs(F[:, 0]), kind="stable")[:3]
    np.testing.assert_array_equal(found.samples[0], best // 36)
    np.testing.assert_array_equal(found.positions[0], np.stack([best % 36 // 6, best % 6], 1))


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_features": 0}, ValueError, "n_features=0 must be at least 1"),
        ({"n_examples": 2.5}, TypeError, "n_examples must be an int"),
        ({"input_kind": "audio"}, ValueError, "input_kind must be one of"),
        ({"layers": ["nope"]}, ValueError, r"layers \['nope'\] are not node layers"),
        ({"layers": "fc2"}, TypeError, "layers must be a non-empty list"),
        ({"context": (1,)}, ValueError, "context must be"),
        ({"image_shape": (8, -8)}, ValueError, "image_shape must be"),
        ({"ablation": "yes"}, TypeError, "ablation must be True or False"),
        ({"scoring": "loss"}, ValueError, "scoring must be None"),
        ({"graph": "all"}, ValueError, "graph must be 'auto'"),
        ({"title": 3}, TypeError, "title must be a str"),
        ({"input_kind": "tokens"}, ValueError, "token ids"),
    ],
)
def test_bad_arguments_are_refused_by_name(rng, kwargs, error, match):
    X = rng.normal(size=(30, 4))
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    with pytest.raises(error, match=match):
        FeatureDashboard.from_estimator(lib, X, **{"graph": None, **kwargs})


def test_other_estimators_are_refused(rng):
    model = tanh_mlp()
    X = rng.normal(size=(30, 4))
    with pytest.raises(NotFittedError):
        FeatureDashboard.from_estimator(LIBTransformer(model, "fc2"), X)
    pipeline = Pipeline([("acts", ActivationTransformer(model, "fc2")), ("pca", PCA())]).fit(X)
    with pytest.raises(TypeError, match="basis='pca'"):
        FeatureDashboard.from_estimator(pipeline, X)


def test_a_graph_is_the_first_view_s_and_must_be_of_its_estimator(gpt2, ids, fits):
    """One graph with compare=: the first view's; the other view's is its own (not LIB's
    edges on PCA's features). A graph of another fit is refused by its Lambda."""
    lib, pca = fits
    lib_graph = lib.interaction_graph(ids[:8], n_stochastic_sources=2, random_state=0)
    pca_graph = pca.interaction_graph(ids)
    dashboard = FeatureDashboard.from_estimator(
        lib, ids, compare=pca, n_features=3, n_examples=2, graph=lib_graph
    )
    pca_view = dashboard.data["views"][1]
    E = pca_graph.edges[tuple(GPT2_NODES[:2])][:3, :3]
    section = pca_view["sections"][0]
    for s, d, w in zip(section["src"], section["dst"], section["weight"]):
        assert w == pytest.approx(E[d, s], rel=1e-3)
    with pytest.raises(ValueError, match="is not of its estimator"):
        FeatureDashboard.from_estimator(lib, ids, n_features=3, n_examples=2, graph=pca_graph)


def test_layers_with_one_left_out_between_shown_ones(gpt2, ids, fits):
    """h.0, h.1 and the output: the section h.0 -> h.1 is drawn, none from h.1 to the
    output (ln_f, left out, lies between)."""
    lib, _ = fits
    graph = lib.interaction_graph(ids[:8], n_stochastic_sources=2, random_state=0)
    layers = ["transformer.h.0", "transformer.h.1", "output"]
    dashboard = FeatureDashboard.from_estimator(
        lib, ids, layers=layers, n_features=3, n_examples=2, graph=graph
    )
    view = dashboard.data["views"][0]
    assert [n["name"] for n in view["nodes"]] == layers
    assert [(s["source"], s["target"]) for s in view["sections"]] == [tuple(layers[:2])]
    output_card = view["nodes"][2]["features"][0]
    assert output_card["incoming"] == [] and output_card["outgoing"] == []


def test_view_names_are_unique_and_graph_names_must_be_views(rng):
    X = rng.normal(size=(60, 4))
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    dashboard = FeatureDashboard.from_estimator(
        lib, X, n_features=2, n_examples=2, graph=None, compare={"LIB (2)": lib, "LIB": lib}
    )
    assert [v["name"] for v in dashboard.data["views"]] == ["LIB", "LIB (2)", "LIB (3)"]
    with pytest.raises(ValueError, match=r"graph names views \['lbi'\].*views are \['LIB'"):
        FeatureDashboard.from_estimator(lib, X, n_features=2, graph={"lbi": None})
