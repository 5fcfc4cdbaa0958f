"""The displays hold the data they draw, checked against independent computations."""

import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from toy_models import tanh_mlp  # noqa: E402

from sklearn_lib import (  # noqa: E402
    AblationCurveDisplay,
    ActivationTransformer,
    InteractionGraphDisplay,
    LIBTransformer,
    SpectrumDisplay,
    ablation_curve,
)
from sklearn_lib.plotting import plot_ablation_curves, plot_spectrum  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def fitted():
    X = np.random.default_rng(0).normal(size=(80, 4))
    model = tanh_mlp()
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
    pca = make_pipeline(ActivationTransformer(model, "fc2"), PCA()).fit(X)
    return model, X, lib, pca


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


# -- SpectrumDisplay -------------------------------------------------------------------


def test_spectrum_display_draws_lambda_next_to_pca_of_the_same_activations(fitted):
    model, X, lib, pca = fitted
    display = SpectrumDisplay.from_estimator(lib, pca)
    assert display.layer == "fc2"
    assert display.ax_.get_title() == "Spectrum of 'fc2'"
    assert display.figure_ is display.ax_.figure
    assert list(display.lines_) == ["LIB Lambda of 'fc2'", "PCA variance of 'fc2'"]
    # Independent references: Lambda as fitted, and a plain PCA of the layer's
    # activations captured by a forward hook.
    captured = []
    hook = model.fc2.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    with torch.no_grad():
        model(torch.as_tensor(X))
    hook.remove()
    variances = PCA().fit(captured[0].double().numpy()).explained_variance_
    lam = lib.bases_["fc2"].lambdas
    lines = display.lines_
    np.testing.assert_allclose(lines["LIB Lambda of 'fc2'"].get_ydata(), lam / lam.max())
    np.testing.assert_allclose(
        lines["PCA variance of 'fc2'"].get_ydata(), variances / variances.max(), rtol=1e-5
    )
    assert _legend(display.ax_) == list(lines)


def test_spectrum_display_of_a_downstream_layer_and_unnormalised(fitted):
    _, _, lib, _ = fitted
    display = SpectrumDisplay.from_estimator(lib, layer="fc3", normalize=False, name="mine")
    np.testing.assert_allclose(display.lines_["mine"].get_ydata(), lib.bases_["fc3"].lambdas)
    assert display.ax_.get_ylabel() == "eigenvalue"
    assert display.ax_.get_title() == "Spectrum of 'fc3'"


def test_the_layer_applies_to_both_estimators(fitted):
    _, X, lib, pca = fitted
    pca_lib = LIBTransformer(lib.model, "fc2", downstream_layers=["fc3"], basis="pca").fit(X)
    display = SpectrumDisplay.from_estimator(lib, pca_lib, layer="fc3")
    variances = pca_lib.bases_["fc3"].lambdas
    np.testing.assert_allclose(
        display.lines_["PCA variance of 'fc3'"].get_ydata(), variances / variances.max()
    )
    assert display.ax_.get_title() == "Spectrum of 'fc3'"
    with pytest.raises(ValueError, match="this PCA pipeline reads 'fc2'"):
        SpectrumDisplay.from_estimator(lib, pca, layer="fc3")


def test_several_spectrum_displays_share_one_axis(fitted):
    _, X, lib, pca = fitted
    first = SpectrumDisplay.from_estimator(lib)
    second = SpectrumDisplay.from_estimator(pca, ax=first.ax_)
    third = SpectrumDisplay.from_estimator(lib, layer="fc3", ax=first.ax_)
    assert second.ax_ is first.ax_ is third.ax_
    assert len(first.ax_.get_lines()) == 3
    assert _legend(first.ax_) == [
        "LIB Lambda of 'fc2'",
        "PCA variance of 'fc2'",
        "LIB Lambda of 'fc3'",
    ]
    # Layers differ now, so the title names none.
    assert first.ax_.get_title() == "Spectrum"


def test_spectrum_display_takes_a_sklearn_pca_and_arrays(fitted):
    _, X, lib, _ = fitted
    raw = PCA().fit(X)
    display = SpectrumDisplay.from_estimator(lib, raw)
    np.testing.assert_allclose(
        display.lines_["PCA variance (sklearn)"].get_ydata(),
        raw.explained_variance_ / raw.explained_variance_.max(),
    )
    drawn = SpectrumDisplay({"given": [4.0, 2.0, 1.0]}, normalize=True).plot()
    np.testing.assert_allclose(drawn.lines_["given"].get_ydata(), [1.0, 0.5, 0.25])


