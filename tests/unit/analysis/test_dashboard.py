"""The dashboard's data (``_analysis.dashboard``): rounding, token strings, chosen features,
the graph cut to them, each card's neighbours, and the input kinds."""

import numpy as np
import pytest
import torch

from sklearn_lib._analysis.dashboard import (
    TokenStrings,
    _histogram,
    choose_recorder,
    image_like,
    rounded,
    shown_features,
    subgraph,
    view_payload,
)
from sklearn_lib._analysis.graph import InteractionGraph
from sklearn_lib._analysis.top_examples import (
    FeatureExamples,
    ImageTiles,
    SampleInputs,
    TokenContexts,
)
from sklearn_lib._fitting.basis import NodeBasis


def test_rounded_keeps_significant_digits():
    values = [123456.0, 0.000123456, -2.5e-8, 0.0, 1.0, 0.1 + 0.2]
    assert rounded(values, 4) == [123500.0, 0.0001235, -2.5e-08, 0.0, 1.0, 0.3]
    assert rounded(np.array([[1.23456]]), 2) == [[1.2]]


class _Decoder:
    def decode(self, ids):
        return "<" + ",".join(map(str, ids)) + ">"


class _Converter:
    def convert_ids_to_tokens(self, token):
        return f"tok{token}"


@pytest.mark.parametrize(
    "tokenizer, expected",
    [
        (None, ["#7", "#3"]),
        (["a", "b", "c", "d", "e", "f", "g", "h"], ["h", "d"]),
        (_Decoder(), ["<7>", "<3>"]),
        (_Converter(), ["tok7", "tok3"]),
    ],
)
def test_token_strings_decode_each_id_once(tokenizer, expected):
    strings = TokenStrings(tokenizer)
    assert strings([7, 3, 7]) == [0, 1, 0]
    assert strings.strings == expected


def test_a_vocabulary_too_short_is_named():
    with pytest.raises(ValueError, match="token id 9 is beyond the vocabulary's 2 strings"):
        TokenStrings(["a", "b"])([9])


def _basis(name, lambdas, kind="lib", n_components=None):
    d = len(lambdas)
    eye = np.eye(d)
    k = d if n_components is None else n_components
    return NodeBasis(name, (d,), np.zeros(d), eye, eye, np.asarray(lambdas, float), k, kind=kind)


def test_shown_features_are_the_largest_lambdas_among_the_kept():
    assert shown_features(_basis("a", [5, 4, 3, 2, 1]), 3).tolist() == [0, 1, 2]
    assert shown_features(_basis("a", [5, 4, 3, 2, 1], n_components=2), 3).tolist() == [0, 1]
    # An identity output's features are not sorted by Lambda: the largest, in index order.
    identity = _basis("output", [1, 9, 3, 9], kind="identity")
    assert shown_features(identity, 2).tolist() == [1, 3]


def _graph():
    rng = np.random.default_rng(0)
    lambdas = {"a": np.arange(4.0, 0, -1), "b": np.arange(3.0, 0, -1), "output": np.ones(2)}
    edges = {("a", "b"): rng.uniform(size=(3, 4)), ("b", "output"): rng.uniform(size=(2, 3))}
    edges[("a", "b")][1, 2] = 0.0
    return InteractionGraph(["a", "b", "output"], lambdas, edges)


def test_subgraph_keeps_the_shown_features_and_their_sections():
    graph = _graph()
    cut = subgraph(graph, {"a": None, "b": None}, {"a": np.array([0, 2]), "b": np.array([1])})
    assert cut.nodes == ["a", "b"]
    np.testing.assert_array_equal(cut.edges[("a", "b")], graph.edges[("a", "b")][[1]][:, [0, 2]])
    np.testing.assert_array_equal(cut.lambdas["a"], [4.0, 2.0])
    assert subgraph(graph, {"a": None}, {"a": np.array([0])}) is None  # no section left


def _examples(node, features, kind):
    F, m = len(features), 2
    records = (np.zeros((F, m, 3)),) if kind == "tabular" else ()
    return FeatureExamples(
        node=node,
        features=np.asarray(features),
        values=np.ones((F, m)),
        samples=np.zeros((F, m), dtype=np.int64),
        positions=np.zeros((F, m, 0), dtype=np.int64),
        records=records,
        histograms=[(np.array([0.0, 1.0]), np.array([2]))] * F,
        n_rows=4,
    )


