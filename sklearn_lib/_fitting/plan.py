"""What a fit will run, decided once and said before it runs: passes, Jacobian rows, time.

The cost of a LIB fit on a model without closed forms is set by its
backward passes: every batch of a section's ``M'`` pass runs one backward
pass per *row*, and the exact ``M'`` has ``P_out * k_next`` rows (output
positions times next-layer features), where ``n_stochastic_sources=S`` runs
``S``.  :func:`make_plan` turns the route table and the settings into a
:class:`FitPlan`, every decision of the fit in one object: which sections
the statistics pass gathers, which take a pass of their own, exact or with
sources (and why), how many backward rows per batch, whether the rows serve
the edges.  :func:`~sklearn_lib._fitting.fit.fit_bases` executes it as it
stands.

A fit of a language model with many positions and a wide output can take
minutes, so it says so at the start: :func:`announce` reports the plan on
the progress lines when ``verbose`` is on and, when the fit is estimated to
take longer than :data:`LONG_FIT_SECONDS`, also without it, through the
``"sklearn_lib"`` logger at level WARNING (shown by Python's default
handler; ``logging.getLogger("sklearn_lib").setLevel(logging.ERROR)``
silences it).
"""

import logging
import math
from dataclasses import dataclass, replace

from .._core.distributed import distributed
from .._core.gram_sum import LOW_PRECISION_RTOL
from .._core.nodes import n_positions
from .._core.numerics import ROW_REUSE_BYTES
from .._routes.integration import is_plain
from .._routes.table import ROW_ROUTES
from .basis import EIGH_COST, PRODUCT_COST
from .stochastic import (
    AUTO_COSINE,
    AUTO_LAMBDA_TOLERANCE,
    AUTO_MAX_ROUNDS,
    AUTO_MIN_ROUNDS,
    AUTO_SOURCES,
    AUTO_TOP_K,
    LAMBDA_MARGIN,
    STOCHASTIC_BATCH_SIZE,
    m_prime_route,
    round_sources,
)

#: Dense float64 operations per second, for the estimate of the bases' linear algebra:
#: 2 CPU cores do about 1e11 (measured at 4096: a matrix product in 1.3 s, an
#: eigendecomposition with numpy's LAPACK in 6.9 s; see ``basis.EIGH_COST``).
DENSE_FLOPS = 1e11


def dense_seconds(width, basis="lib", cost=None):
    """Estimated seconds of one basis' linear algebra on a node layer of ``width`` features.

    LIB: two eigendecompositions and five matrix products (``M``'s two,
    ``C``, ``C+``, and a closed form's ``C C^T``; its ``W^T X W`` is whitened
    factored, three products for ``M``'s two and ``M'``'s two); PCA: one
    eigendecomposition.  ``cost``: of one step instead, in ``d^3`` operations.
    """
    if cost is None:
        cost = 2 * EIGH_COST + 5 * PRODUCT_COST if basis == "lib" else EIGH_COST
    return cost * width**3 / DENSE_FLOPS


#: Fits estimated to take longer than this announce their plan even when not verbose.
LONG_FIT_SECONDS = 10.0

logger = logging.getLogger("sklearn_lib")