def test_zero_eigenvalues_are_gaps_not_points_at_the_smallest_float():
    # A PCA of ReLU activations with dead units ends in exact zeros.
    display = SpectrumDisplay({"s": [4.0, 1.0, 0.0, -1e-17]}).plot()
    y = display.lines_["s"].get_ydata()
    np.testing.assert_allclose(y[:2], [1.0, 0.25])
    assert np.isnan(y[2:]).all()
    assert display.ax_.get_ylim()[0] > 1e-3
    with pytest.raises(ValueError, match="no positive value"):
        SpectrumDisplay({"s": [0.0, 0.0]}).plot()


def test_plot_spectrum_takes_what_it_took_before(fitted):
    from sklearn.decomposition import IncrementalPCA, TruncatedSVD

    from sklearn_lib.plotting import plot_spectrum

    _, X, lib, _ = fitted
    ax = plot_spectrum(
        torch.tensor([2.0, 1.0]), IncrementalPCA().fit(X), TruncatedSVD(2).fit(X), labels=[]
    )
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "spectrum",
        "IncrementalPCA variance (sklearn)",
        "TruncatedSVD variance (sklearn)",
    ]
    with pytest.raises(ValueError, match="1 labels for 2 spectra"):
        plot_spectrum(lib, [1.0], labels=["one"])
    with pytest.raises(NotFittedError):
        plot_spectrum(PCA())


def test_a_display_keeps_the_titles_and_labels_already_on_the_axes(fitted):
    _, X, lib, pca = fitted
    ax = plt.subplots()[1]
    ax.set_title("Mine")
    SpectrumDisplay.from_estimator(lib, ax=ax, label="LIB at fc2")
    assert ax.get_title() == "Mine"
    assert _legend(ax) == ["LIB at fc2"]
    first = AblationCurveDisplay.from_curves({"a": ([1, 2], [0.5, 0.6])}, layer="fc2")
    AblationCurveDisplay.from_curves(
        {"b": ([1, 2], [0.4, 0.7])}, layer="fc3", score_name="R²", ax=first.ax_
    )
    assert first.ax_.get_title() == "Node ablation"  # two layers: named neither
    assert first.ax_.get_ylabel() == "score"  # the first display's label stays
    with pytest.raises(ValueError, match="names one line, but this display draws 2"):
        SpectrumDisplay({"a": [1.0], "b": [1.0]}).plot(label="x")


def test_spectrum_display_refuses_bad_input(fitted):
    model, _, lib, _ = fitted
    with pytest.raises(NotFittedError):
        SpectrumDisplay.from_estimator(LIBTransformer(model, "fc2"))
    with pytest.raises(ValueError, match="not a fitted node layer"):
        SpectrumDisplay.from_estimator(lib, layer="fc1")
    with pytest.raises(TypeError, match="Expected a fitted LIBTransformer"):
        SpectrumDisplay.from_estimator(object())
    with pytest.raises(ValueError, match="NaN"):
        SpectrumDisplay({"bad": [1.0, np.nan]}).plot()


# -- AblationCurveDisplay --------------------------------------------------------------


def test_ablation_display_holds_the_curve_it_draws(fitted):
    _, X, lib, pca = fitted
    width = lib.bases_["fc2"].matrix.shape[1]
    display = AblationCurveDisplay.from_estimator(lib, X, n_features=[0, 1, 2, width])
    n, scores = ablation_curve(lib, X, n_features=[0, 1, 2, width])
    line = display.lines_["LIB"]
    np.testing.assert_array_equal(line.get_xdata(), n)
    np.testing.assert_allclose(line.get_ydata(), scores)
    # Every feature kept gives the model back: R² 1.
    np.testing.assert_allclose(line.get_ydata()[-1], 1.0, atol=1e-9)
    assert display.ax_.get_ylabel() == "R² of the outputs"
    assert display.ax_.get_title() == "Node ablation of 'fc2'"
    assert display.baseline_line_ is None


