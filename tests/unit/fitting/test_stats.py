"""The statistics pass's moments (``_fitting.stats``) against numpy."""

import numpy as np
import pytest
import torch

from sklearn_lib._fitting.stats import MomentAccumulator
from sklearn_lib._model.session import Batch


@pytest.mark.parametrize("center", [True, False])
def test_moments_over_batches_equal_numpy(rng, center):
    # A mean far from zero: the textbook E[ff^T] - mu mu^T would cancel digits.
    rows = rng.normal(size=(300, 2, 3)) + 1e4
    acc = MomentAccumulator("h", 3, torch.device("cpu"), center=center)
    for start in range(0, 300, 70):
        part = torch.as_tensor(rows[start : start + 70])
        acc.update(Batch(part, start), {"h": part})
    acc.result()
    flat = rows.reshape(-1, 3)
    np.testing.assert_allclose(acc.mean.numpy(), flat.mean(0), rtol=1e-14)
    expected = np.cov(flat, rowvar=False, bias=True) if center else flat.T @ flat / len(flat)
    np.testing.assert_allclose(acc.gram.numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("center", [True, False])
def test_certified_float32_moments_keep_a_float64_mean(rng, center):
    """Rows centred in float32 for certified float32 products: the Gram within the
    certificate's bound, the mean as exact as float64 sums make it (found in review:
    summing the rounded differences biased it by 2^-25 of the values)."""
    rows = (rng.normal(size=(2048, 16)) + 1e-4).astype(np.float32)
    acc = MomentAccumulator("h", 16, torch.device("cpu"), center=center, low=torch.float32)
    for start in range(0, 2048, 512):
        part = torch.as_tensor(rows[start : start + 512])
        acc.update(Batch(part, start), {"h": part})
    acc.result()
    assert acc.sq.precision == torch.float32
    flat = rows.astype(np.float64)
    np.testing.assert_allclose(acc.mean.numpy(), flat.mean(0), rtol=1e-12, atol=1e-15)
    expected = np.cov(flat, rowvar=False, bias=True) if center else flat.T @ flat / len(flat)
    np.testing.assert_allclose(acc.gram.numpy(), expected, rtol=1e-5, atol=1e-6)
