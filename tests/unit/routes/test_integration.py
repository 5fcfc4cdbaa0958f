"""Quadrature rules of ``_integration``."""

import numpy as np
import pytest

from sklearn_lib import integration_rule


@pytest.mark.parametrize("k", range(6))
def test_integration_rules_integrate_polynomials(k):
    exact = 1.0 / (k + 1)  # int_0^1 a^k da
    for n in (3, 5):
        alphas, weights = integration_rule("gauss-legendre", n)
        if k <= 2 * n + 1:  # n + 1 Gauss points are exact to degree 2n + 1
            assert np.dot(weights, alphas**k) == pytest.approx(exact, rel=1e-13)
    alphas, weights = integration_rule("trapezoidal", 200)
    assert weights.sum() == pytest.approx(1.0, rel=1e-14)
    assert np.dot(weights, alphas**k) == pytest.approx(exact, abs=2e-4)
    alphas, weights = integration_rule("gradient", 0)
    assert list(alphas) == [1.0] and list(weights) == [1.0]


def test_rules_stay_off_the_end_points():
    """ReLU has a kink at 0: the trapezoidal rule never evaluates there."""
    alphas, _ = integration_rule("trapezoidal", 4)
    assert alphas.min() > 0 and alphas.max() < 1
    with pytest.raises(ValueError, match="needs n_intervals >= 1"):
        integration_rule("gauss-legendre", 0)
    with pytest.raises(ValueError, match="n_intervals=2 must be 0"):
        integration_rule("gradient", 2)


@pytest.mark.parametrize(
    "method, n, error, match",
    [
        ("trapezoidal", 2.5, TypeError, "n_intervals must be an int, got float"),
        ("trapezoidal", True, TypeError, "n_intervals must be an int, got bool"),
        ("trapezoidal", "4", TypeError, "n_intervals must be an int, got str"),
        ("trapezoidal", 10**9, ValueError, "n_intervals=1000000000 is past 10,000"),
        ("simpson", 4, ValueError, "integration='simpson' is not one of"),
        (None, 4, ValueError, "integration=None is not one of"),
    ],
)
def test_a_rule_refuses_bad_arguments_by_name(method, n, error, match):
    """Issue 24's review: linspace's own error for 2.5, True taken as 1, a str compared
    with an int, and 10**9 points allocated (1.5 GiB)."""
    with pytest.raises(error, match=match):
        integration_rule(method, n)
    assert integration_rule("trapezoidal", np.int64(4))[0].shape == (5,)