def test_lib_and_pca_ablation_curves_on_one_axis(fitted):
    _, X, lib, pca = fitted
    y = np.arange(len(X)) % 3
    first = AblationCurveDisplay.from_estimator(lib, X, y, n_features=[1, 2])
    second = AblationCurveDisplay.from_estimator(
        pca, X, y, n_features=[1, 2], baseline=0.5, ax=first.ax_
    )
    assert second.ax_ is first.ax_
    assert _legend(first.ax_) == ["LIB", "PCA", "unablated"]
    assert first.ax_.get_ylabel() == "accuracy"
    np.testing.assert_allclose(
        second.lines_["PCA"].get_ydata(), ablation_curve(pca, X, y, n_features=[1, 2])[1]
    )
    np.testing.assert_allclose(second.baseline_line_.get_ydata(), [0.5, 0.5])


def test_ablation_from_curves_checks_its_curves():
    display = AblationCurveDisplay.from_curves(
        {"a": ([0, 2], [0.1, 0.9]), "b": (np.array([0, 1, 2]), [0.2, 0.4, 0.8])},
        baseline=0.95,
        score_name="test accuracy",
        layer="fc2",
    )
    np.testing.assert_allclose(display.lines_["b"].get_ydata(), [0.2, 0.4, 0.8])
    assert display.ax_.get_ylabel() == "test accuracy"
    assert display.ax_.get_title() == "Node ablation of 'fc2'"
    with pytest.raises(ValueError, match="2 feature counts but 3 scores"):
        AblationCurveDisplay.from_curves({"a": ([0, 1], [0.1, 0.2, 0.3])})
    with pytest.raises(ValueError, match="NaN"):
        AblationCurveDisplay.from_curves({"a": ([0, 1], [0.1, np.nan])})
    with pytest.raises(ValueError, match="pair"):
        AblationCurveDisplay.from_curves({"a": ([0, 1],)})
    with pytest.raises(ValueError, match="empty"):
        AblationCurveDisplay.from_curves({})
    with pytest.raises(ValueError, match="must be >= 0"):
        AblationCurveDisplay.from_curves({"a": ([-1, 1], [0.1, 0.2])})
    with pytest.raises(ValueError, match="baseline must be a finite score"):
        AblationCurveDisplay.from_curves({"a": ([0, 1], [0.1, 0.2])}, baseline=np.nan)
    # The constructor's path checks its data the same way.
    with pytest.raises(ValueError, match="NaN"):
        AblationCurveDisplay({"a": ([0, 1], [0.1, np.nan])}).plot()


def test_the_digits_demo_draws_lib_and_pca_on_one_axis(tmp_path):
    # The digits demo's MLP and split; the unablated accuracy is the model's own.
    from sklearn_lib.demo import main, train_digits_mlp

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.3, random_state=0)
    model = train_digits_mlp(X_train, y_train, epochs=150)
    with torch.no_grad():
        out = model(torch.as_tensor(X_test, dtype=torch.float32))
    accuracy = float((out.argmax(1).numpy() == y_test).mean())
    lib = LIBTransformer(model, "fc2", downstream_layers=["out"]).fit(X_train)
    pca = make_pipeline(ActivationTransformer(model, "fc2"), PCA()).fit(X_train)
    n_lib = lib.bases_["fc2"].matrix.shape[1]  # dead ReLUs leave fewer than 32
    curves = AblationCurveDisplay.from_estimator(lib, X_test, y_test, n_features=[1, 4, n_lib])
    AblationCurveDisplay.from_estimator(
        pca, X_test, y_test, n_features=[1, 4, 32], baseline=accuracy, ax=curves.ax_
    )
    lines = {line.get_label(): line.get_ydata() for line in curves.ax_.get_lines()}
    assert set(lines) == {"LIB", "PCA", "unablated"}
    # Every feature kept: both bases give the model back.
    np.testing.assert_allclose([lines["LIB"][-1], lines["PCA"][-1]], accuracy, atol=1e-12)
    spectra = SpectrumDisplay.from_estimator(lib, pca)
    assert [len(line.get_ydata()) for line in spectra.lines_.values()] == [
        lib.bases_["fc2"].lambdas.size,
        32,
    ]
    # The demo's own figure (--plot): two axes, each with LIB and PCA.
    main(["--ks", "1,4", "--plot", str(tmp_path / "demo.png")])
    assert (tmp_path / "demo.png").stat().st_size > 0
    # A k beyond both bases still gives each its curve (ending at all features).
    main(["--ks", "64", "--plot", str(tmp_path / "wide.png")])
    assert (tmp_path / "wide.png").stat().st_size > 0


