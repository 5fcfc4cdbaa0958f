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


@pytest.mark.parametrize("mode", ["reshape", "count"])
def test_lib_with_integration_where_the_batch_cannot_grow(rng, mode):
    """Multi-point integration stacks copies; the fallback keeps results exact."""
    X = rng.normal(size=(40, 4))
    model = BatchSizeAfterCut(mode).double()
    lib = LIBTransformer(model, "mid", integration="gauss-legendre", n_intervals=2).fit(X)
    reference = BatchSizeAfterCut("count" if mode == "reshape" else "reshape").double()
    ref = LIBTransformer(reference, "mid", integration="gauss-legendre", n_intervals=2).fit(X)
    # Both models have the same weights and the same derivatives.
    np.testing.assert_allclose(lib.lambdas_, ref.lambdas_, rtol=1e-10)
