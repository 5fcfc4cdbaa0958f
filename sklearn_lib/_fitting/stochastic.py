"""Stochastic sources: every decision and constant of ``n_stochastic_sources``, in one place.

Two estimators share the idea, a sum of squares over many Jacobian rows
replaced by one over random +-1 combinations of them (``E[r r^T] = I``, so
the estimate is unbiased):

- the **fit's** (``LIBTransformer(n_stochastic_sources=S)``): ``S``
  combinations of all rows, over output positions *and* next features, per
  batch (:func:`m_prime_sources`), for ``M'``; ``"auto"`` draws them in
  rounds until the basis stops moving (:func:`converged_m_prime`), and
  keeps ``M'`` exact where rounds cannot be cheaper (:func:`m_prime_route`);
- the **graph's** (``interaction_graph(n_stochastic_sources=S)``): ``S``
  combinations over output positions only, one per next feature
  (:func:`edge_sources`), since each edge keeps its own output feature.

Fits with sources keep :data:`STOCHASTIC_BATCH_SIZE` samples per batch: the
estimate's error shrinks with the number of draws, sources times batches.
"""

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from sklearn.exceptions import ConvergenceWarning

from .._routes.cotangents import Cotangents
from ..exceptions import user_stacklevel

#: Samples per batch of a fit with stochastic sources.
STOCHASTIC_BATCH_SIZE = 256

#: ``n_stochastic_sources="auto"``: sources per batch in each round (one pass), and the
#: fewest and most rounds.
AUTO_SOURCES, AUTO_MIN_ROUNDS, AUTO_MAX_ROUNDS = 16, 4, 64


def m_prime_sources(exact, n_sources, generator, n_samples=None):
    """The fit's estimator: ``n_sources`` random +-1 combinations of all rows of ``exact``.

    Signs ``(S, P_out, k_next)`` mix output positions and next features, the
    same for every sample of a batch, or, with ``n_samples``, ``(S, n, P_out,
    k_next)``, each sample's own: as many backward rows, ``n`` times the
    independent draws (a route that takes rows per sample,
    :attr:`~sklearn_lib._routes.table.SectionRoute.sources_per_sample`).
    ``n_sources`` None keeps the exact rows.  Drawn on the CPU from
    ``generator``, so results are reproducible on any device.
    """
    return _signed(exact, n_sources, generator, over_features=True, n_samples=n_samples)


def edge_sources(exact, n_sources, generator):
    """The graph's estimator: per next feature, ``n_sources`` combinations over output positions.

    Signs ``(S, P_out)``; ``n_sources`` None keeps the exact rows.
    """
    return _signed(exact, n_sources, generator, over_features=False)


def _signed(exact, n_sources, generator, over_features, n_samples=None):
    if n_sources is None:
        return exact
    C = exact.matrix
    per_sample = () if n_samples is None else (n_samples,)
    shape = (n_sources, *per_sample, exact.n_positions) + ((C.shape[1],) if over_features else ())
    # One byte each, made +-1 in place: a vocabulary's signs are the largest thing a
    # pass holds (16 sources x 4 sequences x 128 positions x 50,257 logits: 411 MB).
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).mul_(2).sub_(1)
    return Cotangents(C, exact.n_positions, signs.to(C.device))


def auto_stays_exact(exact_rows):
    """Whether ``n_stochastic_sources="auto"`` computes a section of ``exact_rows`` exactly.

    It runs at least :data:`AUTO_MIN_ROUNDS` rounds of :data:`AUTO_SOURCES`
    rows per batch, so up to that many exact rows cost no more (measured on
    the paper's attention, 29 rows: rounds took 3x the exact fit's time).
    """
    return exact_rows <= AUTO_MIN_ROUNDS * AUTO_SOURCES


def m_prime_route(setting, section, row_free, exact_rows=None):
    """``(sources, why)``: how the fit's ``M'`` of ``section`` is estimated, said once.

    Parameters
    ----------
    setting : int, "auto" or None
        ``n_stochastic_sources``.
    section : Section
        With its shapes: the exact ``M'`` has ``section.exact_rows`` rows (an
        upper bound; the next node's kept features are not known before it
        is fitted).
    row_free : bool
        Whether a route without a backward pass per row serves the section
        (on every rank).
    exact_rows : int, optional
        The exact rows of its route, where fewer than ``section.exact_rows``
        (those of a final linear map's input).

    Returns
    -------
    sources : int, "auto" or None
        None: exact; an int: that many sources per batch; ``"auto"``: rounds.
    why : str
    """
    if setting is None:
        return None, "exact"
    if setting != "auto":
        return setting, f"{setting} random sources per batch"
    if row_free:
        return None, "exact: its route needs no backward pass per row"
    rows = section.exact_rows if exact_rows is None else exact_rows
    if auto_stays_exact(rows):
        return None, f"exact: {rows} rows cost no more than {AUTO_MIN_ROUNDS} rounds"
    return "auto", "rounds of random sources until the basis stops moving"


#: What "stopped moving" means: the estimated error of the top Lambdas (relative to
#: the largest) and the estimated smallest principal cosine of the top-k subspace.
AUTO_LAMBDA_TOLERANCE, AUTO_COSINE, AUTO_TOP_K = 0.01, 0.99, 5


