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

#: ``n_stochastic_sources="auto"``: sources per batch in each round (one pass), at most,
#: and the fewest and most rounds.
AUTO_SOURCES, AUTO_MIN_ROUNDS, AUTO_MAX_ROUNDS = 16, 4, 64

#: The independent draws a round of ``"auto"`` aims at: where sources are drawn for each
#: sample, a round takes as few sources per batch as give this many over the data
#: (4 on 1,024 samples), down to one; about 4,000 draws gave a top-5 cosine of 0.99
#: or more on the tiny GPT-2 of ``benchmarks/README.md`` section 7.
AUTO_ROUND_DRAWS = 4096


def round_sources(per_sample, n_samples):
    """Sources per batch of a round of ``"auto"``: :data:`AUTO_SOURCES`, or, drawn for
    each of ``n_samples`` samples apart, as few as give :data:`AUTO_ROUND_DRAWS` draws
    (at least one).  Rounds on a stream of unknown size take :data:`AUTO_SOURCES`."""
    if not per_sample or n_samples is None:
        return AUTO_SOURCES
    return int(min(AUTO_SOURCES, max(1, -(-AUTO_ROUND_DRAWS // n_samples))))


def m_prime_sources(exact, n_sources, generator, n_samples=None, features=None):
    """The fit's estimator: ``n_sources`` random +-1 combinations of all rows of ``exact``.

    Signs ``(S, P_out, k_next)`` mix output positions and next features, the
    same for every sample of a batch, or, with ``n_samples``, ``(S, n, P_out,
    k_next)``, each sample's own: as many backward rows, ``n`` times the
    independent draws (a route that takes rows per sample,
    :attr:`~sklearn_lib._routes.table.SectionRoute.sources_per_sample`).
    With ``features`` fewer than ``k_next``, they mix that many: a final
    linear map's inputs, whose factor takes them
    (:meth:`~sklearn_lib._routes.cotangents.SampledRows.through`;
    :attr:`~sklearn_lib._routes.table.SectionRoute.source_features`).
    ``n_sources`` None keeps the exact rows.  Drawn on the CPU from
    ``generator``, so results are reproducible on any device.
    """
    return _signed(exact, n_sources, generator, True, n_samples=n_samples, features=features)


def edge_sources(exact, n_sources, generator):
    """The graph's estimator: per next feature, ``n_sources`` combinations over output positions.

    Signs ``(S, P_out)``; ``n_sources`` None keeps the exact rows.
    """
    return _signed(exact, n_sources, generator, over_features=False)


def _signed(exact, n_sources, generator, over_features, n_samples=None, features=None):
    if n_sources is None:
        return exact
    C = exact.matrix
    per_sample = () if n_samples is None else (n_samples,)
    width = C.shape[1] if features is None else min(C.shape[1], features)
    shape = (n_sources, *per_sample, exact.n_positions) + ((width,) if over_features else ())
    # One byte each, made +-1 in place: signs of a vocabulary's width would be the
    # largest thing a pass holds (16 sources x 4 sequences x 128 positions x 50,257
    # logits: 411 MB), hence `features`.
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).mul_(2).sub_(1)
    # The generator goes with narrowed signs: a batch that turns out to need every
    # feature's draws them from it (SampledRows).
    narrowed = over_features and width < C.shape[1]
    return Cotangents(C, exact.n_positions, signs.to(C.device), generator if narrowed else None)


def auto_stays_exact(exact_rows):
    """Whether ``n_stochastic_sources="auto"`` computes a section of ``exact_rows`` exactly.

    It runs at least :data:`AUTO_MIN_ROUNDS` rounds, a pass each, of up to
    :data:`AUTO_SOURCES` rows per batch, so up to that many exact rows cost
    no more (measured on the paper's attention, 29 rows: rounds took 3x the
    exact fit's time).  Rounds of fewer sources (:func:`round_sources`) cost
    as many passes: the rows alone do not decide.
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
    rows = section.exact_rows if exact_rows is None else exact_rows
    if setting != "auto":
        if setting >= rows:  # as many sources cost as much and estimate what is exact
            return None, f"exact: {rows} rows per batch, no more than the {setting} sources asked"
        return setting, f"{setting} random sources per batch"
    if row_free:
        return None, "exact: its route needs no backward pass per row"
    if auto_stays_exact(rows):
        return None, f"exact: {rows} rows cost no more than {AUTO_MIN_ROUNDS} rounds"
    return "auto", "rounds of random sources until the basis stops moving"


#: What "stopped moving" means: the error of the top Lambdas (relative to the largest)
#: and the smallest principal cosine of the top-k subspace, as estimated.
AUTO_LAMBDA_TOLERANCE, AUTO_COSINE, AUTO_TOP_K = 0.01, 0.99, 5

#: The margin of the Lambda test: rounds stop where this many times the estimated
#: Lambda error (one standard error, the error to expect) is within the tolerance.
#: The error of the top Lambdas is the largest of several, so one standard error
#: would be passed by chance too often; measured errors were 0.36-0.94 of two
#: (``benchmarks/README.md`` sections 14 and 15).
LAMBDA_MARGIN = 2.0


@dataclass(frozen=True)
class SourceRounds:
    """How ``n_stochastic_sources="auto"`` ended for one section.

    Attributes
    ----------
    n_sources : int
        Random sources per batch in all (rounds times those of a round,
        :func:`round_sources`).
    rounds : int
        Passes over the data.
    lambda_error : float
        Estimated error of the top Lambdas, relative to the largest: the
        error to expect (one standard error), from this section's own
        sources and, where the next node had rounds too, what it inherits
        from them.  Converged asks :data:`LAMBDA_MARGIN` times it within
        :data:`AUTO_LAMBDA_TOLERANCE`.
    cosine : float
        Estimated smallest principal cosine between the top-k subspace and
        the exact one (the same two parts).
    converged : bool
        False when :data:`AUTO_MAX_ROUNDS` ran out first, or when only the
        inherited part was left above the tolerances.
    exact : bool
        True where more rounds would have cost more backward rows than the
        exact ``M'``, which was then computed instead (one more pass; its
        errors are then 0 and its cosine 1, or, in a chain, the rounds' last
        estimate of what it inherits).
    """

    n_sources: int
    rounds: int
    lambda_error: float
    cosine: float
    converged: bool
    exact: bool = False


def converged_m_prime(
    session, source, acc, basis_of, *, exact_rows=None, next_halves=None, sources=AUTO_SOURCES
):
    """``M'`` from rounds of random sources until the basis it gives stops moving.

    Each round is one pass of ``sources`` per batch, an independent
    estimate; the result is their mean.  Rounds alternate between two
    halves which, where the next node had rounds too, use its two half
    bases (``next_halves``): two independent chains from the output, whose
    difference holds what this node inherits.  The estimate
    (:meth:`_Rounds.estimate`) counts both parts.  Rounds go on, in pairs,
    from :data:`AUTO_MIN_ROUNDS`, until it meets the tolerances at two
    checks in a row, or :data:`AUTO_MAX_ROUNDS` have run, or, in a chain,
    the own part is within half the tolerances at two checks in a row (the
    rest is inherited).  Where the next pair would cost more sources per
    batch than ``exact_rows`` (the exact ``M'``'s rows per batch, in the
    next node's kept features), the exact ``M'`` is computed instead.

    Parameters
    ----------
    session, source, acc, basis_of : ModelSession, source, JacobianGram, callable
        What runs the passes, over what, with which accumulator; ``M'`` -> basis.
    exact_rows, sources : int, optional
        The cap, and the sources per batch of a round (:func:`round_sources`).
    next_halves : (torch.Tensor, torch.Tensor), optional
        The next node's half bases' kept matrices, where it had rounds.

    Returns
    -------
    m_prime, rounds : ndarray, SourceRounds
    halves : (NodeBasis, NodeBasis) or None
        This node's half bases, for the section before (None where exact).
    """
    rounds = _Rounds(next_halves is not None)
    passed = settled = 0  # consecutive checks passed: one is too easily passed by chance
    while True:
        # A pair more of rounds (passes) of up to AUTO_SOURCES rows past exact: exact.
        if exact_rows is not None and (rounds.count + 2) * AUTO_SOURCES > exact_rows:
            return _exact_instead(session, source, acc, rounds, sources)
        for half in (0, 1):
            acc.reset(sources, None if next_halves is None else next_halves[half])
            what = f"{acc.what} (round {rounds.count + 1})"
            (m_round,) = session.run_pass(source, [acc], what)
            rounds.add(half, m_round, basis_of(m_round))
        estimate = rounds.estimate(basis_of)
        passed = passed + 1 if estimate.converged else 0
        settled = settled + 1 if estimate.settled else 0
        enough = passed >= 2 or settled >= 2
        if (enough and rounds.count >= AUTO_MIN_ROUNDS) or rounds.count >= AUTO_MAX_ROUNDS:
            break
    report = SourceRounds(
        rounds.count * sources,
        rounds.count,
        estimate.lambda_error,
        estimate.cosine,
        estimate.converged,
    )
    if not report.converged:
        _warn_unconverged(acc, report, inherited=estimate.settled)
    return rounds.mean(), report, estimate.halves


def _warn_unconverged(acc, report, inherited):
    """The ConvergenceWarning of rounds that ended short of the tolerances, and why."""
    if inherited:
        why = (
            "This section's own sources are within half the tolerances; the rest comes "
            "from the next node's basis, itself estimated, which more rounds here cannot "
            "reduce (n_stochastic_sources=None is exact)"
        )
    else:
        why = (
            "More samples (or a smaller batch_size: more draws per pass) help; "
            "n_stochastic_sources=None is exact"
        )
    warnings.warn(
        f"n_stochastic_sources='auto' did not converge on {acc.what} after {report.rounds} "
        f"rounds ({report.n_sources} sources per batch): estimated Lambda error "
        f"{report.lambda_error:.1%} of the largest, top features' cosine "
        f"{report.cosine:.3f}. {why}",
        ConvergenceWarning,
        stacklevel=user_stacklevel(),
    )


def _exact_instead(session, source, acc, rounds, sources):
    """The exact ``M'``, in one pass in the next node's (whole) basis, after the
    ``rounds`` so far.

    Its own error is none; where the next node's basis was estimated, that
    error remains, and the report keeps the rounds' last estimate of it (own
    noise included, so about an upper bound), else 0 and cosine 1.
    """
    acc.reset(None)
    (m_prime,) = session.run_pass(source, [acc], f"{acc.what} (exact: cheaper than rounds)")
    error, cosine, halves = 0.0, 1.0, None
    if rounds.chained and rounds.last is not None:
        # The rounds' halves carry the chain on (with their own noise too: more than
        # the exact pass has, so the section before over- rather than underestimates).
        error, cosine, halves = rounds.last.lambda_error, rounds.last.cosine, rounds.last.halves
    within = _within(error, cosine)
    report = SourceRounds(rounds.count * sources, rounds.count, error, cosine, within, True)
    if not within:  # none of its own: what is left is inherited
        _warn_unconverged(acc, report, inherited=True)
    return m_prime, report, halves


@dataclass(frozen=True)
class _Estimate:
    """One check of the rounds: the mean's estimated errors, whether they meet the
    tolerances (``converged``) or this section's own part is within half of them
    (``settled``: more rounds cannot do much), and the two half bases."""

    lambda_error: float
    cosine: float
    converged: bool
    settled: bool
    halves: tuple


class _Rounds:
    """The rounds so far: per half, the sum of its rounds' ``M'`` and each round's
    top Lambdas and top subspace.

    In a chain the halves' rounds are in the next node's two half bases;
    ``M'`` is linear in the next basis' ``C C^T``, so their mean is ``M'`` in
    the mean of the halves' ``C C^T``: the next node's basis to first order,
    not exactly its final one.

    Parameters
    ----------
    chained : bool
        Whether the halves used the next node's two half bases.
    """

    def __init__(self, chained):
        self.chained = chained
        self.sums = [0, 0]
        self.rounds = ([], [])  # per half: (top Lambdas, top subspace) of each round
        self.last = None

    @property
    def count(self):
        """Rounds run."""
        return len(self.rounds[0]) + len(self.rounds[1])

    def add(self, half, m_round, basis):
        """Add one round's ``M'`` and its fitted ``basis`` to ``half``."""
        self.sums[half] = self.sums[half] + m_round
        top = basis.kept_matrix[:, :_KEPT_COLUMNS]
        self.rounds[half].append((basis.lambdas[:AUTO_TOP_K], top))

    def mean(self):
        """The mean of all rounds: the estimate of ``M'``."""
        return (self.sums[0] + self.sums[1]) / self.count

    def estimate(self, basis_of):
        """Check the rounds so far (see :func:`converged_m_prime`): an :class:`_Estimate`.

        The mean's estimated error: this section's own part from the spread of
        rounds that share a next basis (all of them, or in a chain each half's),
        the inherited part from the halves' difference.

        - Of the top Lambdas (relative to the largest): the larger of the
          standard error of the rounds' top-``k`` Lambdas and, in a chain, half
          the halves' largest difference (they differ by twice the mean's error).
        - Of the top-``k`` subspace: the larger of each round's angle to its
          group's mean, in quadrature over ``sqrt(rounds)``, and half the
          halves' angle (their mean's is about half theirs).
        """
        mean = basis_of(self.mean())
        scale = max(mean.lambdas[0], _TINY)
        halves = tuple(basis_of(self.sums[h] / len(self.rounds[h])) for h in (0, 1))
        # Rounds that share a next basis: all of them, or, in a chain, each half's.
        groups = self.rounds if self.chained else (self.rounds[0] + self.rounds[1],)
        group_means = halves if self.chained else (mean,)
        own = self._own_lambda_error(groups) / scale
        lambda_error = own
        if self.chained:
            k = min(AUTO_TOP_K, len(halves[0].lambdas), len(halves[1].lambdas))
            # Each half's mean has twice the variance of the whole mean, so the halves
            # differ by twice its error in spread: half their largest difference.
            difference = halves[0].lambdas[:k] - halves[1].lambdas[:k]
            lambda_error = _larger(own, float(np.max(np.abs(difference))) / scale / 2)
        cut = _gapped_top(mean.lambdas[: mean.n_components], LAMBDA_MARGIN * lambda_error * scale)
        own_sine = self._own_sine(cut, groups, group_means)
        # The halves' angle shrinks by half in the mean of both.
        kept = [half.kept_matrix for half in halves]
        sine = _larger(own_sine, _largest_sine(cut, *kept) / 2)
        cosine = float(np.sqrt(max(0.0, 1 - sine**2)))
        converged = _within(lambda_error, cosine)
        # In a chain, own error within half the tolerances: more rounds cannot do much.
        settled = self.chained and LAMBDA_MARGIN * own <= AUTO_LAMBDA_TOLERANCE / 2
        settled = settled and own_sine <= _TOLERATED_SINE / 2
        self.last = _Estimate(lambda_error, cosine, converged, settled, halves)
        return self.last

    def _own_lambda_error(self, groups):
        """The standard error of the mean's top Lambdas from this section's own sources
        (the largest of theirs): the rounds' spread within their ``groups`` (same next
        basis), pooled; infinite while no group has two rounds."""
        dof = self.count - len(groups)
        if dof < 1:
            return np.inf
        k = min(len(top) for group in groups for top, _ in group)
        tops = [np.array([top[:k] for top, _ in group]) for group in groups]
        deviations = np.concatenate([t - t.mean(axis=0) for t in tops])
        variance = (deviations**2).sum(axis=0) / dof
        return float(np.sqrt(variance.max() / self.count))

    def _own_sine(self, k, groups, group_means):
        """The estimated sine of the mean's top-``k`` angle from this section's own
        sources: each round's angle to its group's mean (``n / (n - 1)`` undoes the
        mean's share of it), in quadrature, shrunk by ``sqrt(rounds)``; infinite
        while no group has two rounds."""
        if self.count - len(groups) < 1:
            return np.inf
        squares = [
            _largest_sine(k, subspace, group_mean.kept_matrix) ** 2 * len(group) / (len(group) - 1)
            for group, group_mean in zip(groups, group_means)
            if len(group) > 1
            for _, subspace in group
        ]
        return float(np.sqrt(np.mean(squares) / self.count))


def _within(lambda_error, cosine):
    """Whether estimated errors meet the tolerances (the Lambda's with its margin)."""
    return LAMBDA_MARGIN * lambda_error <= AUTO_LAMBDA_TOLERANCE and cosine >= AUTO_COSINE


def _larger(own, between):
    """The larger of an own and a halves' estimate; the halves' alone where the own
    one cannot be had yet (infinite: one round per half, in a chain)."""
    return between if np.isinf(own) else max(own, between)


#: The top columns kept of each round's basis, for its angle to the mean.
_KEPT_COLUMNS = 4 * AUTO_TOP_K
_TOLERATED_SINE = float(np.sqrt(1 - AUTO_COSINE**2))


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


def _largest_sine(k, a, b):
    """The sine of the largest principal angle between the spans of the first ``k``
    columns of two kept matrices (fewer where either has fewer)."""
    k = max(1, min(k, a.shape[1], b.shape[1]))
    return np.sin(float(np.max(scipy.linalg.subspace_angles(a[:, :k], b[:, :k]))))