@dataclass(frozen=True)
class SectionPlan:
    """How one section's ``M'`` is made.

    Attributes
    ----------
    section : Section
    route : str
        How ``M'`` is made: ``"statistics pass"`` (a closed form's statistics,
        gathered before any basis) or the route's own
        (:attr:`SectionRoute.m_prime <sklearn_lib._routes.table.SectionRoute.m_prime>`).
    sources : int, "auto" or None
        None: exact; an int: random sources per batch; ``"auto"``: rounds.
    why : str
        Why exact or stochastic.
    joins : bool
        Whether the statistics pass gathers it (no pass of its own).
    keep_rows : bool
        Whether the rows it makes are kept for the edges (``compute_graph``).
    seconds : float or None
        Estimated time of its pass; None where not priced (a route without
        backward rows, rounds, or data of unknown size).
    factor_width : int or None
        Route ``"final linear"``: the inputs of the final map, the most rows
        per output position its exact ``M'`` needs.
    per_sample : bool
        Whether random sources are drawn for each sample of a batch apart (the
        route takes rows per sample): ``n`` times the draws for the same work.
    shared_positions : bool
        Route ``"final linear"``: the map's input keeps positions apart, so each
        exact row serves every output position (``factor_width`` rows in all).
    round_sources : int
        ``"auto"``: sources per batch of each round
        (:func:`~sklearn_lib._fitting.stochastic.round_sources`).
    """

    section: object
    route: str
    sources: object
    why: str
    joins: bool
    keep_rows: bool = False
    seconds: float | None = None
    factor_width: int | None = None
    per_sample: bool = False
    shared_positions: bool = False
    round_sources: int = AUTO_SOURCES

    @property
    def exact(self):
        return self.sources is None

    @property
    def passes(self):
        """Passes of its own: 0 when gathered, at least the fewest rounds for ``"auto"``."""
        if self.joins:
            return 0
        return AUTO_MIN_ROUNDS if self.sources == "auto" else 1

    @property
    def backward_rows(self):
        """Backward passes per batch: 0 on routes without them, None for rounds.

        Autograd: one per row, exact (an upper bound: ``P_out`` times the next
        node's *full* width, whose kept features are not known before it is
        fitted, see :meth:`rows_per_pass`) or one per source.  The affine
        route makes exact rows once per pass (see :meth:`rows_per_pass`), but sampled
        ones, new every batch, on one sample per batch.
        """
        return self._rows_per_batch(self.section.dst_shape[-1])

    def exact_rows_per_batch(self, kept=None):
        """Backward passes per batch of the exact ``M'`` on this route, with the next
        node's ``kept`` features (None: its full width, an upper bound): what
        ``"auto"``'s rounds may cost at most."""
        width = self.section.dst_shape[-1] if kept is None else kept
        return replace(self, sources=None)._rows_per_batch(width)

    def rows_per_pass(self, n_batches, kept=None):
        """Backward passes of one pass over ``n_batches`` batches (None for rounds).

        ``kept``: the next node's kept features, once fitted (exact rows are
        ``P_out`` times them); None gives the upper bound of the full width.
        """
        width = self.section.dst_shape[-1] if kept is None else kept
        per_batch = self._rows_per_batch(width)
        return None if per_batch is None else per_batch * n_batches + self._rows_once(width)

    def _rows_per_batch(self, width):
        if self.sources == "auto":
            return None
        if self.route == "final linear" and self.exact:
            positions = 1 if self.shared_positions else n_positions(self.section.dst_shape)
            return positions * min(width, self.factor_width)
        if self.route in ROW_ROUTES:
            return n_positions(self.section.dst_shape) * width if self.exact else self.sources
        if self.route == "affine" and not self.exact:
            return self.sources
        return 0

    def _rows_once(self, width):
        if self.route == "affine" and self.exact:
            return n_positions(self.section.dst_shape) * width
        return 0

    def draws_per_round(self, n_samples, batch_size):
        """Independent draws of one round of ``"auto"`` over ``n_samples`` in batches
        of ``batch_size``: its sources for each sample, or for each batch where a
        batch shares them; None where the data's size is not known."""
        if n_samples is None or (batch_size is None and not self.per_sample):
            return None
        units = n_samples if self.per_sample else -(-n_samples // batch_size)
        return self.round_sources * units

    def describe(self, n_samples=None, batch_size=None):
        """How its ``M'`` is made, in words (with the draws of a round, where the
        data's ``n_samples`` and ``batch_size`` are given)."""
        how = self._how(self.draws_per_round(n_samples, batch_size))
        if self.per_sample:
            how += ", drawn for each sample apart"
        if self.joins and self.route != "statistics pass":
            how += ", within the statistics pass"
        return f"{self.section}: {how}"

    def _how(self, draws=None):
        sampled = self.sources is not None and self.sources != "auto"
        if self.sources == "auto":
            exact_rows = self.exact_rows_per_batch()
            # Pairs of rounds, each pair as long as it stays within the exact rows.
            most = min(AUTO_MAX_ROUNDS, max(AUTO_MIN_ROUNDS, exact_rows // (2 * AUTO_SOURCES) * 2))
            draws = "" if draws is None else f" ({draws:,} draws per round)"
            how = (
                f"rounds of {self.round_sources} random sources per batch{draws}, "
                f"{AUTO_MIN_ROUNDS} to {most}, or the exact M' where cheaper "
                f"({exact_rows:,} rows per batch at most)"
            )
        elif self.route == "autograd" and sampled:
            how = f"{self.sources:,} random sources per batch, a backward row each"
        elif self.route == "autograd":
            how = f"up to {self.backward_rows:,} backward rows per batch"
        elif self.route == "closed-form rows" and not sampled:
            how = f"up to {self.backward_rows:,} rows per batch by closed-form rows"
        elif self.route == "final linear":
            each = ", each at every position" if self.shared_positions else ""
            how = (
                f"up to {self.backward_rows:,} backward rows per batch through the final "
                f"linear map's {self.factor_width} inputs{each} (instead of "
                f"{self.section.exact_rows:,})"
                if self.exact
                else f"{self.sources:,} random sources per batch through the final linear map"
            )
        elif self.route == "affine" and sampled:
            how = f"affine, {self.sources:,} random sources per batch on one sample"
        else:
            how = _ROUTE_WORDS[self.route]
            how += f" ({self.sources:,} random sources per batch)" if sampled else ""
        return how


_ROUTE_WORDS = {
    "statistics pass": "by closed form within the statistics pass",
    "closed form": "by closed form",
    "closed-form rows": "by closed-form rows",
    "affine": "affine, its rows made once",
}


@dataclass(frozen=True)
class FitPlan:
    """Every decision of one fit (see the module docstring)."""

    owner: str
    n_samples: int | None
    sections: tuple = ()
    batch_size: int | None = None
    #: With ``compute_graph``: the sections whose edges take one more pass (the
    #: others come from their ``M'`` rows, see :attr:`SectionPlan.keep_rows`).
    edges_pass: tuple = ()
    #: Whether the fit asked for stochastic sources (an int, or ``"auto"``).
    sources_asked: bool = False
    #: Estimated seconds of the bases' linear algebra (:func:`dense_seconds`).
    linear_algebra: float = 0.0
    #: The dtype Grams may be multiplied in where certified: the fit's compute
    #: dtype (see :class:`~sklearn_lib._core.gram_sum.GramSum`); float64 products
    #: only where it is ``"float64"``.
    gram_dtype: str = "float64"
    #: Whether the statistics pass takes the output's Gram (``output_basis="pca"``).
    output_gram: bool = False
    #: Why the batch is as small as it is, where ``batch_size="auto"`` chose fewer samples
    #: than its usual floor (said in :meth:`describe`).
    batch_note: str = ""

    @property
    def stochastic(self):
        """Whether the fit draws stochastic sources: wherever it asked for them, also
        under ``"auto"`` where every section ends exact."""
        return self.sources_asked or any(s.sources is not None for s in self.sections)

    @property
    def most_batch_size(self):
        """The largest batch ``batch_size="auto"`` may take for this plan, or None:
        :data:`~sklearn_lib._fitting.stochastic.STOCHASTIC_BATCH_SIZE` where it draws
        sources (their error shrinks with the number of batches)."""
        return STOCHASTIC_BATCH_SIZE if self.stochastic else None

    def with_batch_size(self, batch_size, note=""):
        """This plan, with the batch size the fit chose for it and why (``note``), both
        said in :meth:`describe`."""
        return replace(self, batch_size=batch_size, batch_note=note)

    @property
    def passes(self):
        """Passes over the data: the statistics pass, the sections' own (rounds: at least
        their fewest), and the edges' pass."""
        return 1 + sum(s.passes for s in self.sections) + bool(self.edges_pass)

    @property
    def gathered(self):
        """Section sources whose ``M'`` the statistics pass gathers."""
        return tuple(s.section.src for s in self.sections if s.joins)

    def section(self, section):
        """The :class:`SectionPlan` of ``section``."""
        return next(s for s in self.sections if s.section.src == section.src)

    @property
    def seconds(self):
        """Estimated time of the ``M'`` passes by autograd rows and of the bases' linear
        algebra (where a second or more), or None when not known.

        Sections that a route without rows serves count as free: they cost a
        forward pass, which the estimate leaves out everywhere.
        """
        times = [s.seconds for s in self.sections if s.route in ROW_ROUTES]
        times += [None for s in self.sections if s.sources == "auto"]  # rounds: unknown
        if None in times:
            return None  # a part not priced: no estimate rather than a low one
        dense = self.linear_algebra if self.linear_algebra >= 1 else 0.0
        total = sum(times) + dense
        return total if times or dense else None

    def describe(self):
        """One line: the passes, each section's ``M'``, the estimate and the levers."""
        samples = "a stream" if self.n_samples is None else f"{self.n_samples:,} samples"
        at_least = "at least " if any(s.sources == "auto" for s in self.sections) else ""
        line = f"fitting runs {at_least}{self.passes} pass(es) over {samples}"
        if self.batch_size is not None:
            line += f" in batches of {self.batch_size:,}"
            line += f" ({self.batch_note})" if self.batch_note else ""
        elif self.n_samples is not None:
            line += " in the stream's batches"
        if self.sections:
            words = [s.describe(self.n_samples, self.batch_size) for s in self.sections]
            line += "; " + ", ".join(words)
        if any(s.sources == "auto" for s in self.sections):
            line += (
                f"; rounds stop where {LAMBDA_MARGIN:g} times the estimated error of the "
                f"top {AUTO_TOP_K} Lambdas is within {AUTO_LAMBDA_TOLERANCE:.0%} of the "
                f"largest and their subspace's cosine at least {AUTO_COSINE}, with what a "
                "node inherits from the next node's rounds"
            )
        line += _edges_words(self)
        if self.gram_dtype != "float64":
            line += (
                f"; Grams multiplied in {self.gram_dtype} where a Gram's first rows certify "
                f"them within {LOW_PRECISION_RTOL:g} in every direction, else in float64 "
                "(each said after its pass), summed in float64"
            )
        if self.seconds is not None:
            line += f"; estimated {duration(self.seconds)}"
            if self.linear_algebra >= 1:
                line += f" ({duration(self.linear_algebra)} of it the bases' linear algebra)"
            if any(s.exact and s.route in ROW_ROUTES for s in self.sections):
                line += " (n_stochastic_sources=S runs S rows per batch instead)"
        return line


def _edges_words(plan):
    """Where a fit with ``compute_graph`` takes the edges from, in words."""
    kept = [str(s.section) for s in plan.sections if s.keep_rows]
    words = ""
    if plan.edges_pass:
        words += f"; the edges of {', '.join(map(str, plan.edges_pass))} in one more pass"
    if kept:
        words += (
            f"; the edges of {', '.join(kept)} from the rows of M' (kept up to "
            f"{ROW_REUSE_BYTES >> 30} GiB a section; past that, they take one more pass)"
        )
    return words


def make_plan(
    owner,
    sections,
    routes,
    settings,
    n_samples,
    *,
    batch_size=None,
    price=None,
    compute_graph=False,
    gram_dtype="float64",
):
    """The :class:`FitPlan` of a fit.

    Parameters
    ----------
    owner : str
    sections : tuple of Section
        With their shapes.
    routes : RouteTable or None
        None for a PCA fit (no Jacobians).
    settings : FitSettings
    n_samples : int or None
    batch_size : int, optional
    price : callable, optional
        ``price(route, n_rows, exact=..., repeats=None)``: seconds per row and
        sample of the section's ``M'`` on the route that will run (``exact``: with
        the exact rows; best of ``repeats`` timings), or None (see
        :func:`~sklearn_lib._fitting.fit.row_seconds`).  One row prices the
        fit roughly; a fit that might be long (over a tenth of
        :data:`LONG_FIT_SECONDS`) is priced again with four rows.
    compute_graph : bool
        Whether the fit also gives the edges.
    gram_dtype : str, default="float64"
        The fit's compute dtype, which Grams are multiplied in where certified.
    """
    dense = sum(dense_seconds(s.src_shape[-1], settings.basis) for s in sections)
    pca = settings.output_basis == "pca"
    if settings.basis != "lib":
        edges = tuple(sections) if compute_graph else ()
        return FitPlan(owner, n_samples, (), batch_size, edges, False, dense, gram_dtype, pca)
    plans = tuple(
        _section_plan(
            section,
            routes[section],
            settings,
            n_samples=n_samples,
            price=price,
            compute_graph=compute_graph,
        )
        for section in sections
    )
    edges_pass = tuple(s.section for s in plans if compute_graph and not s.keep_rows)
    asked = settings.n_stochastic_sources is not None
    return FitPlan(owner, n_samples, plans, batch_size, edges_pass, asked, dense, gram_dtype, pca)


def _section_plan(section, route, settings, *, n_samples, price, compute_graph):
    # The routes are the same on every rank (the route table agrees them), so
    # every decision below is too, and all ranks run the same passes.
    gathered = route.gathers_statistics and settings.n_stochastic_sources in (None, "auto")
    # On several processes neither a shard's sample count nor a timing decides (they
    # differ between ranks, and so would their passes): the counts do.
    alone = not distributed()
    auto = settings.n_stochastic_sources == "auto" and alone
    per_round = round_sources(route.sources_per_sample, n_samples) if auto else AUTO_SOURCES
    if gathered:
        sources, why = None, "exact: its closed form's statistics are gathered before any basis"
    else:
        sources, why = m_prime_route(
            settings.n_stochastic_sources, section, route.row_free, route.exact_rows
        )
    # The output's basis is known before any data is read (identity): the last
    # section's M' joins the statistics pass, unless rounds need passes of their own.
    last = section.to_output and settings.output_basis == "identity" and sources != "auto"
    # Kept rows serve the edges only at the fit's own points (the plain gradient)
    # and exact; a Gram without rows leaves none.
    keep = compute_graph and is_plain(settings.rule) and sources is None
    keep = keep and route.makes_rows and not gathered
    how = "statistics pass" if gathered else route.m_prime
    final = how == "final linear"  # its width and positions, once checked on the probe
    width = route.gram.width if final else None
    per_sample = sources is not None and route.sources_per_sample
    plan = SectionPlan(
        section, how, sources, why, gathered or last, keep, factor_width=width,
        per_sample=per_sample, shared_positions=route.shares_positions,
        round_sources=per_round,
    )  # fmt: skip
    priced = plan.route in ROW_ROUTES
    if price is None or n_samples is None or not priced:
        return plan
    if plan.sources == "auto" and plan.shared_positions and alone:
        return _auto_or_exact(plan, route, settings, n_samples, price, compute_graph)
    if plan.sources == "auto":
        return plan
    return _priced(plan, route, n_samples, price)


def _auto_or_exact(plan, route, settings, n_samples, price, compute_graph):
    """``"auto"``'s plan of a final map whose exact rows each serve every position, or the
    exact plan where its price is at most half that of the fewest rounds (each a pass of
    :attr:`SectionPlan.round_sources` rows per batch).

    Its rows go back through the map's input alone (a final LayerNorm), while each pass
    runs the map (a vocabulary wide): GPT-2's 768 exact rows cost less than 4 passes of
    16.  Counts cannot tell that; the prices can.  Only here, and only by half, so that
    timing noise does not decide between them: elsewhere the counts decide, and a fit
    with the same ``random_state`` runs the same plan.  The rounds' passes also run the
    model up to the section, which their price leaves out: the choice leans to rounds.
    """
    exact = _section_plan(
        plan.section,
        route,
        replace(settings, n_stochastic_sources=None),
        n_samples=n_samples,
        price=price,
        compute_graph=compute_graph,
    )
    rounds = _priced(replace(plan, sources=plan.round_sources), route, n_samples, price).seconds
    if exact.seconds is None or rounds is None:
        return plan
    rounds *= AUTO_MIN_ROUNDS
    if exact.seconds > rounds / AUTO_EXACT_MARGIN:
        return plan
    why = f"exact: priced at {duration(exact.seconds)}, the fewest rounds at {duration(rounds)}"
    return replace(exact, why=why)


#: ``"auto"`` takes the exact ``M'`` where priced below the fewest rounds by this factor.
AUTO_EXACT_MARGIN = 2


def _priced(plan, route, n_samples, price):
    """``plan`` with the estimated seconds of its rows (see :func:`_marginal_times`)."""
    # One backward pass per row and batch: the cost grows as rows * samples.
    exact = plan.sources is None
    # One feature at every position, or a final map's whole exact pass: best of two.
    once = exact and (route.exact_per_position or route.shares_positions)
    # One row a batch: the marginal split below would give one row's price again (6 more
    # timings on the probe for the same figure, a pass's worth on a language model).
    refine = not once and plan.backward_rows > 1
    one = price(route, 1, exact=exact, repeats=None if refine else 2)
    seconds = _times(plan.backward_rows * n_samples, one)
    if seconds is not None and seconds > LONG_FIT_SECONDS / 10 and refine:
        # Both best of three: their difference is small where the forward dominates.
        one = price(route, 1, exact=exact, repeats=3)
        four = price(route, 4, exact=exact)
        seconds = _marginal_times(plan.backward_rows, n_samples, one, four)
    return replace(plan, seconds=seconds)


def _times(row_samples, seconds_per_row_sample):
    return None if seconds_per_row_sample is None else row_samples * seconds_per_row_sample


def _marginal_times(rows, n_samples, one, four):
    """Seconds of ``rows`` rows on ``n_samples`` samples from the prices (per row and
    sample) of one row and of four: a row costs what four cost over one, a third of it,
    and the rest of one row's price (the section's forward, the Gram's own work) is paid
    once per sample, however many rows.  Where noise makes that split meaningless, four
    rows' price per row."""
    if one is None or four is None:
        return _times(rows * n_samples, four)
    marginal = (4 * four - one) / 3
    if not 0 < marginal <= one:
        return _times(rows * n_samples, four)
    return n_samples * ((one - marginal) + rows * marginal)


def announce(plan, progress, routes=None):
    """Say the plan: on the progress lines when verbose (with the route table's
    checks), else only for a long fit."""
    if progress.enabled:
        progress(plan.describe())
        if routes is not None:
            for line in routes.summary().splitlines():
                progress(f"route {line}")
    elif plan.seconds is not None and plan.seconds > LONG_FIT_SECONDS:
        logger.warning(
            f"[{plan.owner}] {plan.describe()}. verbose=True reports the progress of each pass."
        )


def n_samples_of(source):
    """Samples in ``source`` where known before a pass (a stream's data set's length)."""
    if source.n_samples is not None:
        return source.n_samples
    dataset = getattr(getattr(source, "stream", None), "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an IterableDataset without a length
        return None


def duration(seconds):
    """``seconds`` in words: seconds, minutes or hours, rounded."""
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
