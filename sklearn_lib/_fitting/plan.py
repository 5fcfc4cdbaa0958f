"""What a fit will run, said before it runs: passes over the data, Jacobian rows, time.

The cost of a LIB fit on a model without closed forms is set by its
backward passes: every batch of a section's ``M'`` pass runs one backward
pass per *row*, and the exact ``M'`` has ``P_out * k_next`` rows (output
positions times next-layer features), where ``n_stochastic_sources=S`` runs
``S``.  A fit of a language model with many positions and a wide output can
take minutes, so it says so at the start: :func:`announce` reports the plan
on the progress lines when ``verbose`` is on and, when the fit is estimated
to take longer than :data:`LONG_FIT_SECONDS`, also without it, through the
``"sklearn_lib"`` logger at level WARNING (shown by Python's default
handler; ``logging.getLogger("sklearn_lib").setLevel(logging.ERROR)``
silences it).
"""

import logging
import math
from dataclasses import dataclass

from .._core.nodes import OUTPUT_NODE, n_positions

#: Fits estimated to take longer than this announce their plan even when not verbose.
LONG_FIT_SECONDS = 10.0

#: ``n_stochastic_sources="auto"``: sources per batch in each round (one pass), and the
#: fewest and most rounds.
AUTO_SOURCES, AUTO_MIN_ROUNDS, AUTO_MAX_ROUNDS = 16, 4, 64


def auto_stays_exact(exact_rows):
    """Whether ``n_stochastic_sources="auto"`` computes a section of ``exact_rows`` exactly.

    It runs at least :data:`AUTO_MIN_ROUNDS` rounds of :data:`AUTO_SOURCES`
    rows per batch, so up to that many exact rows cost no more (measured on
    the paper's attention, 29 rows: rounds took 3x the exact fit's time).
    """
    return exact_rows <= AUTO_MIN_ROUNDS * AUTO_SOURCES


logger = logging.getLogger("sklearn_lib")


@dataclass(frozen=True)
class SectionPlan:
    """The ``M'`` pass of one section.

    Attributes
    ----------
    src, dst : str
        The section's node layers (``dst`` may be ``"output"``).
    rows : int or None
        Backward passes per batch (an upper bound when exact: the next
        node's kept features are not known before it is fitted); None for
        ``n_stochastic_sources="auto"``, which runs rounds until it converges.
    exact : bool
    seconds : float or None
        Estimated time of the pass; None where a closed form may serve the
        section (then it is much faster than autograd) or the data's size
        is not known.
    route : str or None
        How the section is served without a backward pass per row (a closed
        form, the affine route), or None for autograd rows.
    """

    src: str
    dst: str
    rows: int
    exact: bool
    seconds: float | None
    route: str | None = None  # a route without a backward pass per row, when one serves


@dataclass(frozen=True)
class FitPlan:
    """Passes and rows of one fit (see the module docstring)."""

    owner: str
    passes: int
    n_samples: int | None
    sections: tuple
    gathered: tuple = ()  # section sources whose M' the statistics pass gathers

    @property
    def seconds(self):
        """Estimated time of the ``M'`` passes by autograd rows, or None when not known.

        Sections that a route without rows serves count as free: they cost a
        forward pass, which the estimate leaves out everywhere.
        """
        times = [s.seconds for s in self.sections if s.route is None]
        return None if not times or None in times else sum(times)

    def describe(self):
        """One line: the passes, the rows of each section, the estimate and the levers."""
        samples = "a stream" if self.n_samples is None else f"{self.n_samples:,} samples"
        parts = [
            f"{section.src!r} -> {section.dst!r}: "
            + (
                section.route
                if section.route is not None
                else "rounds of random sources until the basis stops moving"
                if section.rows is None
                else f"{'up to ' if section.exact else ''}{section.rows:,} backward rows per batch"
            )
            for section in self.sections
        ]
        at_least = "at least " if any(s.rows is None for s in self.sections) else ""
        line = f"fitting runs {at_least}{self.passes} pass(es) over {samples}"
        if parts:
            line += "; " + ", ".join(parts)
        if self.gathered:
            names = ", ".join(repr(name) for name in self.gathered)
            line += f"; the M' of {names} by closed form within the first pass"
        if self.seconds is not None:
            line += f"; estimated {_duration(self.seconds)}"
            if any(section.exact and section.route is None for section in self.sections):
                line += " (n_stochastic_sources=S runs S rows per batch instead)"
        return line


