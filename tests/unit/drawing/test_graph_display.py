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
    # Distinct Lambdas: the first features, which the strongest edge, (1, 1), joins.
    for node in graph.nodes:
        np.testing.assert_array_equal(display.features_drawn_[node], [0, 1])
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


# -- A language model's output: every Lambda 1, so the edges choose the tokens drawn ----


class DecodingTokenizer:
    """Hugging Face's ``decode``: token ids to text (here ``' tok<id>'``)."""

    def decode(self, ids):
        return "".join(f" tok{i}" for i in ids)


class TokenizerWithoutDecode:
    """Only Hugging Face's ``convert_ids_to_tokens``, one id to a token."""

    def convert_ids_to_tokens(self, i):
        return f"Gtok{i}"


def language_model(rng):
    """emb (5 features) -> ln (6) -> output (40 tokens, Lambda 1 each).

    Small noise everywhere; output 33 has the strongest edge (from ln feature 4)
    and 17 the second largest total (many medium edges); in the first section the
    strongest edge is from emb 4 to ln 5, the last features by Lambda.
    """
    E_in = rng.uniform(0, 0.1, size=(6, 5))
    E_in[5, 4] = 3.0
    E_out = rng.uniform(0, 0.1, size=(40, 6))
    E_out[33, 4] = 5.0
    E_out[17] += 0.7
    lambdas = {
        "emb": np.array([5.0, 4.0, 3.0, 2.0, 1.0]),
        "ln": np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
        "output": np.ones(40),
    }
    edges = {("emb", "ln"): E_in, ("ln", "output"): E_out}
    return InteractionGraph(["emb", "ln", "output"], lambdas, edges)


def brute_force_drawn(graph, max_features):
    """Per node, the features to draw, by plain loops: the best by ``(-Lambda, -total edge
    strength, index)``, with the features of every section's strongest nonzero edge (the
    first ``(-value, row, column)`` triple) in place of the last of them; by index."""
    strength = {n: [0.0] * len(graph.lambdas[n]) for n in graph.nodes}
    pinned = {n: [] for n in graph.nodes}
    for (src, dst), E in graph.edges.items():
        for i in range(E.shape[0]):
            for j in range(E.shape[1]):
                strength[dst][i] += E[i, j]
                strength[src][j] += E[i, j]
        value, i, j = min((-E[i, j], i, j) for i in range(E.shape[0]) for j in range(E.shape[1]))
        if -value > 0:
            pinned[dst].append(i)
            pinned[src].append(j)
    drawn = {}
    for n in graph.nodes:
        lam = graph.lambdas[n]
        ranked = sorted(range(len(lam)), key=lambda f: (-lam[f], -strength[n][f], f))
        must = sorted(set(pinned[n]), key=ranked.index)
        best = [f for f in ranked if f not in must][: max_features - len(must)]
        drawn[n] = sorted(best + must)
    return drawn


def dot_texts(display):
    """``{(column, y): text}`` of the labels next to the dots."""
    return {tuple(np.round(t.xy, 9)): t.get_text() for t in display.ax_.texts}


def test_the_output_column_shows_the_tokens_with_the_strongest_edges(rng):
    graph = language_model(rng)
    display = InteractionGraphDisplay.from_graph(graph, max_features=16)
    drawn = display.features_drawn_["output"]
    assert 33 in drawn and 17 in drawn
    assert not np.array_equal(drawn, np.arange(16))
    # The 16 largest row sums of the last section, by plain loops, in index order.
    E = graph.edges[("ln", "output")]
    totals = [sum(E[i]) for i in range(40)]
    expected = sorted(sorted(range(40), key=lambda i: (-totals[i], i))[:16])
    np.testing.assert_array_equal(drawn, expected)
    assert display.features_shown_ == {"emb": 5, "ln": 6, "output": 16}
    for node, features in brute_force_drawn(graph, 16).items():
        np.testing.assert_array_equal(display.features_drawn_[node], features)
    labels = [t.get_text() for t in display.ax_.get_xticklabels()]
    assert labels == ["emb", "ln", "output\n(top 16 of 40 by edge strength)"]


