"""The interaction graph's own methods (``_analysis.graph``) on a hand-made graph.

Every expectation is computed by plain loops: the strongest edges by sorting
``(-value, row, column)`` triples (``_refs.brute_force_top``), the 90% count by
accumulating.
"""

import numpy as np
import pytest
from _refs import brute_force_top

from sklearn_lib._analysis.graph import InteractionGraph


def hand_made():
    """a (3 features) -> b (2) -> output (3), with ties and zero edges."""
    edges = {
        ("a", "b"): np.array([[0.5, 2.0, 0.0], [2.0, 0.25, 1.0]]),
        ("b", "output"): np.array([[1.0, 0.0], [3.0, 1.0], [0.0, 0.125]]),
    }
    lambdas = {"a": np.array([3.0, 2.0, 1.0]), "b": np.array([5.0, 0.5]), "output": np.ones(3)}
    info = {"basis": "lib", "integration": "gradient", "n_samples": 10}
    return InteractionGraph(["a", "b", "output"], lambdas, edges, info)


def test_sections_are_consecutive_nodes():
    assert hand_made().sections == [("a", "b"), ("b", "output")]
    assert InteractionGraph(["x", "output"], {}, {}).sections == [("x", "output")]


@pytest.mark.parametrize("section", [("a", "b"), ("b", "output")])
def test_top_edges_are_the_strongest_ties_in_row_major_order(section):
    graph = hand_made()
    E = graph.edges[section]
    for n in range(E.size + 2):
        mask = graph.top_edges(section, n)
        assert mask.dtype == bool and mask.shape == E.shape
        np.testing.assert_array_equal(mask, brute_force_top(E, n))
        assert mask.sum() == min(n, E.size)
    # The tie at 2.0 in ('a', 'b'): the first in row-major order wins.
    np.testing.assert_array_equal(
        graph.top_edges(("a", "b"), 1), [[False, True, False], [False, False, False]]
    )
    # A list names the section as well as a tuple.
    np.testing.assert_array_equal(graph.top_edges(list(section), 3), graph.top_edges(section, 3))


def test_top_edges_of_random_edges(rng):
    E = rng.integers(0, 4, size=(5, 7)).astype(float)  # many ties
    graph = InteractionGraph(["x", "output"], {"x": np.ones(7), "output": np.ones(5)}, {})
    graph.edges[("x", "output")] = E
    for n in (0, 1, 6, 17, 35):
        np.testing.assert_array_equal(graph.top_edges(("x", "output"), n), brute_force_top(E, n))


def test_summary_says_features_totals_and_strongest_edges():
    graph = hand_made()
    text = graph.summary(top=3)
    lines = text.splitlines()
    assert lines[0].startswith("InteractionGraph with 3 node layers")
    assert "'n_samples': 10" in lines[0]
    assert lines[1] == "  node 'a': 3 features, Lambda max 3"
    assert lines[2] == "  node 'b': 2 features, Lambda max 5"
    assert lines[3] == "  node 'output': 3 features, Lambda max 1"
    at = 4
    for (src, dst), E in graph.edges.items():
        values = sorted(E.ravel(), reverse=True)
        carried, n90 = 0.0, 0
        while carried < 0.9 * E.sum():
            carried += values[n90]
            n90 += 1
        assert lines[at] == (
            f"  edges {src!r} -> {dst!r}: {E.shape[0]} x {E.shape[1]} (out x in, as the array), "
            f"total {E.sum():.4g}, {n90} of {E.size} edges carry 90% of it"
        )
        order = sorted((-E[i, j], i, j) for i in range(E.shape[0]) for j in range(E.shape[1]))
        for k, (value, i, j) in enumerate(order[:3]):
            assert lines[at + 1 + k] == f"    {src}[{j}] -> {dst}[{i}]: {-value:.4g}"
        at += 4
    assert len(lines) == at
    assert str(graph) == graph.summary()
    assert len(graph.summary(top=0).splitlines()) == 4 + 2


