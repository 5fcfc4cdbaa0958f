"""Forward passes at node layers (``_capture``): reads, substitutions, stacked copies."""

import numpy as np
import pytest
import torch
from toy_models import BatchSizeAfterCut, PositionMixer, ResidualMLP, tanh_mlp

from sklearn_lib import LIBTransformer
from sklearn_lib._model.capture import ModelRunner


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
