"""Every documented error, with a message that names the problem."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from toy_models import LogOfInput, ResidualMLP, SharedLayer, TokenMixer, tanh_mlp

from sklearn_lib import ActivationTransformer, LIBTransformer


@pytest.fixture
def X(rng):
    return rng.normal(size=(50, 4))


def test_unknown_layer_suggests_close_names(X):
    with pytest.raises(ValueError, match=r"Unknown layer 'fc_2'.*Did you mean.*'fc2'"):
        LIBTransformer(tanh_mlp(), "fc_2").fit(X)
    with pytest.raises(ValueError, match=r"Unknown layer 'fc9'"):
        LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc9"]).fit(X)
    with pytest.raises(ValueError, match=r"Unknown layer 'nope'"):
        ActivationTransformer(tanh_mlp(), "nope").fit(X)


def test_layers_out_of_forward_order(X):
    with pytest.raises(ValueError, match=r"forward order.*\['fc3', 'fc2'\]"):
        LIBTransformer(tanh_mlp(), "fc3", downstream_layers=["fc2"]).fit(X)
    with pytest.raises(ValueError, match="distinct modules"):
        LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc2"]).fit(X)


def test_layer_that_is_not_a_cut(X):
    model = ResidualMLP()
    with pytest.raises(ValueError, match=r"Layer 'block.fc' is not a cut.*residual"):
        LIBTransformer(model, "block.fc").fit(X)
    with pytest.raises(ValueError, match=r"Layer 'block.fc' is not a cut.*layer 'out'"):
        LIBTransformer(model, "block", downstream_layers=["block.fc", "out"]).fit(X)
    # The whole residual stream is a cut.
    LIBTransformer(model, "block", downstream_layers=["out"]).fit(X)


def test_nan_activations(rng):
    X = np.abs(rng.normal(size=(20, 3)))
    X[3, 1] = -1.0  # log of a negative number
    with pytest.raises(ValueError, match=r"activations of layer 'out' contain NaN or inf"):
        LIBTransformer(LogOfInput(), "out").fit(X)
    lib = LIBTransformer(LogOfInput(), "out").fit(np.abs(X) + 0.1)
    with pytest.raises(ValueError, match="NaN or inf"):
        lib.transform(X)


def test_nan_or_inf_inputs(X):
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LIBTransformer(tanh_mlp(), "fc2").fit(X)
    X[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        LIBTransformer(tanh_mlp(), "fc2").fit(X)


def test_too_few_samples(X):
    with pytest.raises(ValueError, match=r"1 sample\(s\).*minimum of 2"):
        LIBTransformer(tanh_mlp(), "fc2").fit(X[:1])


def test_zero_variance(X):
    with pytest.raises(ValueError, match="no variance"):
        LIBTransformer(tanh_mlp(), "fc2").fit(np.repeat(X[:1], 5, axis=0))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_components": 0}, "'n_components' parameter"),
        ({"n_components": 1.5}, "'n_components' parameter"),
        ({"truncation_threshold": 1.0}, "'truncation_threshold' parameter"),
        ({"truncation_threshold": -0.1}, "'truncation_threshold' parameter"),
        ({"basis": "ica"}, "'basis' parameter"),
        ({"capture": "middle"}, "'capture' parameter"),
        ({"integration": "simpson"}, "'integration' parameter"),
        ({"n_intervals": -1}, "'n_intervals' parameter"),
        ({"integration": "trapezoidal", "n_intervals": 0}, "needs n_intervals >= 1"),
        ({"integration": "gradient", "n_intervals": 4}, "n_intervals=4 must be 0"),
        ({"output_basis": "ica"}, "'output_basis' parameter"),
        ({"batch_size": 0}, "'batch_size' parameter"),
        ({"dtype": "float16"}, "'dtype' parameter"),
        ({"dtype": torch.float16}, "dtype=torch.float16 is not supported"),
        ({"device": "tpu"}, "device='tpu' is not"),
        ({"downstream_layers": "fc3"}, "'downstream_layers' parameter"),
        ({"model": "not a model"}, "'model' parameter"),
        ({"n_components": 9}, r"n_components=9 must be at most 8"),
    ],
)
def test_parameters_out_of_range(X, params, match):
    model = params.pop("model", tanh_mlp())
    with pytest.raises(ValueError, match=match):
        LIBTransformer(model, "fc2", **params).fit(X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(X):
    with pytest.raises(ValueError, match="CUDA is not available"):
        LIBTransformer(tanh_mlp(), "fc2", device="cuda").fit(X)


def test_transform_before_fit(X):
    for method in ("transform", "score", "get_feature_names_out"):
        with pytest.raises(NotFittedError):
            getattr(LIBTransformer(tanh_mlp(), "fc2"), method)(X)
    with pytest.raises(NotFittedError):
        LIBTransformer(tanh_mlp(), "fc2").inverse_transform(X)
    with pytest.raises(NotFittedError):
        ActivationTransformer(tanh_mlp(), "fc2").transform(X)


def test_wrong_input_shape(X, rng):
    with pytest.raises(ValueError, match=r"failed on the probe batch \(inputs of shape \(17, 5\)"):
        LIBTransformer(tanh_mlp(), "fc2").fit(rng.normal(size=(50, 5)))
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but LIBTransformer is expecting 4"):
        lib.transform(X[:, :3])
    with pytest.raises(ValueError, match="Expected 2D array, got 1D"):
        lib.transform(X[0])
    with pytest.raises(ValueError, match=r"inverse_transform expects \d+"):
        lib.inverse_transform(np.ones((3, lib.n_components_ + 1)))
    with pytest.raises(ValueError, match=r"do not match the layer.*\(8,\)"):
        lib.transform_activations(np.ones((3, 7)))
    tokens = LIBTransformer(TokenMixer().double(), "mix").fit(rng.integers(0, 7, size=(30, 3)))
    with pytest.raises(ValueError, match=r"per-sample shape \(3, 1\).*\(3,\)"):
        tokens.transform(rng.integers(0, 7, size=(30, 3, 1)))


def test_integer_activations_are_not_a_node_layer(rng):
    with pytest.raises(ValueError, match=r"'embed' has activations of dtype torch.int64"):
        LIBTransformer(TokenMixer(), "embed").fit(rng.integers(0, 7, size=(30, 3)))


def test_module_called_twice(X):
    with pytest.raises(ValueError, match=r"\['shared'\] are called more than once"):
        LIBTransformer(SharedLayer(), "shared").fit(X)


def test_reserved_output_name(X):
    model = torch.nn.Sequential()
    model.add_module("hidden", torch.nn.Linear(4, 4))
    model.add_module("output", torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="may not be called 'output'"):
        LIBTransformer(model, "hidden", downstream_layers=["output"]).fit(X)


def test_output_capture_needs_a_tensor(X):
    class DictOut(torch.nn.Module):
        def forward(self, x):
            return {"hidden": x}

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), DictOut())
    with pytest.raises(ValueError, match="capture='output' needs a tensor output"):
        ActivationTransformer(model, "1", capture="output").fit(X)


def test_score_labels_checked(X):
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    with pytest.raises(ValueError, match=r"y has shape \(49,\)"):
        lib.score(X, np.zeros(49, dtype=int))
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 3\)"):
        lib.score(X, np.full(50, 3))


def test_samples_that_interact_within_a_batch(X):
    from toy_models import batch_statistics_mlp

    with pytest.raises(ValueError, match=r"Samples interact within a batch.*BatchNorm"):
        LIBTransformer(batch_statistics_mlp(), "bn").fit(X)


def test_gradients_that_are_not_finite(X):
    """sqrt at 0 behind a ReLU gives infinite gradients: a clear error, not a LAPACK one."""

    class Sqrt(torch.nn.Module):
        def forward(self, x):
            return torch.sqrt(x)

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(4, 8))
    model.add_module("act", torch.nn.ReLU())
    model.add_module("sqrt", Sqrt())
    model.add_module("fc2", torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match="Jacobian Gram M' of 'sqrt'.*NaN or infinite"):
        LIBTransformer(model.double(), "sqrt").fit(X)


def test_outputs_in_another_dtype(X):
    """A model that casts its output (to bfloat16 here) fits at float32's tolerances."""

    class Cast(torch.nn.Module):
        def forward(self, x):
            return x.to(torch.bfloat16)

    model = torch.nn.Sequential(tanh_mlp(), Cast())
    lib = LIBTransformer(model, "0.fc2").fit(X)
    assert lib.output_shape_ == (3,) and lib.n_components_ > 0


def test_a_data_frame_with_columns_that_are_not_numbers(X):
    """Named by column, at every entry point, instead of pandas' own error deep inside."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": X[:, 0], "b": ["s"] * len(X), "c": X[:, 2], "d": X[:, 3]})
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    for call in (lambda: clone(lib).fit(frame), lambda: lib.transform(frame)):
        with pytest.raises(ValueError, match=r"columns that are not numbers: 'b' \((object|str)\)"):
            call()
    numbers = pd.DataFrame(X, columns=list("abcd"))  # numeric frames pass as before
    with pytest.warns(UserWarning, match="feature names"):  # scikit-learn's own warning
        np.testing.assert_allclose(lib.transform(numbers), lib.transform(X))