def test_the_modular_addition_model_draws_lib_and_pca_on_one_axis():
    # The paper's architecture (random weights, p = 23) at its three node layers,
    # as the modular-addition example draws them.
    from sklearn_lib.datasets import make_modular_addition
    from sklearn_lib.models import ModularAdditionTransformer, accuracy

    torch.manual_seed(0)
    model = ModularAdditionTransformer(p=23, d_model=16, n_heads=2, d_head=8, d_mlp=32).double()
    X_train, X_test, y_train, y_test = make_modular_addition(p=23, frac_train=0.5)
    layers = ["blocks.0.attn", "blocks.0.mlp", "unembed"]
    fits = {
        basis: LIBTransformer(model, layers[0], downstream_layers=layers[1:], basis=basis).fit(
            X_train
        )
        for basis in ("lib", "pca")
    }
    spectra = SpectrumDisplay.from_estimator(fits["lib"], fits["pca"], layer="unembed")
    for name, basis in [("LIB Lambda", "lib"), ("PCA variance", "pca")]:
        lam = fits[basis].bases_["unembed"].lambdas
        np.testing.assert_allclose(
            spectra.lines_[f"{name} of 'unembed'"].get_ydata(), lam / lam.max()
        )
    unablated = accuracy(model, X_test, y_test)
    curves = None
    for basis, fit in fits.items():
        width = fit.bases_["unembed"].matrix.shape[1]
        curves = AblationCurveDisplay.from_estimator(
            fit,
            X_test,
            y_test,
            n_features=[1, width],
            layer="unembed",
            baseline=unablated,
            ax=None if curves is None else curves.ax_,
        )
        # All features kept: the model's own test accuracy.
        assert curves.lines_[basis.upper()].get_ydata()[-1] == pytest.approx(unablated)
    # One baseline for both displays: one dashed line.
    assert _legend(curves.ax_) == ["LIB", "unablated", "PCA"]
    assert curves.ax_.get_title() == "Node ablation of 'unembed'"


# -- InteractionGraphDisplay -----------------------------------------------------------


def test_graph_display_draws_the_strongest_edges(fitted):
    _, X, lib, _ = fitted
    graph = lib.interaction_graph(X)
    display = InteractionGraphDisplay.from_graph(graph, top_edges=4, max_features=3)
    assert display.features_shown_ == {
        node: min(3, len(graph.lambdas[node])) for node in graph.nodes
    }
    for section in graph.sections:
        src, dst = section
        E = graph.edges[section][: display.features_shown_[dst], : display.features_shown_[src]]
        i, j, share = display.edges_shown_[section]
        # Brute force: the 4 largest entries of E, as (out, in) pairs.
        expected = sorted(zip(*np.unravel_index(np.argsort(E, axis=None)[-4:], E.shape)))
        assert sorted(zip(i.tolist(), j.tolist())) == [(int(a), int(b)) for a, b in expected]
        np.testing.assert_allclose(share, E[i, j] / E.max())
        assert np.all(np.diff(share) >= 0)  # weakest first: strong edges drawn on top
    assert len(display.edge_lines_) == sum(len(v[0]) for v in display.edges_shown_.values())
    assert list(display.nodes_) == list(graph.nodes)
    assert display.colorbar_ is not None
    assert display.ax_.figure is display.figure_


def test_the_lines_and_dots_sit_where_the_data_says(fitted):
    _, X, lib, _ = fitted
    graph = lib.interaction_graph(X)
    display = InteractionGraphDisplay.from_graph(graph, top_edges=5, max_features=4)
    lines = iter(display.edge_lines_)
    for col, section in enumerate(graph.sections):  # sections left to right
        for i, j, share in zip(*display.edges_shown_[section]):
            line = next(lines)
            # From input feature j (column col) to output feature i (column col + 1).
            assert list(line.get_xdata()) == [col, col + 1]
            assert list(line.get_ydata()) == [-j, -i]
            assert line.get_linewidth() == pytest.approx(0.3 + 4 * share)
    for col, node in enumerate(graph.nodes):
        lam = graph.lambdas[node][: display.features_shown_[node]]
        dots = display.nodes_[node]
        np.testing.assert_array_equal(
            dots.get_offsets(), np.column_stack([np.full(len(lam), col), -np.arange(len(lam))])
        )
        np.testing.assert_allclose(dots.get_array(), np.log10(lam))


