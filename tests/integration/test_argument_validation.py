"""The public analysis functions refuse bad arguments like the estimators do.

Every refusal names the argument.  scikit-learn's ``Interval(Integral, ...)``
takes ``True`` as 1, so bools are tried wherever a count or a number goes;
NaN and inf wherever a float goes.  R² without ``y`` is undefined on one
sample and on constant outputs, and refused there.
"""

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score
from sklearn.utils._param_validation import InvalidParameterError
from torch.utils.data import DataLoader, TensorDataset
from toy_models import tanh_mlp

from sklearn_lib import (
    LIBTransformer,
    ablation_curve,
    edge_ablation_curve,
    edges_needed,
    features_needed,
    sparsest_faithful,
)
from sklearn_lib._analysis.scoring import _R2
from sklearn_lib.datasets import load_digit_images, make_modular_addition

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def fitted():
    """A small fitted LIB (fc2 -> fc3 -> output), its graph, inputs and the model's labels."""
    model = tanh_mlp(d_in=4, hidden=8, d_out=3)
    X = np.random.default_rng(0).normal(size=(40, 4))
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
    with torch.no_grad():
        y = model(torch.as_tensor(X)).argmax(1).numpy()
    return lib, lib.interaction_graph(X), X, y


# -- counts: n_features of ablation_curve, n_edges of edge_ablation_curve -------------

BAD_COUNTS = [
    pytest.param(2.5, id="float"),
    pytest.param(np.float64(2.0), id="whole-float"),
    pytest.param("3", id="str"),
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param(-1, id="negative"),
    pytest.param(NAN, id="nan"),
    pytest.param([], id="empty-list"),
    pytest.param([1.5], id="list-of-float"),
    pytest.param(np.array([2.5]), id="float-array"),
    pytest.param([True], id="list-of-bool"),
    pytest.param(["3"], id="list-of-str"),
    pytest.param([[1, 2]], id="2d-list"),
]


def _ablate_nodes(fitted, counts):
    lib, _, X, _ = fitted
    return ablation_curve(lib, X, n_features=counts)


def _ablate_edges(fitted, counts):
    lib, graph, X, _ = fitted
    return edge_ablation_curve(lib, graph, X, section=("fc2", "fc3"), n_edges=counts)


@pytest.mark.parametrize("counts", BAD_COUNTS)
@pytest.mark.parametrize(
    "curve, name", [(_ablate_nodes, "n_features"), (_ablate_edges, "n_edges")], ids=["node", "edge"]
)
def test_curves_refuse_bad_counts(fitted, curve, name, counts):
    with pytest.raises((ValueError, TypeError), match=name):
        curve(fitted, counts)


@pytest.mark.parametrize(
    "counts", [np.int64(2), [0, 2], range(3), np.array([1, 2], dtype=np.int32), (2,)]
)
@pytest.mark.parametrize("curve", [_ablate_nodes, _ablate_edges], ids=["node", "edge"])
def test_curves_take_ints_and_int_array_likes(fitted, curve, counts):
    ks, scores = curve(fitted, counts)
    np.testing.assert_array_equal(ks, np.atleast_1d(np.asarray(counts)))
    assert ks.dtype == np.int64 and scores.shape == ks.shape


# -- tolerance of edges_needed and features_needed -------------------------------------

BAD_TOLERANCES = [
    pytest.param(-1e-3, id="negative"),
    pytest.param(NAN, id="nan"),
    pytest.param(INF, id="inf"),
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param("0.1", id="str"),
    pytest.param(None, id="None"),
]


def _edges_needed(fitted, **kwargs):
    lib, graph, X, y = fitted
    return edges_needed(lib, graph, X, y, **kwargs)


def _features_needed(fitted, **kwargs):
    lib, _, X, y = fitted
    return features_needed(lib, X, y, **kwargs)


@pytest.mark.parametrize("tolerance", BAD_TOLERANCES)
@pytest.mark.parametrize("needed", [_edges_needed, _features_needed], ids=["edges", "features"])
def test_needed_refuses_bad_tolerance(fitted, needed, tolerance):
    with pytest.raises(InvalidParameterError, match="'tolerance' parameter"):
        needed(fitted, tolerance=tolerance)


@pytest.mark.parametrize("needed", [_edges_needed, _features_needed], ids=["edges", "features"])
def test_needed_takes_zero_tolerance(fitted, needed):
    result = needed(fitted, tolerance=0)
    for sparsity in result.values() if isinstance(result, dict) else [result]:
        assert sparsity.score >= sparsity.baseline


# -- section of edge_ablation_curve, sections of edges_needed ----------------------------


