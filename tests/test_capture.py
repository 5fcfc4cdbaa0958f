"""The model runner: stacked copies of a batch at a cut, and its fallback."""

import numpy as np
import pytest
import torch
from toy_models import BatchSizeAfterCut, PositionMixer, tanh_mlp

from sklearn_lib import LIBTransformer
from sklearn_lib._capture import ModelRunner, resolve_module


def _stacked_section(model, layer, x, copies):
    runner = ModelRunner(model, torch.device("cpu"), torch.float64)
    module = resolve_module(model, layer)
    (f,) = runner.read(x, [module])
    scaled = torch.cat([(c + 1) / copies * f for c in range(copies)])  # copy-major
    got = runner.section(x, module, scaled)
    expected = runner.section(x.repeat(copies, *([1] * (x.ndim - 1))), module, scaled)
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
