"""The user's model is never touched, even while passes run, and fits run in eval mode."""

import copy
import threading

import numpy as np
import pytest
import torch
from _refs import activations_of
from torch import nn
from toy_models import stateful_mlp, tanh_mlp

from sklearn_lib import (
    ActivationTransformer,
    LIBTransformer,
    ablation_curve,
    edge_ablation_curve,
)


def _snapshot(model):
    return {
        # Object for object: the same Parameter and buffer objects on the same storage.
        "objects": [
            (name, id(t), t.untyped_storage().data_ptr())
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        ],
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
    assert before["objects"] == after["objects"]
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


class Counter(nn.Module):
    """A forward that updates buffers: a call counter and a running mean of its input."""

    def __init__(self, d):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("running", torch.zeros(d))

    def forward(self, x):
        self.calls += 1
        self.running.mul_(0.9).add_(0.1 * x.detach().mean(0))
        return x


def counting_mlp(dtype):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 8))
    model.add_module("count", Counter(8))
    model.add_module("act", nn.Tanh())
    model.add_module("fc2", nn.Linear(8, 3))
    return model.to(dtype)


@pytest.mark.parametrize("model_dtype", ["float64", "float32", "bfloat16"])
def test_buffer_updates_never_reach_the_users_buffers(rng, model_dtype):
    """The model's own dtype too, where no conversion would have made a copy."""
    model = counting_mlp(getattr(torch, model_dtype))
    dtype = "float32" if model_dtype == "bfloat16" else model_dtype
    X = rng.normal(size=(64, 4)).astype(dtype)
    y = rng.integers(0, 3, size=64)
    before = _snapshot(model)
    lib = LIBTransformer(model, "act", downstream_layers=["fc2"], dtype=dtype).fit(X)
    lib.transform(X)
    lib.score(X, y)
    graph = lib.interaction_graph(X)
    ablation_curve(lib, X, y, n_features=[1, 2])
    edge_ablation_curve(lib, graph, X, y, section=("act", "fc2"), n_edges=[3])
    ActivationTransformer(model, "act", dtype=dtype).fit_transform(X)
    _assert_same(before, _snapshot(model))
    assert int(model.count.calls) == 0


def _threads(target, n):
    errors = []

    def run():
        try:
            target()
        except Exception as exc:  # surfaced in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(n)]
    for worker in workers:
        worker.start()
    return workers, errors


def test_four_threads_transforming_with_one_estimator(rng):
    model = tanh_mlp().float()  # float32, run in float64: every pass converts
    X = rng.normal(size=(300, 4))
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"], batch_size=16).fit(X)
    expected = lib.transform(X)
    before = _snapshot(model)
    results = []
    workers, errors = _threads(lambda: results.extend(lib.transform(X) for _ in range(5)), 4)
    for worker in workers:
        worker.join()
    assert not errors, errors
    assert len(results) == 20
    for got in results:
        np.testing.assert_array_equal(got, expected)
    _assert_same(before, _snapshot(model))


def test_a_fit_while_another_thread_runs_the_model(rng):
    model = counting_mlp(torch.float32).eval()
    x = torch.as_tensor(rng.normal(size=(32, 4)), dtype=torch.float32)
    with torch.no_grad():
        expected = model(x)
    model.count.calls.zero_()
    model.count.running.zero_()
    before = _snapshot(model)
    stop = threading.Event()
    outputs = []

    def serve():
        with torch.no_grad():
            while not stop.is_set():
                outputs.append(model(x))

    server, errors = _threads(serve, 1)
    try:
        X = rng.normal(size=(400, 4))
        fits = [
            LIBTransformer(model, "act", downstream_layers=["fc2"], batch_size=32).fit(X)
            for _ in range(3)
        ]
    finally:
        stop.set()
        server[0].join()
    assert not errors, errors
    assert outputs
    for out in outputs:  # the served model never changed while the fits ran
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(fits[0].lambdas_, fits[2].lambdas_)
    # The user's own forward passes update its buffers; the fits never did.
    assert int(model.count.calls) == len(outputs)
    before["state"]["count.calls"] = model.count.calls.clone()
    before["state"]["count.running"] = model.count.running.clone()
    _assert_same(before, _snapshot(model))
