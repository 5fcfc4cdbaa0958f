"""Forward passes at node layers (``_capture``): reads, substitutions, stacked copies."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from toy_models import BatchSizeAfterCut, PositionMixer, ResidualMLP, tanh_mlp

from sklearn_lib import LIBTransformer
from sklearn_lib._model.capture import ModelRunner, node_shapes
from sklearn_lib._model.session import ModelSession


def _stacked_section(model, layer, x, copies):
    runner = ModelRunner(model.eval())
    (f,) = runner.read(x, [layer])
    scaled = torch.cat([(c + 1) / copies * f for c in range(copies)])  # copy-major
    with torch.no_grad():
        got = runner.section(x, layer, scaled)
        expected = runner.section(x.repeat(copies, *([1] * (x.ndim - 1))), layer, scaled)
    return got, expected, runner


@pytest.mark.parametrize(
    "model, layer, shape, grows",
    [
        (tanh_mlp(), "fc2", (7, 4), True),
        (PositionMixer().double(), "mix", (7, 4, 3), True),
        (BatchSizeAfterCut("reshape").double(), "mid", (7, 4), False),
        (BatchSizeAfterCut("count").double(), "mid", (7, 4), False),
    ],
)
def test_stacked_copies_match_repeated_inputs(model, layer, shape, grows):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got, expected, runner = _stacked_section(model, layer, x, copies=3)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert list(runner._grow_at_cut.values()) == [grows]


def test_lib_with_integration_where_the_batch_cannot_grow(rng):
    """Multi-point integration stacks copies; the fallback keeps results exact."""
    X = rng.normal(size=(40, 4))
    params = dict(integration="gauss-legendre", n_intervals=2)
    lib = LIBTransformer(BatchSizeAfterCut("reshape").double(), "mid", **params).fit(X)
    # Same weights, no batch-size reshape: the batch grows at the cut there.
    ref = LIBTransformer(BatchSizeAfterCut("plain").double(), "mid", **params).fit(X)
    np.testing.assert_allclose(lib.lambdas_, ref.lambdas_, rtol=1e-10)


class AssertsBatchSize(BatchSizeAfterCut):
    """Code after ``mid`` that asserts the input's batch size (a grown batch fails with an
    ``AssertionError``), or raises ``error()`` there once."""

    def __init__(self, error=None):
        super().__init__("plain")
        self.error = error

    def forward(self, x):
        h = self.mid(self.fc1(x))
        if self.error is not None:
            error, self.error = self.error, None
            raise error()
        assert h.shape[0] == x.shape[0], "one output per input"
        return self.out(h)


def test_a_batch_that_cannot_grow_in_any_way_takes_the_repeated_run():
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got, expected, runner = _stacked_section(AssertsBatchSize().double(), "mid", x, copies=3)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert list(runner._grow_at_cut.values()) == [False]


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
        lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError,
        KeyboardInterrupt,
    ],
    ids=["OutOfMemoryError", "cuda-message", "MemoryError", "KeyboardInterrupt"],
)
def test_out_of_memory_on_a_grown_batch_is_not_retried(error):
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    runner = ModelRunner(AssertsBatchSize().double().eval())
    (f,) = runner.read(x, ["mid"])
    runner.model.error = error  # raised by the first run on the grown batch
    with pytest.raises(type(error())), torch.no_grad():
        runner.section(x, "mid", torch.cat([f, 2 * f]))
    assert runner._grow_at_cut == {}  # no verdict: the next call tries again


def test_a_fault_on_half_the_probe_is_named():
    """The batch-independence check runs half the probe alone: a model failing there
    (not only one whose samples interact) is named in the error."""
    model = AssertsBatchSize().double()
    calls = []

    def fails_third(module, args):
        calls.append(1)
        if len(calls) == 3:  # inspection runs the probe twice, then its half alone
            raise RuntimeError("a fault of the user's model")

    model.fc1.register_forward_pre_hook(fails_third)
    with pytest.raises(ValueError, match=r"fails on 8 of them alone \(ValueError: .*a fault of"):
        LIBTransformer(model, "mid").fit(np.random.default_rng(0).normal(size=(17, 4)))


def test_outputs_that_depend_on_the_batch_size_are_rejected(rng):
    with pytest.raises(ValueError, match="Samples interact within a batch"):
        LIBTransformer(BatchSizeAfterCut("count").double(), "mid").fit(rng.normal(size=(40, 4)))


def test_reads_substitutions_and_early_stop(rng):
    model = tanh_mlp().eval()
    runner = ModelRunner(model)
    x = torch.as_tensor(rng.normal(size=(5, 4)))
    order = []
    (f2, f3), out = runner.run(x, reads=["fc2", "fc3"], order=order)
    assert order == ["fc2", "fc3"]
    with torch.no_grad():
        h1 = torch.tanh(model.fc1(x))
        torch.testing.assert_close(f2, h1)
        torch.testing.assert_close(out, model(x))
        # Substituting fc2's input runs the rest of the model on it.
        torch.testing.assert_close(
            runner.section(x, "fc2", 2 * h1), model.fc3(torch.tanh(model.fc2(2 * h1)))
        )
        torch.testing.assert_close(runner.section(x, "fc2", h1, "fc3"), f3)
    # Reading stops the forward pass at the last read: no output.
    assert runner.run(x, reads=["fc2"], need_output=False)[1] is None
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_unknown_and_unused_layers(rng):
    runner = ModelRunner(tanh_mlp().eval())
    x = torch.as_tensor(rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match=r"Unknown layer 'fc_2'.*'fc2'"):
        runner.read(x, ["fc_2"])
    model = ResidualMLP()
    model.unused = torch.nn.Linear(2, 2)  # a submodule that forward never calls
    with pytest.raises(ValueError, match=r"never called node layer\(s\) \['unused'\]"):
        ModelRunner(model.double().eval()).read(
            torch.as_tensor(rng.normal(size=(5, 4))), ["unused"]
        )


def _token_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        OrderedDict(
            embed=torch.nn.Embedding(9, 3),
            fc=torch.nn.Linear(3, 4),
            act=torch.nn.Tanh(),
            out=torch.nn.Linear(4, 2),
        )
    )


def _shapes_by_hooks(model, x, names):
    """Per-sample input shapes of modules ``names`` and the output's, with plain hooks."""
    seen, handles = {}, []

    def record(name):
        def hook(module, args):
            seen[name] = tuple(args[0].shape[1:])  # returns None: the input is unchanged

        return hook

    for name in names:
        module = dict(model.named_modules())[name]
        handles.append(module.register_forward_pre_hook(record(name)))
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen, tuple(output.shape[1:])


@pytest.mark.parametrize("length", [3, 7])
def test_node_shapes_are_those_of_the_batch(length):
    model = _token_model()
    session = ModelSession(model)
    x = session.inputs(np.arange(2 * length).reshape(2, length) % 9)
    shapes, output_shape = node_shapes(session, x, ["fc", "out"])
    assert list(shapes) == ["fc", "out"]
    assert (shapes, output_shape) == _shapes_by_hooks(model, torch.as_tensor(x), ["fc", "out"])
    assert shapes == {"fc": (length, 3), "out": (length, 4)} and output_shape == (length, 2)
    # Nothing is left behind: no hooks, no graph.
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in session.model.modules())
    assert torch.is_grad_enabled()


def test_node_shapes_of_a_batch_of_float_inputs(rng):
    session = ModelSession(tanh_mlp())
    x = session.inputs(rng.normal(size=(5, 4)))
    assert node_shapes(session, x, ["fc2", "fc3"]) == ({"fc2": (8,), "fc3": (8,)}, (3,))
