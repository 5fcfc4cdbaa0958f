"""The model session (``_session``): a private copy of the model, and the one loop over the data."""

import threading

import numpy as np
import pytest
import torch
from torch import nn
from toy_models import tanh_mlp

from sklearn_lib._fitting.stats import MomentAccumulator
from sklearn_lib._model.fingerprint import changed_parts, fingerprint
from sklearn_lib._model.session import ModelSession, private_copy
from sklearn_lib._model.sources import ArraySource


class Counter(nn.Module):
    """Adds its call count to its input: a forward that updates buffers in place."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("running", torch.zeros(4))

    def forward(self, x):
        self.calls += 1
        self.running.mul_(0.5).add_(x.detach().mean(0).to(self.running.dtype))
        return x


def counter_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), Counter(), nn.Tanh(), nn.Linear(4, 2))


def test_the_copy_owns_its_tensors():
    model = counter_mlp().train()
    model[0].weight.requires_grad_(False)
    private = private_copy(model, torch.device("cpu"), torch.float64)
    originals = dict(model.named_parameters()) | dict(model.named_buffers())
    copies = dict(private.named_parameters()) | dict(private.named_buffers())
    assert originals.keys() == copies.keys()
    for name, tensor in copies.items():
        assert tensor.untyped_storage().data_ptr() != originals[name].untyped_storage().data_ptr()
        expected = torch.float64 if originals[name].is_floating_point() else torch.int64
        assert tensor.dtype == expected and not tensor.requires_grad
        torch.testing.assert_close(tensor, originals[name].to(expected), rtol=0, atol=0)
    assert not private.training and not any(m.training for m in private.modules())
    assert model.training and next(model.parameters()).dtype == torch.float32


def test_tied_weights_stay_tied():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.unembed = nn.Linear(3, 5, bias=False)
            self.unembed.weight = self.embed.weight

        def forward(self, tokens):
            return self.unembed(self.embed(tokens))

    private = private_copy(Tied(), torch.device("cpu"), torch.float64)
    assert private.unembed.weight is private.embed.weight


def test_buffer_updates_stay_in_the_copy(rng):
    model = counter_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    session = ModelSession(model)
    x = session.inputs(rng.normal(size=(8, 4)))
    session.run(x)
    session.run(x)
    assert int(session.model[1].calls) == 2
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_the_users_module_never_runs(rng):
    """Every forward pass runs the copy; the user's hooks come along as part of the model."""
    ran, seen = [], []

    class Spy(nn.Module):
        def forward(self, x):
            ran.append(self)
            return x

    model = nn.Sequential(nn.Linear(4, 4), Spy(), nn.Linear(4, 2))
    handle = model[2].register_forward_pre_hook(lambda module, args: seen.append(module))
    try:
        session = ModelSession(model)
        session.read(session.inputs(rng.normal(size=(3, 4))), ["2"])
    finally:
        handle.remove()
    assert ran and all(module is session.model[1] for module in ran)
    assert seen == [session.model[2]]
    assert model[1] not in ran and model[2] not in seen


def test_a_model_that_cannot_be_copied_is_named():
    model = tanh_mlp()
    model.lock = threading.Lock()  # no deepcopy for locks
    with pytest.raises(TypeError, match="copy.deepcopy failed on Sequential.*lock"):
        ModelSession(model)


def test_a_parametrized_model_is_copied_with_its_parametrization(rng):
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, weight):
            return 2 * weight

    model = tanh_mlp()
    parametrize.register_parametrization(model.fc2, "weight", Double())
    session = ModelSession(model)
    x = rng.normal(size=(5, 4))
    (_, out) = session.run(session.inputs(x))
    with torch.no_grad():
        torch.testing.assert_close(out, model(torch.as_tensor(x)))
    assert "fc2.parametrizations.weight.original" in session.params


class Rows:
    """Accumulator that records the batches and one layer's activations it sees."""

    def __init__(self, name):
        self.reads = (name,)
        self.seen = []

    def update(self, batch, acts):
        self.seen.append((batch.start, batch.stop, acts[self.reads[0]].clone()))

    def result(self):
        return self.seen