@pytest.mark.parametrize("max_features", [2, 3, 16])
@pytest.mark.parametrize("top_edges", [1, 3, 200])
def test_the_strongest_edge_of_every_section_in_summary_is_drawn(rng, max_features, top_edges):
    graph = language_model(rng)
    display = InteractionGraphDisplay.from_graph(
        graph, max_features=max_features, top_edges=top_edges
    )
    for node, features in brute_force_drawn(graph, max_features).items():
        np.testing.assert_array_equal(display.features_drawn_[node], features)
    lines = graph.summary(top=1).splitlines()
    for section, line in zip(graph.sections, lines[-3::2]):
        # "    ln[4] -> output[33]: 5"
        src, dst = (part.split("[") for part in line.split(":")[0].strip().split(" -> "))
        j, i = int(src[1].rstrip("]")), int(dst[1].rstrip("]"))
        drawn = list(zip(*display.edges_shown_[section][:2]))
        assert (i, j) in drawn and drawn[-1] == (i, j)  # the strongest, drawn last (on top)
    assert (33, 4) in zip(*display.edges_shown_[("ln", "output")][:2])
    assert (5, 4) in zip(*display.edges_shown_[("emb", "ln")][:2])


def test_a_column_cut_short_says_which_features_join_for_a_strongest_edge(rng):
    graph = language_model(rng)
    display = InteractionGraphDisplay.from_graph(graph, max_features=3)
    # emb 4 and ln 5 (the first section's strongest edge) and ln 4 (the second's) join.
    np.testing.assert_array_equal(display.features_drawn_["emb"], [0, 1, 4])
    np.testing.assert_array_equal(display.features_drawn_["ln"], [0, 4, 5])
    labels = [t.get_text() for t in display.ax_.get_xticklabels()]
    assert labels == [
        "emb\n(top 2 of 5\n+ 1 on strongest edges)",
        "ln\n(top 1 of 6\n+ 2 on strongest edges)",
        "output\n(top 3 of 40 by edge strength)",
    ]


def test_a_strong_single_edge_is_drawn_where_its_token_is_not_among_the_top_totals():
    # 16 outputs with totals of 1.5 from edges of 0.5; output 5 has the strongest edge, 1.0.
    E = np.zeros((40, 3))
    E[20:36] = 0.5
    E[5, 2] = 1.0
    lambdas = {"h": np.array([3.0, 2.0, 1.0]), "output": np.ones(40)}
    graph = InteractionGraph(["h", "output"], lambdas, {("h", "output"): E})
    display = InteractionGraphDisplay.from_graph(graph, max_features=16)
    # The best 15 totals (ties by index), and output 5 for the strongest edge.
    np.testing.assert_array_equal(display.features_drawn_["output"], [5, *range(20, 35)])
    assert graph.summary(top=1).splitlines()[-1] == "    h[2] -> output[5]: 1"
    assert (5, 2) in zip(*display.edges_shown_[("h", "output")][:2])
    labels = [t.get_text() for t in display.ax_.get_xticklabels()]
    assert labels[-1] == "output\n(top 15 of 40 by edge strength\n+ 1 on strongest edges)"


def test_dots_carry_their_feature_index_and_edges_join_the_right_dots(rng):
    graph = language_model(rng)
    display = InteractionGraphDisplay.from_graph(graph, max_features=16, top_edges=30)
    texts = dot_texts(display)
    for col, node in enumerate(graph.nodes):
        drawn = display.features_drawn_[node]
        offsets = display.nodes_[node].get_offsets()
        np.testing.assert_array_equal(offsets[:, 1], -np.arange(len(drawn)))
        np.testing.assert_allclose(
            display.nodes_[node].get_array(), np.log10(graph.lambdas[node][drawn])
        )
        assert [texts[(col, y)] for y in offsets[:, 1]] == [str(f) for f in drawn]
    lines = iter(display.edge_lines_)
    for col, section in enumerate(graph.sections):
        for i, j, share in zip(*display.edges_shown_[section]):
            line = next(lines)
            assert line.get_xdata().tolist() == [col, col + 1]
            y_src, y_dst = line.get_ydata()
            # Each end sits on the dot labelled with its feature.
            assert texts[(col, y_src)] == str(j) and texts[(col + 1, y_dst)] == str(i)
            E, (src, dst) = graph.edges[section], section
            largest = max(
                E[a, b] for a in display.features_drawn_[dst] for b in display.features_drawn_[src]
            )
            assert share == pytest.approx(E[i, j] / largest)
    assert next(lines, None) is None


@pytest.mark.parametrize(
    "labels, text",
    [
        ([f"w{i}" for i in range(40)], "'w{}'"),
        (tuple(f"w{i}" for i in range(45)), "'w{}'"),  # longer than the output: fine
        (np.array([f"w{i}" for i in range(40)]), "'w{}'"),
        (DecodingTokenizer(), "' tok{}'"),
        (TokenizerWithoutDecode(), "'Gtok{}'"),
        ({"output": DecodingTokenizer()}, "' tok{}'"),
    ],
)
def test_labels_name_the_output_tokens(rng, labels, text):
    graph = language_model(rng)
    display = InteractionGraphDisplay.from_graph(graph, max_features=16, labels=labels)
    texts = dot_texts(display)
    drawn = display.features_drawn_["output"]
    assert [texts[(2, -k)] for k in range(len(drawn))] == [f"{f} " + text.format(f) for f in drawn]
    assert "33 " + text.format(33) in texts.values()
    # Only the output is labelled.
    assert [texts[(1, -k)] for k in range(6)] == [str(f) for f in range(6)]