def test_zero_edges_are_not_drawn():
    from sklearn_lib import InteractionGraph

    E = np.zeros((3, 3))
    E[1, 2] = 5.0
    lam = np.array([3.0, 2.0, 1.0])
    graph = InteractionGraph(["a", "b"], {"a": lam, "b": lam}, {("a", "b"): E})
    display = InteractionGraphDisplay.from_graph(graph)
    i, j, share = display.edges_shown_[("a", "b")]
    assert (i.tolist(), j.tolist(), share.tolist()) == ([1], [2], [1.0])
    assert len(display.edge_lines_) == 1


def test_graph_plot_draws_through_the_display(fitted):
    _, X, lib, _ = fitted
    graph = lib.interaction_graph(X)
    ax = graph.plot(top_edges=2, max_features=2)
    drawn = [line for line in ax.get_lines() if len(line.get_xdata())]
    assert len(drawn) == 2 * len(graph.sections)


def test_graph_display_refuses_bad_input(fitted):
    _, X, lib, _ = fitted
    graph = lib.interaction_graph(X)
    with pytest.raises(ValueError, match="top_edges must be an int >= 1"):
        InteractionGraphDisplay.from_graph(graph, top_edges=0)
    with pytest.raises(ValueError, match="max_features must be an int >= 1"):
        InteractionGraphDisplay(graph, max_features=2.5).plot()
    with pytest.raises(TypeError, match="InteractionGraph"):
        InteractionGraphDisplay.from_graph(lib)


def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, sklearn_lib; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- bad arguments: a TypeError or ValueError naming the argument, before anything is drawn --

CURVE = {"a": ([0, 1], [0.1, 0.2])}