@pytest.mark.parametrize(
    "section, match",
    [
        pytest.param("fc2", "'section' parameter", id="bare-str"),
        pytest.param(None, "'section' parameter", id="None"),
        pytest.param(("fc2",), "pair", id="one-name"),
        pytest.param(("fc2", "fc3", "output"), "pair", id="three-names"),
        pytest.param([["fc2", "fc3"]], "pair", id="nested"),
        pytest.param(("fc2", 3), "pair", id="int-name"),
    ],
)
def test_edge_ablation_curve_refuses_bad_section(fitted, section, match):
    lib, graph, X, _ = fitted
    with pytest.raises(ValueError, match=match):
        edge_ablation_curve(lib, graph, X, section=section, n_edges=1)


def test_edge_ablation_curve_takes_a_list_pair(fitted):
    lib, graph, X, _ = fitted
    as_list = edge_ablation_curve(lib, graph, X, section=["fc3", "output"], n_edges=2)[1]
    as_tuple = edge_ablation_curve(lib, graph, X, section=("fc3", "output"), n_edges=2)[1]
    np.testing.assert_array_equal(as_list, as_tuple)


@pytest.mark.parametrize(
    "sections, match",
    [
        pytest.param("fc2", "'sections' parameter", id="bare-str"),
        pytest.param(("fc2", "fc3"), "single pair", id="bare-pair"),
        pytest.param([], "empty", id="empty-list"),
        pytest.param(["fc2fc3"], "pair", id="list-of-str"),
        pytest.param([("fc2",)], "pair", id="one-name"),
        pytest.param([("fc2", "fc3"), "ab"], "pair", id="pair-and-str"),
    ],
)
def test_edges_needed_refuses_bad_sections(fitted, sections, match):
    with pytest.raises(ValueError, match=match):
        _edges_needed(fitted, sections=sections)


def test_edges_needed_takes_a_list_of_pairs(fitted):
    result = _edges_needed(fitted, sections=[["fc3", "output"]])
    assert list(result) == [("fc3", "output")]


# -- layer, scoring and y of the node functions ------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"layer": 2}, "'layer' parameter", id="layer-int"),
        pytest.param({"layer": ("fc2",)}, "'layer' parameter", id="layer-tuple"),
        pytest.param({"layer": b"fc2"}, "'layer' parameter", id="layer-bytes"),
        pytest.param({"layer": "nope"}, "layer='nope' is not a fitted node layer", id="unknown"),
        pytest.param({"scoring": "f1"}, "'scoring' parameter", id="scoring-str"),
        pytest.param({"y": 3}, "'y' parameter", id="y-scalar"),
    ],
)
@pytest.mark.parametrize(
    "function",
    [
        lambda lib, X, **kw: ablation_curve(lib, X, n_features=1, **kw),
        lambda lib, X, **kw: features_needed(lib, X, **kw),
    ],
    ids=["ablation_curve", "features_needed"],
)
def test_node_functions_refuse_bad_layer_scoring_y(fitted, function, kwargs, match):
    lib, _, X, _ = fitted
    with pytest.raises(ValueError, match=match):
        function(lib, X, **kwargs)


# -- LIBTransformer: parameters at fit, and of interaction_graph --------------------------


@pytest.mark.parametrize(
    "params, name",
    [
        ({"n_stochastic_sources": True}, "n_stochastic_sources"),
        ({"n_stochastic_sources": False}, "n_stochastic_sources"),
        ({"n_stochastic_sources": 2.0}, "n_stochastic_sources"),
        ({"n_components": True}, "n_components"),
        ({"n_components": NAN}, "n_components"),
        ({"n_components": INF}, "n_components"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"integration": "trapezoidal", "n_intervals": True}, "n_intervals"),
        ({"n_intervals": False}, "n_intervals"),
        ({"truncation_threshold": NAN}, "truncation_threshold"),
        ({"truncation_threshold": INF}, "truncation_threshold"),
        ({"truncation_threshold": False}, "truncation_threshold"),
    ],
    ids=repr,
)
def test_fit_refuses_bools_and_non_finite_numbers(fitted, params, name):
    lib, _, X, _ = fitted
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        LIBTransformer(lib.model, "fc2", **params).fit(X)


@pytest.mark.parametrize(
    "method",
    [
        lambda lib, X: LIBTransformer(lib.model, "fc2", integration="foo").fit(X),
        lambda lib, X: lib.interaction_graph(X, integration="foo"),
    ],
    ids=["fit", "interaction_graph"],
)
def test_unknown_integration_lists_the_rules(fitted, method):
    lib, _, X, _ = fitted
    with pytest.raises(InvalidParameterError, match="'integration' parameter") as info:
        method(lib, X)
    for rule in ("gradient", "trapezoidal", "gauss-legendre"):
        assert rule in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_stochastic_sources": True},
        {"n_stochastic_sources": False},
        {"n_stochastic_sources": 0},
        {"n_stochastic_sources": 2.0},
        {"n_intervals": True},
        {"n_intervals": 2.0},
        {"n_intervals": -1},
        {"verbose": "yes"},
    ],
    ids=repr,
)
def test_interaction_graph_refuses_bad_arguments(fitted, kwargs):
    lib, _, X, _ = fitted
    (name,) = kwargs
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        lib.interaction_graph(X, **kwargs)


