"""Numerical settings (``_core.numerics``): tolerances, noise floors, BLAS threads, checks."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from sklearn_lib._core.numerics import (
    CHUNK_ELEMENTS,
    TOLERANCES,
    Tolerances,
    all_finite,
    blas_threads,
    max_relative_error,
    tolerances,
)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.int64, torch.float32),
    ],
)
def test_other_dtypes_get_float32_tolerances(dtype, expected):
    assert tolerances(dtype) is TOLERANCES[expected]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_roundoff_is_the_unit_roundoff_of_the_dtype(dtype):
    assert tolerances(dtype).roundoff == torch.finfo(dtype).eps / 2


def test_float32_tolerances_are_looser_than_float64s():
    loose, tight = TOLERANCES[torch.float32], TOLERANCES[torch.float64]
    for field in ("closed_form", "batch_growth", "cut", "same_points", "roundoff"):
        assert getattr(loose, field) > getattr(tight, field), field
    with pytest.raises(dataclasses.FrozenInstanceError):
        tight.cut = 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noise_floor_from_the_second_moments_of_the_activations(rng, dtype):
    # E[f_i^2] = var_i + mean_i^2: the largest second moment, here of the
    # feature with the large mean, not of the one with the large variance.
    rows = rng.normal(size=(500, 3)) * [5.0, 1.0, 0.1] + [0.0, 30.0, 1.0]
    mean, gram = rows.mean(0), np.cov(rows, rowvar=False, bias=True)
    tol = tolerances(dtype)
    expected = 100.0 * tol.roundoff**2 * np.max(np.mean(rows**2, axis=0))
    assert Tolerances.NOISE_FACTOR == 100.0
    assert math.isclose(tol.noise_floor(gram, mean), expected, rel_tol=1e-12)
    # Uncentred: the Gram is already the second moment, with a zero mean.
    uncentred = rows.T @ rows / len(rows)
    assert math.isclose(tol.noise_floor(uncentred, np.zeros(3)), expected, rel_tol=1e-12)


def test_noise_floor_hand_computed():
    tol = tolerances(torch.float64)
    gram = np.diag([4.0, 1.0])
    assert tol.noise_floor(gram, [0.0, 3.0]) == 100.0 * 2.0**-106 * 10.0


def test_chunks_are_32_mib_of_float64():
    assert CHUNK_ELEMENTS * 8 == 32 * 2**20


def _blas_threads():
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_blas_threads_inside_and_restored_after():
    before = _blas_threads()
    with blas_threads(1):
        assert all(n == 1 for n in _blas_threads())
        np.linalg.eigh(np.eye(4))
    assert _blas_threads() == before
    with pytest.raises(RuntimeError, match="inside"), blas_threads(1):
        raise RuntimeError("inside")
    assert _blas_threads() == before
    with blas_threads(1):  # the lock was released by the failing block
        pass


def test_blas_threads_leaves_torch_threads_alone():
    before = torch.get_num_threads()
    with blas_threads(1):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1.0, -2.0, 3.0], True),
        ([1.0, float("nan"), 3.0], False),
        ([1.0, float("inf"), 3.0], False),
        ([float("-inf"), 0.0], False),
        ([float("inf"), float("-inf")], False),  # the sum is NaN
        ([3e38, 3e38, 3e38], True),  # float32: the sum overflows, the values are finite
        ([], True),
    ],
)
def test_all_finite(values, expected):
    tensor = torch.tensor(values, dtype=torch.float32)
    assert all_finite(tensor) is expected
    assert all_finite(tensor.double().reshape(-1, 1)) is bool(np.isfinite(values).all())


def test_max_relative_error_hand_computed():
    expected = torch.tensor([[1.0, -4.0], [2.0, 0.5]], dtype=torch.float64)
    got = expected + torch.tensor([[0.0, 0.2], [-0.4, 0.0]], dtype=torch.float64)
    error = max_relative_error(got, expected)
    assert isinstance(error, float) and math.isclose(error, 0.4 / 4.0, rel_tol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_max_relative_error_of_zeros(dtype):
    zeros = torch.zeros(3, dtype=dtype)
    assert max_relative_error(zeros, zeros) == 0.0
    # Against zeros, any difference is huge rather than a division by zero.
    assert max_relative_error(zeros + 1e-30, zeros) > 1e6