#: Displays built from data, no estimator: (call, error, message).
BAD_DATA = {
    "spectra a str": (lambda: SpectrumDisplay("abc").plot(), TypeError, r"spectra must be a dict"),
    "spectra a list": (
        lambda: SpectrumDisplay([1.0, 2.0]).plot(),
        TypeError,
        r"spectra must be a dict of name -> eigenvalues; got list",
    ),
    "spectra empty": (lambda: SpectrumDisplay({}).plot(), ValueError, r"spectra is empty"),
    "a spectrum a str": (
        lambda: SpectrumDisplay({"a": "abc"}).plot(),
        TypeError,
        r"the spectrum 'a' must be a 1-D array of numbers; got str 'abc'",
    ),
    "a spectrum of str": (
        lambda: SpectrumDisplay({"a": ["1", "2"]}).plot(),
        TypeError,
        r"the spectrum 'a' must be a 1-D array of numbers",
    ),
    "a ragged spectrum": (
        lambda: SpectrumDisplay({"a": [[1.0, 2.0], [1.0]]}).plot(),
        TypeError,
        r"the spectrum 'a' must be a 1-D array of numbers",
    ),
    "normalize a str": (
        lambda: SpectrumDisplay({"a": [1.0]}, normalize="no").plot(),
        TypeError,
        r"normalize must be True or False; got str 'no'",
    ),
    "spectrum layer an int": (
        lambda: SpectrumDisplay({"a": [1.0]}, layer=3).plot(),
        TypeError,
        r"layer must be a str or None; got int 3",
    ),
    "spectrum ax a str": (
        lambda: SpectrumDisplay({"a": [1.0]}).plot(ax="ax"),
        TypeError,
        r"ax must be a matplotlib Axes or None; got str",
    ),
    "spectrum unknown keyword": (
        lambda: SpectrumDisplay({"a": [1.0]}).plot(colour="red"),
        TypeError,
        r"keyword arguments for the lines: .*unexpected keyword argument 'colour'",
    ),
    "spectrum bad marker": (
        lambda: SpectrumDisplay({"a": [1.0]}).plot(marker="no such marker"),
        ValueError,
        r"keyword arguments for the lines: .*marker",
    ),
    "no spectrum": (lambda: plot_spectrum(), ValueError, r"no spectrum to draw"),
    "labels a str": (
        lambda: plot_spectrum([1.0], labels="a"),
        TypeError,
        r"labels must be a list of str, one per spectrum; got str 'a'",
    ),
    "curves a str": (
        lambda: AblationCurveDisplay("abc").plot(),
        TypeError,
        r"curves must be a dict of name -> \(n_features, scores\); got str 'abc'",
    ),
    "curves empty": (lambda: AblationCurveDisplay({}).plot(), ValueError, r"curves is empty"),
    "from_curves a list": (
        lambda: AblationCurveDisplay.from_curves([([0, 1], [0.1, 0.2])]),
        TypeError,
        r"curves must be a dict of name -> \(n_features, scores\); got list",
    ),
    "from_curves None": (
        lambda: AblationCurveDisplay.from_curves(None),
        TypeError,
        r"curves must be a dict .*; got NoneType None",
    ),
    "a curve an int": (
        lambda: AblationCurveDisplay.from_curves({"a": 3}),
        TypeError,
        r"curve 'a' must be a pair \(n_features, scores\); got int 3",
    ),
    "a curve a str": (
        lambda: AblationCurveDisplay({"a": "ab"}).plot(),
        TypeError,
        r"curve 'a' must be a pair \(n_features, scores\); got str 'ab'",
    ),
    "counts a str": (
        lambda: AblationCurveDisplay.from_curves({"a": ("ab", [0.1, 0.2])}),
        TypeError,
        r"n_features of 'a' must be a 1-D array of numbers; got str 'ab'",
    ),
    "scores of None": (
        lambda: AblationCurveDisplay.from_curves({"a": ([0, 1], [None, 0.2])}),
        TypeError,
        r"scores of 'a' must be a 1-D array of numbers",
    ),
    "fractional counts": (
        lambda: AblationCurveDisplay.from_curves({"a": ([0, 1.5], [0.1, 0.2])}),
        ValueError,
        r"curve 'a': feature counts must be whole numbers",
    ),
    "baseline a str": (
        lambda: AblationCurveDisplay(CURVE, baseline="0.9").plot(),
        TypeError,
        r"baseline must be a number \(the unablated score\) or None; got str '0.9'",
    ),
    "from_curves baseline a str": (
        lambda: AblationCurveDisplay.from_curves(CURVE, baseline="0.9"),
        TypeError,
        r"baseline must be a number .*; got str '0.9'",
    ),
    "plot_ablation_curves baseline a str": (
        lambda: plot_ablation_curves(CURVE, baseline="0.9"),
        TypeError,
        r"baseline must be a number .*; got str '0.9'",
    ),
    "baseline a list": (
        lambda: AblationCurveDisplay.from_curves(CURVE, baseline=[0.9]),
        TypeError,
        r"baseline must be a number .*; got list \[0.9\]",
    ),
    "baseline a bool": (
        lambda: AblationCurveDisplay.from_curves(CURVE, baseline=True),
        TypeError,
        r"baseline must be a number .*; got bool True",
    ),
    "baseline infinite": (
        lambda: AblationCurveDisplay.from_curves(CURVE, baseline=-np.inf),
        ValueError,
        r"baseline must be a finite score; got -inf",
    ),
    "score_name an int": (
        lambda: AblationCurveDisplay.from_curves(CURVE, score_name=3),
        TypeError,
        r"score_name must be a str; got int 3",
    ),
    "ablation layer an int": (
        lambda: AblationCurveDisplay.from_curves(CURVE, layer=3),
        TypeError,
        r"layer must be a str or None; got int 3",
    ),
    "ablation ax a figure": (
        lambda: AblationCurveDisplay.from_curves(CURVE, ax=plt.figure()),
        TypeError,
        r"ax must be a matplotlib Axes or None; got Figure",
    ),
    "ablation unknown keyword": (
        lambda: AblationCurveDisplay.from_curves(CURVE, linestyl="--"),
        TypeError,
        r"keyword arguments for the lines: .*'linestyl'",
    ),
}


@pytest.mark.parametrize("call, error, match", BAD_DATA.values(), ids=BAD_DATA)
def test_displays_of_data_refuse_bad_arguments_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


