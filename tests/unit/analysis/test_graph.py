"""The interaction graph's own methods (``_analysis.graph``) on a hand-made graph.

Every expectation is computed by plain loops: the strongest edges by sorting
``(-value, row, column)`` triples (``_refs.brute_force_top``), the 90% count by
accumulating.
"""

import numpy as np
import pytest
from _refs import brute_force_top

from sklearn_lib._analysis.graph import InteractionGraph

SECTION = ("x", "output")
ONE_EDGE = {SECTION: np.ones((1, 1))}


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
    graph = InteractionGraph(["x", "output"], {"x": np.ones(1), "output": np.ones(1)}, ONE_EDGE)
    assert graph.sections == [("x", "output")]


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
    graph = InteractionGraph(["x", "output"], {"x": np.ones(7), "output": np.ones(5)}, {SECTION: E})
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


# -- the constructor's checks: every graph, made by hand, computed or loaded, is sound --


def parts():
    """``(nodes, lambdas, edges)`` of :func:`hand_made`, to be spoiled one at a time."""
    graph = hand_made()
    return list(graph.nodes), dict(graph.lambdas), dict(graph.edges)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0, -1e-30])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_edges_that_are_not_finite_squares_are_refused(bad, dtype):
    nodes, lambdas, edges = parts()
    E = edges[("a", "b")].astype(dtype)
    E[1, 2] = bad
    edges[("a", "b")] = E
    kind = "negative" if bad < 0 and np.isfinite(bad) else "NaN or infinite"
    with pytest.raises(ValueError, match=rf"edges\[\('a', 'b'\)\] holds {kind} values"):
        InteractionGraph(nodes, lambdas, edges)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0, -1e-300])
def test_lambdas_that_are_not_finite_variances_are_refused(bad):
    nodes, lambdas, edges = parts()
    lambdas["b"] = np.array([5.0, bad])
    kind = "negative" if bad < 0 else "NaN or infinite"
    with pytest.raises(ValueError, match=rf"lambdas\['b'\] holds {kind} values"):
        InteractionGraph(nodes, lambdas, edges)


def test_zero_edges_and_lambdas_are_taken():
    nodes, lambdas, edges = parts()
    lambdas["a"] = np.zeros(3)
    edges = {key: np.zeros_like(E) for key, E in edges.items()}
    graph = InteractionGraph(nodes, lambdas, edges)
    assert all(E.sum() == 0 for E in graph.edges.values())


def _replaced(mapping, key, value):
    return {**mapping, key: value}


def _without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


# (what to change: nodes, lambdas, edges) -> the error.
SHAPE_ERRORS = {
    "transposed edges": (
        lambda n, lam, e: (n, lam, _replaced(e, ("a", "b"), e[("a", "b")].T)),
        r"edges\[\('a', 'b'\)\] has shape \(3, 2\), not \(2, 3\) \(the features of 'b'",
    ),
    "a lambda too many": (
        lambda n, lam, e: (n, _replaced(lam, "b", np.ones(3)), e),
        r"edges\[\('a', 'b'\)\] has shape \(2, 3\), not \(3, 3\)",
    ),
    "1-D edges": (
        lambda n, lam, e: (n, lam, _replaced(e, ("a", "b"), np.ones(6))),
        r"edges\[\('a', 'b'\)\] must be 2-D; got shape \(6,\)",
    ),
    "2-D lambdas": (
        lambda n, lam, e: (n, _replaced(lam, "a", np.ones((3, 1))), e),
        r"lambdas\['a'\] must be 1-D; got shape \(3, 1\)",
    ),
    "ragged edges": (
        lambda n, lam, e: (n, lam, _replaced(e, ("a", "b"), [[1.0, 2.0], [1.0]])),
        r"edges\[\('a', 'b'\)\] is not an array",
    ),
    "a node without lambdas": (
        lambda n, lam, e: (n, _without(lam, "b"), e),
        r"lambdas must have exactly the keys \['a', 'b', 'output'\]: missing \['b'\]",
    ),
    "a lambda of no node": (
        lambda n, lam, e: (n, _replaced(lam, "c", np.ones(2)), e),
        r"lambdas must have .*: missing \[\], unexpected \['c'\]",
    ),
    "a section without edges": (
        lambda n, lam, e: (n, lam, _without(e, ("b", "output"))),
        r"edges must have exactly the keys .*: missing \[\('b', 'output'\)\]",
    ),
    "edges of no section": (
        lambda n, lam, e: (n, lam, _replaced(e, ("a", "output"), np.ones((3, 3)))),
        r"edges must have .*unexpected \[\('a', 'output'\)\]",
    ),
    "repeated nodes": (
        lambda n, lam, e: (["a", "b", "a"], lam, e),
        r"nodes must be distinct; got \['a', 'b', 'a'\]",
    ),
    "no nodes": (lambda n, lam, e: ([], lam, e), r"nodes must be a non-empty list of str"),
    "a node that is no str": (
        lambda n, lam, e: (["a", 1, "output"], lam, e),
        r"nodes must be a non-empty list of str; got \['a', 1, 'output'\]",
    ),
}


@pytest.mark.parametrize("spoil, match", SHAPE_ERRORS.values(), ids=SHAPE_ERRORS)
def test_arrays_must_fit_the_nodes(spoil, match):
    with pytest.raises(ValueError, match=match):
        InteractionGraph(*spoil(*parts()))