def test_save_and_load_round_trip(tmp_path):
    graph = hand_made()
    graph.info["n_samples"] = np.int64(10)  # numpy values are stored as plain ones
    graph.info["sources"] = np.array([1.0, 2.0])
    path = tmp_path / "graph"  # no suffix is added
    graph.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph"]
    loaded = InteractionGraph.load(str(path))
    assert loaded.nodes == graph.nodes
    assert loaded.info == {
        "basis": "lib",
        "integration": "gradient",
        "n_samples": 10,
        "sources": [1.0, 2.0],
    }
    assert loaded.edges.keys() == graph.edges.keys()
    for key, E in graph.edges.items():
        np.testing.assert_array_equal(loaded.edges[key], E)
    for node, lam in graph.lambdas.items():
        np.testing.assert_array_equal(loaded.lambdas[node], lam)
    assert loaded.summary() == hand_made().summary().replace("10}", "10, 'sources': [1.0, 2.0]}")


def test_a_graph_that_would_not_load_is_not_written(tmp_path):
    graph = hand_made()
    graph.edges[("a", "b")] = -graph.edges[("a", "b")]
    with pytest.raises(ValueError):
        graph.save(tmp_path / "bad.npz")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "text.npz").write_text("not a graph")
    with pytest.raises(ValueError, match="text.npz"):
        InteractionGraph.load(tmp_path / "text.npz")


def test_to_networkx_has_every_feature_and_the_nonzero_edges():
    graph = hand_made()
    g = graph.to_networkx()
    assert g.is_directed()
    expected_nodes = {(n, j) for n in graph.nodes for j in range(len(graph.lambdas[n]))}
    assert set(g.nodes) == expected_nodes
    for node, feature in g.nodes:
        attrs = g.nodes[(node, feature)]
        assert attrs == {
            "layer": node,
            "feature": feature,
            "lambda": graph.lambdas[node][feature],
        }
    expected_edges = {
        ((src, j), (dst, i)): E[i, j]
        for (src, dst), E in graph.edges.items()
        for i in range(E.shape[0])
        for j in range(E.shape[1])
        if E[i, j] > 0
    }
    assert {(u, v): w for u, v, w in g.edges(data="weight")} == expected_edges
    assert g.number_of_edges() == 9  # 12 entries, 3 of them zero


class DecodingTokenizer:
    """Hugging Face's ``decode``: token ids to text."""

    def decode(self, ids):
        return "".join(["<a>", " the", " cat"][i] for i in ids)


def test_summary_names_labelled_features_with_their_text():
    graph = hand_made()
    plain = graph.summary(top=3).splitlines()
    for labels in (["<a>", " the", " cat"], DecodingTokenizer(), {"output": DecodingTokenizer()}):
        lines = graph.summary(top=3, labels=labels).splitlines()
        # b[0] -> output[1]: 3, b[0] -> output[0]: 1, b[1] -> output[1]: 1
        assert lines[-3:] == [
            "    b[0] -> output[1 ' the']: 3",
            "    b[0] -> output[0 '<a>']: 1",
            "    b[1] -> output[1 ' the']: 1",
        ]
        assert lines[:-3] == plain[:-3]  # only the output's features are named
    lines = graph.summary(top=1, labels={"a": ["x", "y", "z"], "b": ["p", "q"]}).splitlines()
    assert lines[-3] == "    a[1 'y'] -> b[0 'p']: 2"
    assert lines[-1] == "    b[0 'p'] -> output[1]: 3"


def test_summary_refuses_labels_it_cannot_use():
    graph = hand_made()
    with pytest.raises(ValueError, match="labels for 'output' have 2 entries, fewer than its 3"):
        graph.summary(labels=["a", "b"])
    with pytest.raises(TypeError, match="a tokenizer .*, a sequence of str .*, or a dict"):
        graph.summary(labels=object())
    # Lambdas not all 1: features of a fitted basis (or a PCA output), not token ids.
    with pytest.raises(ValueError, match="node 'b' has Lambdas from 0.5 to 5"):
        graph.summary(labels={"b": DecodingTokenizer()})
