"""Data sets of the paper's experiments, made locally (nothing is downloaded)."""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import validate_params

from ._core.validation import StrictInterval


@validate_params(
    {
        # p = 1 has one pair and no sum to learn; p = 0 or less has no pairs.
        "p": [StrictInterval(Integral, 2, None, closed="left")],
        "frac_train": [StrictInterval(Real, 0, 1, closed="neither")],
        # torch.Generator.manual_seed takes exactly this range.
        "seed": [StrictInterval(Integral, -(2**63), 2**64 - 1, closed="both")],
    },
    prefer_skip_nested_validation=True,
)
def make_modular_addition(p=113, frac_train=0.3, seed=0):
    """The paper's modular-addition task and its exact train/test split.

    Inputs are token triples ``(x, y, p)`` (``p`` is the "=" token) for all
    ``x, y`` in ``0..p-1``, listed with ``x`` as the outer loop; the label is
    ``(x + y) mod p``.  The split is the paper's:
    ``perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))``,
    train = the first ``int(p * p * frac_train)`` indices of ``perm`` (in
    that order), test = the rest.

    Parameters
    ----------
    p : int >= 2, default=113
        The modulus.
    frac_train : float in (0, 1), default=0.3
        Fraction of the ``p * p`` pairs in the training split; both splits
        must be non-empty.
    seed : int, default=0
        Seed of the permutation (any int ``torch.Generator.manual_seed`` takes).

    Returns
    -------
    X_train, X_test : ndarray of shape (n, 3), int64
    y_train, y_test : ndarray of shape (n,), int64
        In the order of :func:`~sklearn.model_selection.train_test_split`.

    Examples
    --------
    >>> from sklearn_lib.datasets import make_modular_addition
    >>> X_train, X_test, y_train, y_test = make_modular_addition()
    >>> X_train.shape, X_test.shape
    ((3830, 3), (8939, 3))
    """
    n_train = int(p * p * frac_train)
    if not 0 < n_train < p * p:
        raise ValueError(
            f"frac_train={frac_train} leaves an empty split of the {p * p} pairs of p={p} "
            f"({n_train} for training); both splits need at least one pair"
        )
    x = np.repeat(np.arange(p), p)  # outer loop
    y = np.tile(np.arange(p), p)  # inner loop
    X = np.stack([x, y, np.full(p * p, p)], axis=1).astype(np.int64)
    labels = (x + y) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed)).numpy()
    train, test = perm[:n_train], perm[n_train:]
    return X[train], X[test], labels[train], labels[test]


@validate_params({"scale": ["boolean"]}, prefer_skip_nested_validation=True)
def load_digit_images(scale=True):
    """scikit-learn's bundled 8x8 digits as images, shape ``(n, 1, 8, 8)``.

    Parameters
    ----------
    scale : bool, default=True
        Divide pixel values (0..16) by 16.

    Returns
    -------
    X : ndarray of shape (1797, 1, 8, 8), float32
    y : ndarray of shape (1797,), int64
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.images[:, None].astype(np.float32)
    if scale:
        X /= 16.0
    return X, digits.target.astype(np.int64)