def test_a_dict_labels_any_node_and_the_graph_plot_takes_labels(rng):
    graph = language_model(rng)
    labels = {"ln": ["a", "b", "c", "d", "e", "f"], "output": DecodingTokenizer()}
    ax = graph.plot(max_features=16, labels=labels)
    texts = {t.get_text() for t in ax.texts}
    assert {"0 'a'", "5 'f'", "33 ' tok33'", "17 ' tok17'"} <= texts
    assert {"0", "4"} <= texts  # emb unlabelled


def test_labels_are_checked(rng):
    graph = language_model(rng)
    with pytest.raises(ValueError, match="labels for 'output' have 39 entries, fewer than its 40"):
        InteractionGraphDisplay.from_graph(graph, labels=[f"w{i}" for i in range(39)])
    with pytest.raises(ValueError, match="labels for 'ln' have 5 entries, fewer than its 6"):
        InteractionGraphDisplay.from_graph(graph, labels={"ln": list("abcde")})
    accepted = "a tokenizer .*decode or convert_ids_to_tokens.*sequence of str"
    for bad in (object(), list(range(40)), "the", b"the", 3):
        with pytest.raises(TypeError, match=accepted):
            InteractionGraphDisplay.from_graph(graph, labels=bad)
    with pytest.raises(ValueError, match=r"labels name no node of the graph: \['out'\]"):
        InteractionGraphDisplay.from_graph(graph, labels={"out": DecodingTokenizer()})
    # Not token ids: a fitted basis (Lambdas not all 1), as an output with output_basis="pca".
    with pytest.raises(ValueError, match="node 'ln' has Lambdas from 1 to 6, so its features are"):
        InteractionGraphDisplay.from_graph(graph, labels={"ln": DecodingTokenizer()})
    graph.lambdas["output"] = np.linspace(2.0, 0.0, 40)
    with pytest.raises(ValueError, match="a tokenizer labels token ids, the features of the"):
        InteractionGraphDisplay.from_graph(graph, labels=DecodingTokenizer())
    # A tokenizer's vocabulary is wider than an encoder's hidden state (Lambda 1 too).
    graph.lambdas["output"] = np.ones(40)

    class SizedTokenizer(DecodingTokenizer):
        def __len__(self):
            return 50

    with pytest.raises(ValueError, match="a tokenizer of 50 tokens .* 'output' has 40 features"):
        InteractionGraphDisplay.from_graph(graph, labels=SizedTokenizer())
    graph.lambdas["output"] = np.linspace(2.0, 0.0, 40)
    # Names of the principal directions are the caller's to give.
    display = InteractionGraphDisplay.from_graph(graph, labels=[f"pc{i}" for i in range(40)])
    assert "0 'pc0'" in {t.get_text() for t in display.ax_.texts}


# -- bad arguments: named, before anything is drawn ------------------------------------


@pytest.mark.parametrize(
    "cmap, error, match",
    [
        ("no such map", ValueError, r"cmap='no such map' is not a matplotlib colormap"),
        (3, TypeError, r"cmap must be a str or a matplotlib Colormap; got int"),
        (["viridis"], TypeError, r"cmap must be a str or a matplotlib Colormap; got list"),
    ],
)
def test_a_bad_cmap_is_refused_before_anything_is_drawn(rng, cmap, error, match):
    _, ax = plt.subplots()
    with pytest.raises(error, match=match):
        InteractionGraphDisplay.from_graph(hand_made(rng), ax=ax, cmap=cmap)
    with pytest.raises(error, match=match):
        hand_made(rng).plot(ax=ax, cmap=cmap)
    assert len(ax.get_lines()) == len(ax.collections) == 0


@pytest.mark.parametrize("ax", ["ax", 0, [None]])
def test_axes_must_be_axes(rng, ax):
    with pytest.raises(TypeError, match=r"ax must be a matplotlib Axes or None; got"):
        InteractionGraphDisplay.from_graph(hand_made(rng), ax=ax)


def test_a_colormap_object_and_reversed_names_are_taken(rng):
    display = InteractionGraphDisplay.from_graph(hand_made(rng), cmap=matplotlib.colormaps["magma"])
    assert display.nodes_["a"].get_cmap().name == "magma"
    display = InteractionGraphDisplay.from_graph(hand_made(rng), cmap="viridis_r")
    assert display.nodes_["a"].get_cmap().name == "viridis_r"