def test_one_pass_feeds_every_accumulator_from_one_forward_pass(rng):
    model = tanh_mlp()
    calls = []
    model.fc1.register_forward_pre_hook(lambda module, args: calls.append(1))
    X = rng.normal(size=(25, 4))
    session = ModelSession(model)
    fc2, fc3 = Rows("fc2"), Rows("fc3")
    moments = MomentAccumulator("output", 3, session.device)
    seen2, seen3, stats = session.run_pass(ArraySource(X, 10), [fc2, fc3, moments], "test")
    assert len(calls) == 3  # one forward pass per batch for all three accumulators
    assert [(a, b) for a, b, _ in seen2] == [(0, 10), (10, 20), (20, 25)]
    with torch.no_grad():
        h = torch.tanh(model.fc1(torch.as_tensor(X)))
        out = model(torch.as_tensor(X))
    torch.testing.assert_close(torch.cat([f for *_, f in seen2]), h)
    torch.testing.assert_close(torch.cat([f for *_, f in seen3]), torch.tanh(model.fc2(h)))
    np.testing.assert_allclose(stats.mean.numpy(), out.mean(0).numpy(), rtol=1e-12)


def test_nan_activations_are_named_in_the_pass(rng):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].bias[1] = float("inf")
    session = ModelSession(model)
    with pytest.raises(ValueError, match=r"activations of layer '1' contain NaN or inf"):
        session.run_pass(ArraySource(rng.normal(size=(5, 4)), 5), [Rows("1")], "test")


def test_the_generator_is_seeded_from_random_state():
    draws = [
        torch.randint(0, 10, (5,), generator=ModelSession(tanh_mlp(), random_state=3).generator)
        for _ in range(2)
    ]
    torch.testing.assert_close(draws[0], draws[1])


def test_tensors_held_as_attributes_are_copied_too(rng):
    """torch.nn.utils.weight_norm keeps its recomputed weight as a plain attribute."""
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm is deprecated
        model[0] = torch.nn.utils.weight_norm(model[0])
    x = rng.normal(size=(6, 4))
    with torch.no_grad():
        expected = model(torch.as_tensor(x, dtype=torch.float32)).double()
    session = ModelSession(model)
    _, out = session.run(session.inputs(x))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert session.model[0].weight.dtype == torch.float64
    assert model[0].weight.dtype == torch.float32


def test_tied_parameters_are_named_under_every_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    params = ModelSession(model).params
    assert params["0.weight"] is params["1.weight"]


def test_the_fingerprint_is_of_the_users_model_in_its_own_dtype():
    """Taken of the user's tensors as they are, not of the copy in the compute dtype:
    the same for every dtype and device a call computes in, and exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.BatchNorm1d(20), nn.Linear(20, 3))
    float64 = ModelSession(model, dtype=torch.float64).fingerprint
    assert float64 == ModelSession(model, dtype=torch.float32).fingerprint
    assert float64 == fingerprint(model)
    with torch.no_grad():
        model[0].weight.view(torch.int32)[3, 7] ^= 1  # one bit, below float32's rounding
    assert changed_parts(float64, ModelSession(model).fingerprint) == ["0.weight"]


def test_progress_counts_the_samples_of_a_dict_batch_not_its_keys(monkeypatch):
    """A batch of inputs as a dict (Hugging Face's, once checked) of 128 sequences is 128
    samples: ``len`` of it counts its 2 keys (progress said 16 samples for 8 batches)."""
    X = {"input_ids": torch.zeros(300, 9), "attention_mask": torch.ones(300, 9)}
    session = ModelSession(tanh_mlp())
    counted = []

    def samples(batches, n_samples, what, size=len):
        for item in batches:
            counted.append(size(item))
            yield item

    monkeypatch.setattr(session.progress, "samples", samples)
    batches = list(session.batches(ArraySource(X, 128), "a pass"))
    assert counted == [128, 128, 44] and len(batches) == 3
