"""Fourier analysis of features of the modular-addition task.

On the full grid of inputs ``(x, y)``, the functions ``cos(2 pi k z / p)`` and
``sin(2 pi k z / p)`` of ``z = (x + y) mod p`` are orthogonal, so the share
of a feature's variance carried by frequency ``k`` of ``x + y`` is
``2 |c_k|^2 / Var(v)`` with ``c_k = mean(v * exp(-2 pi i k z / p))``.
"""

from dataclasses import dataclass

import numpy as np


def sum_frequency_power(values, z, p):
    """Share of each feature's variance carried by each frequency of ``z``.

    Parameters
    ----------
    values : ndarray of shape (n_samples, n_features)
        Feature values on inputs that cover every ``(x, y)`` pair equally
        often (e.g. the full grid).
    z : ndarray of shape (n_samples,)
        ``(x + y) mod p`` of each sample (or ``x`` alone, to analyse a
        feature of the first token).
    p : int

    Returns
    -------
    ndarray of shape (n_features, p // 2 + 1)
        Entry ``[j, k]`` is the share of feature ``j``'s variance explained by
        ``cos`` and ``sin`` of frequency ``k`` (``k = 0`` is always 0).
    """
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean(0)
    k = np.arange(p // 2 + 1)
    phases = np.exp(-2j * np.pi * np.outer(z, k) / p)  # (n, K)
    coefficients = phases.T @ centred / len(values)  # (K, n_features)
    power = 2 * np.abs(coefficients) ** 2
    power[0] = 0
    variance = centred.var(0)
    # Constant features (e.g. the "=" token's position) carry no wave at all.
    constant = variance <= 1e-12 * max(variance.max(), np.finfo(float).tiny)
    share = power / np.where(constant, 1.0, variance)
    share[:, constant] = 0
    return share.T


@dataclass(frozen=True)
class FrequencyReport:
    """Dominant frequency of ``x + y`` for each feature.

    Attributes
    ----------
    frequency : ndarray of shape (n_features,)
        Frequency ``k`` with the largest share of the feature's variance.
    share : ndarray of shape (n_features,)
        That share (1 means the feature is a pure wave of ``x + y``).
    sum_share : ndarray of shape (n_features,)
        Share of variance explained by all frequencies of ``x + y`` together
        (how much the feature is a function of ``x + y`` at all).
    """

    frequency: np.ndarray
    share: np.ndarray
    sum_share: np.ndarray

    def pairs(self, min_share=0.5):
        """Features grouped by dominant frequency, e.g. the cos/sin pairs.

        Returns
        -------
        dict of int to list of int
            Frequency -> indices of the features dominated by it (share at
            least ``min_share``), most important feature first.
        """
        groups = {}
        for j, (k, s) in enumerate(zip(self.frequency, self.share)):
            if s >= min_share:
                groups.setdefault(int(k), []).append(j)
        return groups


def dominant_frequencies(values, z, p):
    """:class:`FrequencyReport` of each feature (columns of ``values``)."""
    power = sum_frequency_power(values, z, p)
    frequency = power.argmax(1)
    return FrequencyReport(frequency, power[np.arange(len(power)), frequency], power.sum(1))
