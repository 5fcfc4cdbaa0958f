"""The plotting functions draw what they are given (Agg backend, no display)."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from toy_models import tanh_mlp  # noqa: E402

from sklearn_lib import InteractionGraphDisplay, LIBTransformer, Sparsity  # noqa: E402
from sklearn_lib.plotting import (  # noqa: E402
    plot_ablation_curves,
    plot_edges_needed,
    plot_interaction_graph,
    plot_spectrum,
)


@pytest.fixture
def lib_and_graph(rng):
    X = rng.normal(size=(60, 4))
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)
    return lib, lib.interaction_graph(X), X


def test_plot_spectrum(lib_and_graph):
    lib, _, X = lib_and_graph
    pca = PCA().fit(X)
    ax = plot_spectrum(lib, pca, [3.0, 1.0])
    lines = ax.get_lines()
    assert len(lines) == 3
    np.testing.assert_allclose(lines[0].get_ydata(), lib.bases_["fc2"].lambdas / lib.lambdas_[0])
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == [
        "LIB Lambda of 'fc2'",
        "PCA variance (sklearn)",
    ]
    assert ax.get_title() == "Spectrum of 'fc2'"  # the layer is named
    plt.close("all")


def test_plot_ablation_curves():
    ax = plot_ablation_curves(
        {"LIB": ([1, 2], [0.5, 0.9]), "PCA": ([1, 2], [0.4, 0.8])}, baseline=1
    )
    assert len(ax.get_lines()) == 3
    np.testing.assert_array_equal(ax.get_lines()[1].get_ydata(), [0.4, 0.8])
    plt.close("all")


def test_plot_edges_needed():
    results = {
        "LIB": {("a", "b"): Sparsity(3, 10, 1.0, 1.0)},
        "PCA": {("a", "b"): Sparsity(7, 10, 1.0, 1.0)},
    }
    ax = plot_edges_needed(results)
    assert [p.get_height() for p in ax.patches] == [3, 7]
    plt.close("all")


def _edges_drawn(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def test_plot_interaction_graph(lib_and_graph):
    _, graph, _ = lib_and_graph
    ax = graph.plot(top_edges=5)
    # 5 edges per section, 2 sections; one scatter per node layer.
    assert len(_edges_drawn(ax)) == 10
    assert len(ax.collections) == 3
    ax = plot_interaction_graph(graph, top_edges=1000)
    assert len(_edges_drawn(ax)) == 8 * 3 + 3 * 3
    plt.close("all")


def test_the_graph_plot_labels_its_nodes_and_explains_itself(lib_and_graph):
    _, graph, _ = lib_and_graph
    display = InteractionGraphDisplay(graph, max_features=2).plot()
    ax = display.ax_
    # Feature indices next to the dots: 2 + 2 + 2 shown.  The output's Lambdas
    # are all 1 (the identity basis): its column shows the features with the
    # strongest edges in, not the first by index.
    strongest_out = np.argsort(-graph.edges[("fc3", "output")].sum(1), kind="stable")[:2]
    np.testing.assert_array_equal(display.features_drawn_["output"], np.sort(strongest_out))
    expected = sorted(["0", "1", "0", "1", *map(str, strongest_out)])
    assert sorted(t.get_text() for t in ax.texts) == expected
    # A layer cut to its top features says so; the output (3 features) is cut too.
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "fc2\n(top 2 of 8)" and labels[2].startswith("output\n(top 2 of 3")
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "edge" and len(legend.get_texts()) == 3
    assert any(other.get_ylabel() == "log10 Lambda" for other in ax.figure.axes)  # colour bar
    plt.close("all")


def test_a_section_that_needs_no_edge_stays_on_the_axis():
    import warnings

    results = {
        "A": {("a", "b"): Sparsity(0, 10, 1.0, 1.0)},
        "B": {("a", "b"): Sparsity(0, 10, 1, 1)},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log axes warn "Data has no positive values"
        ax = plot_edges_needed(results)
        ax.figure.canvas.draw()
    assert [bar.get_height() for bar in ax.patches] == [0, 0]
    plt.close("all")


def test_plot_edges_needed_refuses_empty_results():
    with pytest.raises(ValueError, match="results is empty"):
        plot_edges_needed({})
    with pytest.raises(ValueError, match="results is empty"):
        plot_edges_needed({"LIB": {}})


def test_plot_interaction_graph_labels_the_output_tokens(lib_and_graph):
    _, graph, _ = lib_and_graph
    ax = plot_interaction_graph(graph, labels=["cat", "dog", "eel"])
    texts = {t.get_text() for t in ax.texts}
    assert {"0 'cat'", "1 'dog'", "2 'eel'"} <= texts
    plt.close("all")