# -- score and R² on one sample or constant outputs ---------------------------------------


def _one_sample_stream(X):
    return DataLoader(TensorDataset(torch.as_tensor(X)), batch_size=1)


@pytest.mark.parametrize(
    "score",
    [
        lambda lib, X: lib.score(X[:1]),
        lambda lib, X: lib.score(_one_sample_stream(X[:1])),
        lambda lib, X: ablation_curve(lib, X[:1], n_features=[0, 2], scoring="r2"),
        lambda lib, X: edge_ablation_curve(
            lib, lib.interaction_graph(X), X[:1], section=("fc3", "output"), n_edges=3
        ),
    ],
    ids=["score", "score-stream", "ablation_curve", "edge_ablation_curve"],
)
def test_r2_on_one_sample_is_refused(fitted, score):
    lib, _, X, _ = fitted
    with pytest.raises(ValueError, match="needs at least 2 samples, got 1"):
        score(lib, X)


@pytest.mark.parametrize("stream", [False, True], ids=["array", "stream"])
def test_r2_on_constant_outputs_is_refused(fitted, stream):
    lib, _, X, _ = fitted
    same = np.repeat(X[:1], 5, axis=0)  # batches of 1 in a stream: the count comes at the end
    with pytest.raises(ValueError, match="do not vary over the 5 samples"):
        lib.score(_one_sample_stream(same) if stream else same)


def test_score_on_two_samples_streamed_one_by_one(fitted):
    """The count is checked once the pass is over, not per batch."""
    lib, _, X, _ = fitted
    assert lib.score(_one_sample_stream(X[:2])) == pytest.approx(lib.score(X[:2]), abs=1e-12)


def test_accuracy_and_callables_on_one_sample(fitted):
    lib, _, X, y = fitted
    assert lib.score(X[:1], y[:1]) == 1.0  # y are the model's own predictions
    assert lib.score(X[:1], (y[:1] + 1) % 3) == 0.0
    _, (n,) = ablation_curve(lib, X[:1], n_features=0, scoring=lambda ref, out: len(out))
    assert n == 1


def test_r2_with_a_large_offset_matches_r2_score():
    """Outputs that vary little against their size are not taken for constant ones."""
    rng = np.random.default_rng(0)
    original = 1e4 + 1e-3 * rng.normal(size=(50, 3))
    ablated = original + 1e-4 * rng.normal(size=(50, 3))
    r2 = _R2()
    for rows in np.array_split(np.arange(50), 3):
        r2.update(torch.as_tensor(ablated[rows]), torch.as_tensor(original[rows]), None)
    expected = r2_score(original, ablated, multioutput="variance_weighted")
    assert r2.result() == pytest.approx(expected, rel=1e-6)


# -- sparsest_faithful ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((NAN,), {}, "floor"),
        ((INF,), {}, "floor"),
        ((True,), {}, "floor"),
        (("0.9",), {}, "floor"),
        ((0.9,), {"faithfulness": 3}, "faithfulness"),
        ((0.9,), {"n_features": None}, "n_features"),
    ],
    ids=["nan", "inf", "True", "str", "faithfulness-int", "n_features-None"],
)
def test_sparsest_faithful_refuses_bad_arguments(args, kwargs, name):
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        sparsest_faithful(*args, **kwargs)


# -- datasets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"p": 1}, "p"),
        ({"p": 0}, "p"),
        ({"p": -3}, "p"),
        ({"p": 2.5}, "p"),
        ({"p": 3.0}, "p"),
        ({"p": True}, "p"),
        ({"p": "5"}, "p"),
        ({"p": None}, "p"),
        ({"frac_train": 0}, "frac_train"),
        ({"frac_train": 1.0}, "frac_train"),
        ({"frac_train": NAN}, "frac_train"),
        ({"frac_train": True}, "frac_train"),
        ({"frac_train": "0.3"}, "frac_train"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": "a"}, "seed"),
        ({"seed": 2**64}, "seed"),
    ],
    ids=repr,
)
def test_make_modular_addition_refuses_bad_arguments(kwargs, name):
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        make_modular_addition(**{"p": 5, **kwargs})


def test_make_modular_addition_refuses_an_empty_split():
    with pytest.raises(ValueError, match="frac_train=0.1 leaves an empty split of the 4 pairs"):
        make_modular_addition(p=2, frac_train=0.1)


@pytest.mark.parametrize("p", [2, np.int64(3)], ids=["2", "int64"])
def test_make_modular_addition_smallest_modulus(p):
    X_train, X_test, y_train, y_test = make_modular_addition(p=p, frac_train=0.5)
    X, y = np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test])
    assert len(X) == p * p and len(X_train) == int(p * p * 0.5)
    np.testing.assert_array_equal(y, (X[:, 0] + X[:, 1]) % p)


def test_load_digit_images_refuses_a_non_bool_scale():
    with pytest.raises(InvalidParameterError, match="'scale' parameter"):
        load_digit_images(scale="yes")
