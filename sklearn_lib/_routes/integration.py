"""Quadrature rules for integrated gradients, in one place.

Every rule returns points ``alpha`` in [0, 1] and weights ``w`` such that
``sum_a w_a * g(alpha_a)`` approximates ``int_0^1 g(alpha) d alpha``.
"""

import numpy as np
import torch

INTEGRATION_RULES = ("gradient", "trapezoidal", "gauss-legendre")


def integration_rule(method, n_intervals):
    """Points and weights of an integration rule.

    Parameters
    ----------
    method : {"gradient", "trapezoidal", "gauss-legendre"}
        ``"gradient"`` is the paper's default: the plain gradient at
        ``alpha = 1`` with weight 1.
    n_intervals : int
        0 for ``"gradient"``; at least 1 otherwise (``n_intervals + 1`` points).

    Returns
    -------
    alphas : ndarray of shape (n_points,)
    weights : ndarray of shape (n_points,)
    """
    _check_rule(method, n_intervals)
    if method == "gradient":
        if n_intervals != 0:
            raise ValueError(
                f"integration='gradient' evaluates one point; n_intervals={n_intervals} "
                "must be 0 (use 'trapezoidal' or 'gauss-legendre' for more points)"
            )
        return np.ones(1), np.ones(1)
    if n_intervals < 1:
        raise ValueError(f"integration={method!r} needs n_intervals >= 1, got {n_intervals}")
    if method == "trapezoidal":
        # Stay off the end points: activation functions such as ReLU have a
        # kink at 0, where the derivative is ill-defined.
        eps = 1e-3 / (n_intervals + 1)
        alphas = np.linspace(eps, 1 - eps, n_intervals + 1)
        # Weights sum to exactly 1, so constant gradients (linear sections)
        # integrate exactly.
        weights = np.full(n_intervals + 1, 1.0 / n_intervals)
        weights[[0, -1]] /= 2
        return alphas, weights
    # "gauss-legendre", the last of INTEGRATION_RULES (_check_rule refused any other).
    nodes, weights = np.polynomial.legendre.leggauss(n_intervals + 1)
    # Map [-1, 1] to [0, 1].
    return (nodes + 1) / 2, weights / 2


#: The most intervals a rule takes: every point is a pass of Jacobian products, and
#: the rules converge long before.
MAX_INTERVALS = 10_000


def _check_rule(method, n_intervals):
    """Raise TypeError or ValueError naming a rule's bad argument (a bool or a float is
    not a count; a count past :data:`MAX_INTERVALS` would take a pass each)."""
    if not isinstance(method, str) or method not in INTEGRATION_RULES:
        raise ValueError(f"integration={method!r} is not one of {INTEGRATION_RULES}")
    if isinstance(n_intervals, bool) or not isinstance(n_intervals, (int, np.integer)):
        raise TypeError(
            f"n_intervals must be an int, got {type(n_intervals).__name__} {n_intervals!r}"
        )
    if n_intervals > MAX_INTERVALS:
        raise ValueError(
            f"n_intervals={n_intervals} is past {MAX_INTERVALS:,}: each point is a pass of "
            "Jacobian products, and the rules converge with far fewer"
        )


def is_plain(rule):
    """Whether ``rule`` (points and weights, tuples or tensors) is the plain gradient:
    one point at 1 with weight 1, so that its points are the data's own."""
    alphas, weights = (np.asarray(v, dtype=np.float64).reshape(-1) for v in rule)
    return alphas.tolist() == [1.0] and weights.tolist() == [1.0]


def rule_tensors(rule, device):
    """``(alphas, weights)`` of a rule as float64 tensors on ``device``."""
    return tuple(torch.as_tensor(np.asarray(v, dtype=np.float64), device=device) for v in rule)
