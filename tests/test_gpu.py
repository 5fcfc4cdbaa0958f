"""GPU == CPU to float64 tolerance (skipped without CUDA)."""

import numpy as np
import pytest
import torch
from toy_models import PositionMixer, tanh_mlp

from sklearn_lib import LIBTransformer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("basis", ["lib", "pca"])
def test_gpu_matches_cpu(rng, basis):
    for model, layer, downstream, X in [
        (tanh_mlp(), "fc2", ["fc3"], rng.normal(size=(300, 4))),
        (PositionMixer().double(), "mix", ["head"], rng.normal(size=(200, 4, 3))),
    ]:
        fits = {
            device: LIBTransformer(
                model, layer, downstream_layers=downstream, basis=basis, device=device
            ).fit(X)
            for device in ("cpu", "cuda")
        }
        cpu, gpu = fits["cpu"], fits["cuda"]
        np.testing.assert_allclose(gpu.lambdas_, cpu.lambdas_, rtol=1e-9)
        np.testing.assert_allclose(gpu.transform(X), cpu.transform(X), rtol=1e-8, atol=1e-10)
        assert next(model.parameters()).device.type == "cpu"