@dataclass(frozen=True)
class SourceRounds:
    """How ``n_stochastic_sources="auto"`` ended for one section.

    Attributes
    ----------
    n_sources : int
        Random sources per batch in all (rounds times :data:`AUTO_SOURCES`).
    rounds : int
        Passes over the data.
    lambda_error : float
        Estimated error of the top Lambdas, relative to the largest.
    cosine : float
        Estimated smallest principal cosine between the top-k subspace and
        the exact one.
    converged : bool
        False when :data:`AUTO_MAX_ROUNDS` ran out first.
    exact : bool
        True where more rounds would have cost more backward rows than the
        exact ``M'``, which was then computed instead (one more pass; its
        errors are then 0 and its cosine 1).
    """

    n_sources: int
    rounds: int
    lambda_error: float
    cosine: float
    converged: bool
    exact: bool = False


def converged_m_prime(session, source, acc, basis_of, exact_rows=None):
    """``M'`` from rounds of random sources until the basis it gives stops moving.

    Each round is one pass with :data:`AUTO_SOURCES` sources per batch (new
    draws every batch), an independent estimate of ``M'``; the result is
    their mean.  Its Lambda error is estimated from the spread of the
    rounds' own top-``k`` Lambdas (twice their standard error, relative to
    the largest Lambda), and its subspace from two halves of the rounds
    (their mean's angle is about half theirs).  Rounds go on, in pairs, from
    :data:`AUTO_MIN_ROUNDS`, until the Lambda error is within
    :data:`AUTO_LAMBDA_TOLERANCE` and the cosine at least :data:`AUTO_COSINE`,
    or :data:`AUTO_MAX_ROUNDS` have run.  Where the next pair would bring
    the sources per batch beyond ``exact_rows`` (the exact ``M'``'s backward
    rows per batch, in the next node's kept features), the exact ``M'`` is
    computed instead, before it: rounds never cost more than that pass.

    The estimate covers this section's own sources.  The next node's basis,
    itself estimated, moves this one too; that part is not in the estimate.

    Returns
    -------
    m_prime : ndarray
    rounds : SourceRounds
    """
    halves = [0, 0]
    tops = []
    passed = 0  # consecutive checks passed: one is too easily passed by chance
    while True:
        if exact_rows is not None and (len(tops) + 2) * AUTO_SOURCES > exact_rows:
            return _exact_instead(session, source, acc, len(tops))
        for half in (0, 1):
            acc.reset(AUTO_SOURCES)
            what = f"{acc.what} (round {len(tops) + 1})"
            (m_round,) = session.run_pass(source, [acc], what)
            halves[half] = halves[half] + m_round
            tops.append(basis_of(m_round).lambdas[:AUTO_TOP_K])
        rounds = len(tops)
        estimate = _estimate(halves, tops, basis_of)
        converged = estimate[0] <= AUTO_LAMBDA_TOLERANCE and estimate[1] >= AUTO_COSINE
        passed = passed + 1 if converged else 0
        if (passed >= 2 and rounds >= AUTO_MIN_ROUNDS) or rounds >= AUTO_MAX_ROUNDS:
            break
    report = SourceRounds(rounds * AUTO_SOURCES, rounds, *estimate, converged)
    if not converged:
        warnings.warn(
            f"n_stochastic_sources='auto' did not converge on {acc.what} after {rounds} rounds "
            f"({report.n_sources} sources per batch): estimated Lambda error "
            f"{report.lambda_error:.1%} of the largest, top features' cosine "
            f"{report.cosine:.3f}. More samples (or a smaller batch_size: more draws per "
            "pass) help; n_stochastic_sources=None is exact",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
    return (halves[0] + halves[1]) / rounds, report


def _exact_instead(session, source, acc, rounds):
    """The exact ``M'``, in one pass, after ``rounds`` rounds: reported exact (no error)."""
    acc.reset(None)
    (m_prime,) = session.run_pass(source, [acc], f"{acc.what} (exact: cheaper than rounds)")
    return m_prime, SourceRounds(rounds * AUTO_SOURCES, rounds, 0.0, 1.0, True, True)


def _estimate(halves, tops, basis_of):
    """``(lambda_error, cosine)`` of the mean of the rounds so far (see
    :func:`converged_m_prime`)."""
    rounds = len(tops)
    mean = basis_of((halves[0] + halves[1]) / rounds)
    k = min(len(top) for top in tops)
    spread = np.std([top[:k] for top in tops], axis=0, ddof=1).max()
    lambda_error = float(2 * spread / np.sqrt(rounds) / max(mean.lambdas[0], _TINY))
    cut = _gapped_top(mean.lambdas[: mean.n_components], lambda_error * mean.lambdas[0])
    cosine = _mean_cosine(cut, *(basis_of(m / (rounds // 2)) for m in halves))
    return lambda_error, cosine


_TINY = np.finfo(float).tiny


def _gapped_top(lambdas, error):
    """The top features' count: :data:`AUTO_TOP_K`, grown past Lambdas the error cannot tell apart.

    Features whose Lambdas lie within the estimated error (or 10%) of the
    one before are one subspace whose split is arbitrary: a cut between
    them would make every comparison of top-k subspaces a coin toss.
    """
    k = min(AUTO_TOP_K, len(lambdas))
    while k < len(lambdas) and lambdas[k - 1] - lambdas[k] <= max(error, 0.1 * lambdas[k - 1]):
        k += 1
    return max(k, 1)


def _mean_cosine(k, a, b):
    """The estimated smallest principal cosine of the top-k subspace of the mean of two halves."""
    k = max(1, min(k, a.n_components, b.n_components))
    # The halves' angle shrinks by half in the mean of both: sin(theta) / 2.
    sine = np.sin(float(np.max(scipy.linalg.subspace_angles(a.matrix[:, :k], b.matrix[:, :k]))))
    return float(np.sqrt(max(0.0, 1 - (sine / 2) ** 2)))
