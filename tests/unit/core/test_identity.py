"""The implicit identity: every operation equals the one on ``np.eye`` / ``torch.eye``."""

import numpy as np
import pytest
import torch

from sklearn_lib._core.identity import Identity, as_tensor, dense

D = 7


@pytest.mark.parametrize(
    "key",
    [
        (slice(None), slice(None, 3)),
        (slice(None), 4),
        (2, slice(None)),
        (slice(1, 5), slice(2, 7, 2)),
        (slice(None), np.array([6, 0, 3])),
        (slice(None), slice(None)),
    ],
)
def test_slices_equal_the_dense_identitys(key):
    eye = np.eye(D)
    got = Identity(D)[key]
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, eye[key])
    t = Identity(D, torch.float32, "cpu")[
        key if not isinstance(key[1], np.ndarray) else (key[0], torch.as_tensor(key[1]))
    ]
    assert t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), eye[key])


def test_products_are_copies_of_the_other_operand():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, D)), rng.normal(size=(D, 2))
    eye = Identity(D)
    left, right = a @ eye, eye @ b
    np.testing.assert_array_equal(left, a)
    np.testing.assert_array_equal(right, b)
    left[0, 0] = 99.0  # a product is a new array, as numpy's would be
    assert a[0, 0] != 99.0
    t = torch.as_tensor(a)
    out = t @ Identity(D, torch.float64, "cpu")
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()
    batched = torch.ones(4, 3, D) @ Identity(D, torch.float64, "cpu").T
    assert batched.shape == (4, 3, D)


def test_a_product_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="inner dimensions"):
        np.ones((2, D + 1)) @ Identity(D)
    with pytest.raises(ValueError, match="inner dimensions"):
        Identity(D) @ torch.ones(D - 1, 2)


def test_other_numpy_functions_act_on_the_whole_matrix():
    np.testing.assert_array_equal(np.abs(Identity(D)), np.eye(D))
    np.testing.assert_array_equal(np.asarray(Identity(D), dtype=np.float32), np.eye(D))
    assert np.allclose(Identity(D), np.eye(D))


def test_conversions_keep_it_implicit_until_asked():
    eye = as_tensor(Identity(D), "cpu", torch.float32)
    assert isinstance(eye, Identity) and eye.dtype == torch.float32 and eye.shape == (D, D)
    assert isinstance(eye.to(torch.float64), Identity)
    assert eye.T is eye and eye.copy() is eye
    assert torch.equal(dense(eye), torch.eye(D))
    x = np.arange(3.0)
    assert as_tensor(x, "cpu", torch.float64).dtype == torch.float64
    assert dense(x) is x


def test_a_vocabulary_wide_identity_costs_nothing():
    """GPT-2's vocabulary: the dense identity would take 20 GB; slices take their block."""
    eye = Identity(50_257, torch.float32, "cpu")
    assert eye[:, :2].shape == (50_257, 2)
    rows = torch.ones(2, 50_257)
    assert torch.equal(rows @ eye.T, rows)


def test_the_numpy_flavour_moves_to_torch_and_identities_multiply():
    eye = Identity(D).to("cpu")
    assert eye.device == torch.device("cpu") and eye.dtype == torch.float64
    assert torch.equal(dense(eye), torch.eye(D, dtype=torch.float64))
    assert Identity(D).to(torch.float32).dtype == torch.float32
    assert eye @ eye is eye
    batched = Identity(D, torch.float64, "cpu") @ torch.ones(4, D, 2)
    assert batched.shape == (4, D, 2)
    with pytest.raises(TypeError, match="at most one index array"):
        Identity(D)[np.array([0, 1]), np.array([0, 1])]