def fit_plan(
    owner, names, shapes, output_shape, settings, source, row_seconds, one_pass=(), routes=None
):
    """The plan of a fit (see :class:`FitPlan`).

    Parameters
    ----------
    owner : str
    names : list of str
        Node layers in forward order.
    shapes : dict of str to tuple
        Their per-sample activation shapes (features last).
    output_shape : tuple
    settings : FitSettings
    source : ArraySource or StreamSource
    row_seconds : dict of str to callable
        Per section source that autograd serves (no closed form may): a
        function of ``n`` that times ``n`` Jacobian rows on the probe and
        returns the seconds per row and sample (None if it could not).  One row prices the fit
        roughly; a fit that might be long (over a tenth of
        :data:`LONG_FIT_SECONDS`) is priced again with more rows, best of
        three.
    one_pass : collection of str
        Section sources whose ``M'`` the statistics pass gathers (a closed
        form): no pass and no rows of their own.
    routes : dict of str to str, optional
        Per section source, how a route without a backward pass per row
        serves it (see :attr:`SectionPlan.route`).
    """
    routes = routes or {}
    if settings.basis != "lib":
        return FitPlan(owner, 1, _n_samples(source), ())
    # The statistics pass; the last section joins it when the output basis is known.
    n_samples = _n_samples(source)
    sections = []
    passes = 1
    for src, dst in zip(names, [*names[1:], OUTPUT_NODE]):
        if src in one_pass:
            continue
        dst_shape = output_shape if dst == OUTPUT_NODE else shapes[dst]
        sources = settings.n_stochastic_sources
        exact_rows = n_positions(dst_shape) * dst_shape[-1]
        if sources == "auto" and (auto_stays_exact(exact_rows) or src not in row_seconds):
            sources = None  # exact: cheaper than rounds of sources, or a closed form's
        exact = sources is None
        rows = exact_rows if exact else sources
        joins = dst == OUTPUT_NODE and settings.output_basis == "identity" and exact
        passes += AUTO_MIN_ROUNDS if sources == "auto" else (0 if joins else 1)
        seconds = None
        if sources == "auto":
            rows = None  # rounds until the basis stops moving: not known before
        elif n_samples is not None and src in row_seconds:
            # One backward pass per row and batch: the cost grows as rows * samples.
            seconds = _price(rows * n_samples, row_seconds[src](1))
            if seconds is not None and seconds > LONG_FIT_SECONDS / 10:
                seconds = _price(rows * n_samples, row_seconds[src](4))
        sections.append(SectionPlan(src, dst, rows, exact, seconds, routes.get(src)))
    gathered = tuple(name for name in names if name in one_pass)
    return FitPlan(owner, passes, n_samples, tuple(sections), gathered)


def _price(row_samples, seconds_per_row_sample):
    return None if seconds_per_row_sample is None else row_samples * seconds_per_row_sample


def announce(plan, progress):
    """Say the plan: on the progress lines when verbose, else only for a long fit."""
    if progress.enabled:
        progress(plan.describe())
    elif plan.seconds is not None and plan.seconds > LONG_FIT_SECONDS:
        logger.warning(
            f"[{plan.owner}] {plan.describe()}. verbose=True reports the progress of each pass."
        )


def _n_samples(source):
    if source.n_samples is not None:
        return source.n_samples
    dataset = getattr(getattr(source, "stream", None), "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an IterableDataset without a length
        return None


def _duration(seconds):
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
