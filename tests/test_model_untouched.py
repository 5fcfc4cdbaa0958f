"""The user's model comes back exactly as it was, and fits run in eval mode."""

import copy

import numpy as np
import pytest
import torch
from _refs import activations_of
from toy_models import stateful_mlp, tanh_mlp

from sklearn_lib import ActivationTransformer, LIBTransformer


def _snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "params": [
            (n, p.dtype, p.device, p.requires_grad, p.grad) for n, p in model.named_parameters()
        ],
        "training": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
    }


def _assert_same(before, after):
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        torch.testing.assert_close(before["state"][key], after["state"][key], rtol=0, atol=0)
        assert before["state"][key].dtype == after["state"][key].dtype
    assert before["params"] == after["params"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_model_unchanged_by_fit_transform_score(rng, dtype):
    model = stateful_mlp()  # float32, train mode, BatchNorm + Dropout, one frozen weight
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=64)
    before = _snapshot(model)
    lib = LIBTransformer(model, "fc2", dtype=dtype).fit(X)
    lib.transform(X)
    lib.score(X)
    lib.score(X, y)
    lib.inverse_transform(lib.transform(X))
    ActivationTransformer(model, "fc2", dtype=dtype).fit_transform(X)
    _assert_same(before, _snapshot(model))
    assert model.training and model.bn.training


def test_model_unchanged_after_an_error(rng):
    model = stateful_mlp()
    before = _snapshot(model)
    with pytest.raises(ValueError):
        LIBTransformer(model, "fc2", downstream_layers=["fc1"]).fit(rng.normal(size=(10, 4)))
    _assert_same(before, _snapshot(model))


def test_fit_runs_in_eval_mode(rng):
    """With Dropout active the features would be random; in eval mode they are
    the eval-mode activations exactly."""
    model = stateful_mlp()
    X = rng.normal(size=(64, 4)).astype(np.float32)
    lib = LIBTransformer(model, "fc2", basis="pca").fit(X)
    eval_model = copy.deepcopy(model).eval().double()
    acts = activations_of(eval_model, "fc2", X.astype(np.float64))
    np.testing.assert_allclose(lib.mean_, acts.mean(0), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(lib.transform(X), lib.transform(X))


def test_float64_fit_of_float32_model_is_exact(rng):
    """dtype='float64' runs a float32 model in float64 without converting it."""
    model = tanh_mlp().float()
    X = rng.normal(size=(80, 4))
    lib = LIBTransformer(model, "fc2").fit(X)
    acts64 = activations_of(copy.deepcopy(model).double(), "fc2", X)
    np.testing.assert_allclose(lib.mean_, acts64.mean(0), rtol=1e-12)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("basis", ["lib", "pca"])
@pytest.mark.parametrize("capture, layer", [("input", "act"), ("output", "fc1")])
def test_in_place_operations_do_not_corrupt_the_fit(rng, basis, capture, layer):
    """ReLU(inplace=True) overwrites fc1's output after it is read or substituted."""
    from toy_models import inplace_relu_mlp

    model = inplace_relu_mlp()
    X = rng.normal(size=(300, 4))
    lib = LIBTransformer(model, layer, capture=capture, basis=basis).fit(X)
    with torch.no_grad():
        acts = model.fc1(torch.as_tensor(X)).numpy()  # the pre-ReLU activations
    np.testing.assert_allclose(lib.mean_, acts.mean(0), rtol=1e-12, atol=1e-14)
    Z = lib.transform(X)
    np.testing.assert_allclose(Z.T @ Z / len(Z), np.diag(lib.lambdas_), atol=1e-9 * lib.lambdas_[0])