#: Displays of fitted estimators: (call of the fixture's (X, lib, pca), error, message).
BAD_ESTIMATOR_ARGUMENTS = {
    "lib a str": (
        lambda X, lib, pca: SpectrumDisplay.from_estimator("lib"),
        TypeError,
        r"Expected a fitted LIBTransformer, .* as lib; got str 'lib'",
    ),
    "lib None": (
        lambda X, lib, pca: SpectrumDisplay.from_estimator(None),
        TypeError,
        r"Expected a fitted LIBTransformer, .* as lib; got NoneType",
    ),
    "pca a str": (
        lambda X, lib, pca: SpectrumDisplay.from_estimator(lib, "pca"),
        TypeError,
        r"Expected a fitted LIBTransformer, .* as pca; got str 'pca'",
    ),
    "spectrum name an int": (
        lambda X, lib, pca: SpectrumDisplay.from_estimator(lib, name=3),
        TypeError,
        r"name must be a str or None; got int 3",
    ),
    "spectrum layer a list": (
        lambda X, lib, pca: SpectrumDisplay.from_estimator(lib, pca, layer=["fc2"]),
        TypeError,
        r"layer must be a str or None; got list \['fc2'\]",
    ),
    "spectrum normalize a str": (
        lambda X, lib, pca: SpectrumDisplay.from_estimator(lib, normalize="no"),
        TypeError,
        r"normalize must be True or False; got str 'no'",
    ),
    "ablation baseline a str": (
        lambda X, lib, pca: AblationCurveDisplay.from_estimator(
            lib, X, n_features=[1], baseline="0.9"
        ),
        TypeError,
        r"baseline must be a number \(the unablated score\) or None; got str '0.9'",
    ),
    "ablation baseline NaN": (
        lambda X, lib, pca: AblationCurveDisplay.from_estimator(
            pca, X, n_features=[1], baseline=np.nan
        ),
        ValueError,
        r"baseline must be a finite score; got nan",
    ),
    "ablation name an int": (
        lambda X, lib, pca: AblationCurveDisplay.from_estimator(lib, X, n_features=[1], name=3),
        TypeError,
        r"name must be a str or None; got int 3",
    ),
    "ablation layer a list": (
        lambda X, lib, pca: AblationCurveDisplay.from_estimator(
            lib, X, n_features=[1], layer=["fc2"]
        ),
        TypeError,
        r"layer must be a str or None; got list \['fc2'\]",
    ),
    "X a str": (
        lambda X, lib, pca: AblationCurveDisplay.from_estimator(lib, "X", n_features=[1]),
        TypeError,
        r"X must be the model's inputs .*; got str 'X'",
    ),
}


@pytest.mark.parametrize(
    "call, error, match", BAD_ESTIMATOR_ARGUMENTS.values(), ids=BAD_ESTIMATOR_ARGUMENTS
)
def test_displays_of_estimators_refuse_bad_arguments_by_name(
    fitted, monkeypatch, call, error, match
):
    _, X, lib, pca = fitted

    def no_pass(*args, **kwargs):
        raise AssertionError("the ablation passes ran before the arguments were checked")

    # A bad argument of the display is found before the (costly) ablation passes.
    monkeypatch.setattr("sklearn_lib._display.ablation_curve", no_pass)
    with pytest.raises(error, match=match):
        call(X, lib, pca)


def test_nothing_is_drawn_for_bad_arguments():
    _, ax = plt.subplots()
    for call in (
        lambda: AblationCurveDisplay.from_curves(CURVE, baseline="0.9", ax=ax),
        lambda: AblationCurveDisplay.from_curves(CURVE, ax=ax, colour="red"),
        lambda: SpectrumDisplay({"a": [1.0]}).plot(ax=ax, colour="red"),
    ):
        with pytest.raises(TypeError):
            call()
    assert len(ax.get_lines()) == 0
    assert ax.get_yscale() == ax.get_xscale() == "linear"


@pytest.mark.parametrize(
    "baseline", [0.5, 1, np.float32(0.5), np.array(0.5), torch.tensor(0.5)], ids=repr
)
def test_a_baseline_may_be_any_number(baseline):
    display = AblationCurveDisplay.from_curves(
        {"a": (np.array([0.0, 2.0]), np.array([0.1, 0.5], dtype=np.float32))}, baseline=baseline
    )
    np.testing.assert_array_equal(display.baseline_line_.get_ydata(), [float(baseline)] * 2)


def test_integer_spectra_and_numpy_bools_are_taken():
    display = SpectrumDisplay({"a": np.array([4, 2, 1])}, normalize=np.bool_(False)).plot()
    np.testing.assert_array_equal(display.lines_["a"].get_ydata(), [4.0, 2.0, 1.0])
