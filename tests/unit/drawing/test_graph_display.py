"""The drawing of an interaction graph (``_drawing.graph_display``) on a hand-made graph.

What is drawn is checked against a brute-force choice of the strongest
edges: ``(-value, row, column)`` triples sorted, zeros dropped.
"""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sklearn_lib._analysis.graph import InteractionGraph  # noqa: E402
from sklearn_lib._drawing.graph_display import InteractionGraphDisplay  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def hand_made(rng):
    """a (4 features) -> b (3) -> output (2); ties and zeros in the first section, the second
    all zero."""
    E = np.round(rng.uniform(0.5, 3, size=(3, 4)), 1)
    E[0, 0] = E[2, 3] = 0.0
    E[1, 1] = E[2, 2] = E.max() + 1.0  # a tie at the top
    lambdas = {
        "a": np.array([4.0, 2.0, 1.0, 0.5]),
        "b": np.array([3.0, 1.0, 0.1]),
        "output": np.ones(2),
    }
    edges = {("a", "b"): E, ("b", "output"): np.zeros((2, 3))}
    return InteractionGraph(["a", "b", "output"], lambdas, edges)


def brute_force_shown(E, top, shown_in, shown_out):
    """``(i, j, share)`` of the ``top`` strongest nonzero edges among the shown features,
    weakest first, share of the largest shown edge."""
    E = E[:shown_out, :shown_in]
    order = sorted((-E[i, j], i, j) for i in range(E.shape[0]) for j in range(E.shape[1]))
    kept = [(i, j) for value, i, j in order[:top] if -value > 0][::-1]
    i = np.array([i for i, _ in kept], dtype=int)
    j = np.array([j for _, j in kept], dtype=int)
    share = np.array([E[a, b] for a, b in kept]) / E.max() if kept else np.zeros(0)
    return i, j, share


@pytest.mark.parametrize("top_edges", [1, 2, 5, 10, 200])
def test_the_strongest_edges_are_drawn(rng, top_edges):
    graph = hand_made(rng)
    display = InteractionGraphDisplay.from_graph(graph, top_edges=top_edges)
    assert display.features_shown_ == {"a": 4, "b": 3, "output": 2}
    i, j, share = brute_force_shown(graph.edges[("a", "b")], top_edges, 4, 3)
    got = display.edges_shown_[("a", "b")]
    np.testing.assert_array_equal(got[0], i)
    np.testing.assert_array_equal(got[1], j)
    np.testing.assert_allclose(got[2], share, rtol=1e-15)
    assert len(i) == min(top_edges, 10)  # 12 edges, 2 of them zero: never drawn
    # The all-zero section draws nothing.
    assert [len(a) for a in display.edges_shown_[("b", "output")]] == [0, 0, 0]
    # One line per drawn edge, from (column, -j) to (column + 1, -i), strongest on top.
    assert len(display.edge_lines_) == len(i)
    for line, a, b, s in zip(display.edge_lines_, i, j, share):
        np.testing.assert_array_equal(line.get_xdata(), [0, 1])
        np.testing.assert_array_equal(line.get_ydata(), [-b, -a])
        assert line.get_linewidth() == pytest.approx(0.3 + 4 * s)
        assert line.get_alpha() == pytest.approx(0.3 + 0.7 * s)
    assert display.ax_.get_title() == f"Interaction graph (top {top_edges} edges per section)"


def test_every_node_layer_is_a_column_of_its_features(rng):
    graph = hand_made(rng)
    display = InteractionGraphDisplay.from_graph(graph)
    assert list(display.nodes_) == graph.nodes
    for col, node in enumerate(graph.nodes):
        offsets = display.nodes_[node].get_offsets()
        n = len(graph.lambdas[node])
        np.testing.assert_array_equal(offsets, np.column_stack([np.full(n, col), -np.arange(n)]))
        np.testing.assert_allclose(
            display.nodes_[node].get_array(), np.log10(graph.lambdas[node]), rtol=1e-12
        )
    labels = [t.get_text() for t in display.ax_.get_xticklabels()]
    assert labels == graph.nodes
    assert display.colorbar_ is not None and display.colorbar_.ax.get_ylabel() == "log10 Lambda"
    assert display.figure_ is display.ax_.figure


def test_max_features_cuts_layers_and_their_edges(rng):
    graph = hand_made(rng)
    display = InteractionGraphDisplay.from_graph(graph, top_edges=200, max_features=2)
    assert display.features_shown_ == {"a": 2, "b": 2, "output": 2}
    assert [len(c.get_offsets()) for c in display.nodes_.values()] == [2, 2, 2]
    i, j, share = brute_force_shown(graph.edges[("a", "b")], 200, 2, 2)
    got = display.edges_shown_[("a", "b")]
    np.testing.assert_array_equal(got[0], i)
    np.testing.assert_array_equal(got[1], j)
    np.testing.assert_allclose(got[2], share, rtol=1e-15)
    assert (got[0] < 2).all() and (got[1] < 2).all()
    labels = [t.get_text() for t in display.ax_.get_xticklabels()]
    assert labels == ["a\n(top 2 of 4)", "b\n(top 2 of 3)", "output"]


def test_it_draws_on_the_given_axes(rng):
    graph = hand_made(rng)
    _, ax = plt.subplots()
    figures = plt.get_fignums()
    display = InteractionGraphDisplay.from_graph(graph, ax=ax, top_edges=3)
    assert display.ax_ is ax and plt.get_fignums() == figures
    # The graph's own plot draws the same, on a new figure.
    ax2 = graph.plot(top_edges=3)
    assert ax2 is not ax
    drawn = [line for line in ax2.get_lines() if len(line.get_xdata())]
    assert len(drawn) == len(display.edge_lines_) == 3


@pytest.mark.parametrize("name", ["top_edges", "max_features"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_bad_counts_are_refused(rng, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1; got {value!r}"):
        InteractionGraphDisplay.from_graph(hand_made(rng), **{name: value})


def test_only_graphs_are_drawn():
    with pytest.raises(TypeError, match="graph must be an InteractionGraph; got dict"):
        InteractionGraphDisplay.from_graph({"nodes": []})