def test_a_view_lists_edges_between_shown_features_and_each_card_s_neighbours():
    graph = _graph()
    features = {"a": np.array([0, 1, 2, 3]), "b": np.array([0, 1, 2])}
    cut = subgraph(graph, features, features)
    bases = {"a": _basis("a", [4, 3, 2, 1]), "b": _basis("b", [3, 2, 1])}
    render = lambda found: lambda f, e: {"row": [0.0]}  # noqa: E731
    view = view_payload(
        "LIB", bases, {n: (_examples(n, features[n], "tabular"), render) for n in bases}, graph=cut
    )
    (section,) = view["sections"]
    E = graph.edges[("a", "b")]
    assert len(section["src"]) == np.count_nonzero(E) == 11  # the zero edge is left out
    for s, d, w in zip(section["src"], section["dst"], section["weight"]):
        assert w == pytest.approx(E[d, s], rel=1e-3)
    b1 = view["nodes"][1]["features"][1]
    order = np.argsort(-E[1])
    assert [j for _, j, _ in b1["incoming"]] == [j for j in order if E[1, j] > 0][:5]
    a2 = view["nodes"][0]["features"][2]
    assert [i for _, i, _ in a2["outgoing"]] == [i for i in np.argsort(-E[:, 2]) if E[i, 2] > 0]
    assert view["nodes"][0]["features"][0]["share"] == pytest.approx(0.4)
    assert view["modularity"] is None and view["ablation"] is None


def test_the_input_kind_is_chosen_by_the_first_batch():
    assert choose_recorder("auto", torch.zeros(2, 5, dtype=torch.long), (1, 1))[0] == "tokens"
    assert (
        choose_recorder("auto", {"input_ids": torch.zeros(2, 5, dtype=torch.long)}, (1, 1))[0]
        == "tokens"
    )
    kind, recorder = choose_recorder("auto", torch.zeros(2, 3, 8, 8), (1, 1))
    assert kind == "image" and isinstance(recorder, ImageTiles)
    kind, recorder = choose_recorder("auto", torch.zeros(2, 64), (1, 1))
    assert kind == "tabular" and isinstance(recorder, SampleInputs)
    kind, recorder = choose_recorder("image", torch.zeros(2, 64), (1, 1), (8, 8))
    assert recorder.image_shape == (8, 8)
    assert isinstance(choose_recorder("tokens", None, (2, 3))[1], TokenContexts)
    assert not image_like(torch.zeros(2, 5, 8, 8))  # 5 channels: not an image
    assert image_like(torch.zeros(2, 8, 8))


def test_rounded_keeps_subnormal_numbers_finite():
    shown = rounded([5e-324, 1e-310, 1e300])
    assert shown[:2] == [5e-324, 1e-310]  # their scale overflows: kept as they are
    assert shown[2] == pytest.approx(1e300, rel=1e-12)


def test_histogram_edges_keep_enough_digits_to_stay_apart():
    """A narrow range far from 0: 4 significant digits would make every edge 100.0."""
    edges = 100 + np.linspace(0, 0.05, 11)
    shown = _histogram(edges, np.ones(10, dtype=int))["edges"]
    assert np.all(np.diff(shown) > 0)
    np.testing.assert_allclose(shown, edges, rtol=1e-9)


def test_a_subgraph_of_nodes_with_a_layer_left_out_between_them():
    """Shown nodes a and output are no section: no edges between them, and the section
    a -> b keeps its own when b is shown too."""
    graph = _graph()
    features = {"a": np.array([0, 1]), "b": np.array([0]), "output": np.array([1])}
    cut = subgraph(graph, {"a": None, "output": None}, features)
    assert cut is None  # a and output alone: nothing to show
    graph3 = InteractionGraph(
        ["a", "b", "c", "output"],
        {**graph.lambdas, "c": np.ones(2)},
        {
            ("a", "b"): graph.edges[("a", "b")],
            ("b", "c"): np.ones((2, 3)),
            ("c", "output"): np.ones((2, 2)),
        },
    )
    features["c"] = np.array([0, 1])
    cut = subgraph(graph3, {"a": None, "b": None, "output": None}, features)
    assert cut.nodes == ["a", "b", "output"]
    assert not cut.edges[("b", "output")].any()  # c left out: no section b -> output
    bases = {n: _basis(n, [4, 3, 2, 1][: len(graph3.lambdas[n])]) for n in ["a", "b"]}
    bases["output"] = _basis("output", [1, 1])
    render = lambda found: lambda f, e: {"row": [0.0]}  # noqa: E731
    view = view_payload(
        "LIB",
        bases,
        {n: (_examples(n, features[n], "tabular"), render) for n in bases},
        graph=cut,
    )
    assert [(s["source"], s["target"]) for s in view["sections"]] == [("a", "b")]