TYPE_ERRORS = {
    "nodes as a str": (lambda n, lam, e: ("ab", lam, e), "nodes must be a list of str; got str"),
    "lambdas as a list": (
        lambda n, lam, e: (n, list(lam.values()), e),
        "lambdas must be a dict; got list",
    ),
    "edges as None": (lambda n, lam, e: (n, lam, None), "edges must be a dict; got NoneType"),
    "str edges": (
        lambda n, lam, e: (n, lam, _replaced(e, ("a", "b"), np.full((2, 3), "1"))),
        r"edges\[\('a', 'b'\)\] must be an array of real numbers; got dtype <U1",
    ),
    "bool edges": (
        lambda n, lam, e: (n, lam, _replaced(e, ("a", "b"), np.ones((2, 3), dtype=bool))),
        r"edges\[\('a', 'b'\)\] must be an array of real numbers; got dtype bool",
    ),
    "complex lambdas": (
        lambda n, lam, e: (n, _replaced(lam, "a", np.ones(3, dtype=complex)), e),
        r"lambdas\['a'\] must be an array of real numbers; got dtype complex128",
    ),
    "lambdas of None": (
        lambda n, lam, e: (n, _replaced(lam, "a", None), e),
        r"lambdas\['a'\] must be an array of real numbers; got dtype object",
    ),
}


@pytest.mark.parametrize("spoil, match", TYPE_ERRORS.values(), ids=TYPE_ERRORS)
def test_arguments_of_the_wrong_kind_are_refused(spoil, match):
    with pytest.raises(TypeError, match=match):
        InteractionGraph(*spoil(*parts()))


@pytest.mark.parametrize("info", [None, [("a", 1)], "lib"])
def test_info_must_be_a_dict(info):
    with pytest.raises(TypeError, match="info must be a dict; got"):
        InteractionGraph(*parts(), info)


def test_float_arrays_are_kept_and_integers_made_float():
    nodes, lambdas, edges = parts()
    E = np.asfortranarray(edges[("a", "b")].astype(np.float32))
    edges[("a", "b")] = E
    lambdas["output"] = [1, 1, 1]
    graph = InteractionGraph(tuple(nodes), lambdas, edges)
    assert graph.nodes == nodes and isinstance(graph.nodes, list)
    assert graph.edges[("a", "b")] is E  # dtype and memory order as given: saved as given
    assert graph.lambdas["output"].dtype == np.float64
    np.testing.assert_array_equal(graph.lambdas["output"], np.ones(3))
    assert list(graph.edges) == graph.sections and list(graph.lambdas) == graph.nodes


def test_a_graph_that_was_made_is_also_saved_and_loaded(tmp_path):
    """What the constructor takes, save writes and load reads: one set of rules."""
    nodes, lambdas, edges = parts()
    lambdas["a"] = np.array([3, 0, 1])  # integers, and a zero Lambda
    graph = InteractionGraph(nodes, lambdas, edges)
    graph.save(tmp_path / "g.npz")
    loaded = InteractionGraph.load(tmp_path / "g.npz")
    for node in nodes:
        np.testing.assert_array_equal(loaded.lambdas[node], graph.lambdas[node])


@pytest.mark.parametrize("section", [("b", "a"), ("a", "output"), "ab", ("a",), None])
def test_top_edges_refuses_a_section_the_graph_lacks(section):
    with pytest.raises(ValueError, match=r"section=.* is not one of the graph's \[\('a', 'b'\)"):
        hand_made().top_edges(section, 1)


@pytest.mark.parametrize("n, error", [(-1, ValueError), ("2", TypeError), (1.0, TypeError)])
def test_top_edges_refuses_bad_counts(n, error):
    """-1 used to mark all edges but one (a slice ``[:-1]``)."""
    with pytest.raises(error, match=r"n_edges must be (an int|>= 0); got"):
        hand_made().top_edges(("a", "b"), n)


@pytest.mark.parametrize("top, error", [(-1, ValueError), ("3", TypeError), (True, TypeError)])
def test_summary_refuses_bad_counts(top, error):
    """-1 used to list every edge but the weakest."""
    with pytest.raises(error, match=r"top must be (an int|>= 0); got"):
        hand_made().summary(top=top)


def test_counts_may_be_numpy_ints():
    graph = hand_made()
    np.testing.assert_array_equal(
        graph.top_edges(("a", "b"), np.int64(2)), graph.top_edges(("a", "b"), 2)
    )
    assert graph.summary(top=np.int32(1)) == graph.summary(top=1)


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_to_networkx_refuses_edges_spoiled_after_construction(bad):
    """They were left out as zero edges are, without a word."""
    graph = hand_made()
    graph.edges[("b", "output")][0, 0] = bad
    with pytest.raises(ValueError, match=r"edges\[\('b', 'output'\)\] holds negative, NaN"):
        graph.to_networkx()
    with pytest.raises(ValueError, match=r"edges\[\('b', 'output'\)\] holds negative, NaN"):
        graph.modules()


@pytest.mark.parametrize("bad", [np.nan, -1.0, np.inf])
def test_summary_top_edges_and_plot_refuse_edges_spoiled_after_construction(bad):
    """Issue 24's review: ``summary`` said "total nan" and ``plot`` failed inside
    matplotlib on a NaN edge set after construction."""
    graph = hand_made()
    graph.edges[("b", "output")][0, 0] = bad
    for call in (
        graph.summary,
        lambda: graph.top_edges(("b", "output"), 1),
        lambda: graph.plot(),
    ):
        with pytest.raises(ValueError, match=r"edges\[\('b', 'output'\)\] holds"):
            call()


@pytest.mark.parametrize("resolution", [np.inf, np.nan, 0.0])
def test_modules_refuses_a_resolution_that_is_not_finite_and_positive(resolution):
    with pytest.raises(ValueError, match="resolution must be positive and finite"):
        hand_made().modules(resolution=resolution)
