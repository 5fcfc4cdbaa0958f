"""The LIB algorithm as functions: node layers and data in, one :class:`NodeBasis` per node out.

A fit runs in three steps, each a function here, called in order by the
estimator:

1. :func:`inspect`: shapes of the node layers and the output on the probe,
   and the cut checks;
2. the route table (:func:`~sklearn_lib._routes.table.decide_routes`), the
   plan (:func:`plan_fit`), which holds every decision of the fit, and the
   batch size it allows (:func:`bytes_per_sample`);
3. :func:`fit_bases`, which executes the plan.

The bases are computed backwards from the model output, because each needs
the next one's.  The statistics pass reads every node layer once (mean and
Gram of each, mean of the output) and gathers what the plan joins to it: a
closed form's statistics (a Linear -> elementwise section's slopes, which
give its ``M'`` for any next basis at no cost, so an MLP chain fits in one
pass), and the last section's ``M'`` when the output basis is the identity,
known before any data is read.  Every other section's ``M'`` takes one pass
over the data in the next basis (or rounds of passes, for
``n_stochastic_sources="auto"``).
"""

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._core.identity import Identity, as_tensor
from .._core.nodes import OUTPUT_NODE, n_positions, sections_of
from .._model.batching import WORKING_SET_FACTOR, peak_bytes_per_sample, saved_bytes_per_sample
from .._model.capture import check_cut, check_gradient_flow, inspect_node_layers
from .._model.failures import Exploratory
from .._model.inputs import take_rows
from .._model.session import outside_inference_mode
from .._routes.cotangents import Cotangents
from .._routes.integration import rule_tensors
from .._routes.jacobian import SectionJacobian
from .basis import (
    PRODUCT_COST,
    fit_node_basis,
    identity_basis,
    pca_output_basis,
    say_nothing,
)
from .jacobian_gram import JacobianGram
from .plan import dense_seconds, duration, make_plan, n_samples_of
from .stats import MomentAccumulator
from .stochastic import converged_m_prime, m_prime_sources

#: Node layers at least this wide report their basis' linear algebra (about a second).
WIDE_LAYER = 1024


@dataclass(frozen=True)
class FitSettings:
    """The estimator's parameters that shape a fit (see :class:`LIBTransformer`)."""

    basis: str = "lib"
    n_components: object = None
    truncation_threshold: float = 1e-10
    center: bool = True
    rule: tuple = ((1.0,), (1.0,))  # (alphas, weights)
    output_basis: str = "identity"
    n_stochastic_sources: object = None
    jacobian: str = "auto"


@dataclass
class FitResult:
    """What :func:`fit_bases` gives.

    Attributes
    ----------
    bases : dict of str to NodeBasis
        Forward order: the node layers, then ``"output"``.
    rounds : dict of str to SourceRounds
        With ``n_stochastic_sources="auto"``, per section that ran rounds.
    edges : dict
        The edges ``(E, N)`` of the sections whose rows the fit kept, by
        ``(src, dst)`` names: they need no pass of their own.
    """

    bases: dict
    rounds: dict = field(default_factory=dict)
    edges: dict = field(default_factory=dict)


#: Samples of the probe that the inspection and the cut and gradient checks run on.  They
#: are structural: a path around a node layer, samples that interact, a call order, show
#: on a few samples as on 64.  On the whole probe a language model's checks took a tenth
#: of a small fit, and at real width its inspection held 3.3 GB of logits.  Not fewer:
#: the checks compare the first half of these alone, and float32 products of 4 rows took
#: another kernel than of 8, off by 2.6e-3 where activations cancel (MKL, AVX-512).  Odd
#: and prime, so that no sequence length passes for the batch axis (which is checked by
#: its size).
CHECK_SAMPLES = 17


@outside_inference_mode
def inspect(session, probe, names, settings):
    """The sections between ``names``, with their shapes; for LIB, cut checks: all on the
    probe's first :data:`CHECK_SAMPLES` samples.

    Returns
    -------
    tuple of Section
    """
    if OUTPUT_NODE in names:
        raise ValueError(
            f"A node layer may not be called {OUTPUT_NODE!r}: that name is "
            "reserved for the model-output node"
        )
    checked = take_rows(probe, slice(0, CHECK_SAMPLES))
    with torch.no_grad():
        shapes, output_shape = inspect_node_layers(session, checked, names)
    sections = sections_of(names, shapes, output_shape)
    if settings.basis == "lib":
        for section in sections:
            with torch.no_grad():
                check_cut(session, checked, section, session.rng)
            check_gradient_flow(session, checked, section)
    return sections


@outside_inference_mode
def bytes_per_sample(session, probe, sections, plan):
    """What a fit's passes make autograd save per sample, at most, measured on the probe.

    Each section's graph, as its ``M'`` pass builds it (one at a time), or a
    pass without gradients (the statistics pass; later ``transform``,
    ``score`` and the ablations), measured by what the forward's tensors
    hold at once, whichever is more.
    Fits whose plan draws stochastic sources measure alike, plus the signs of
    sources drawn per sample (one byte each, held for the batch); their batch
    is capped by :attr:`~sklearn_lib._fitting.plan.FitPlan.most_batch_size`.
    """
    signs = max((_signs_bytes(s) for s in plan.sections), default=0) / WORKING_SET_FACTOR
    return signs + _saved_bytes(session, probe, sections, plan)


def _signs_bytes(section_plan):
    """Bytes per sample of the signs a section's sources drawn per sample take: one per
    source, output position and next feature (at most the next node's full width, or a
    final map's inputs)."""
    if not section_plan.per_sample:
        return 0
    auto = section_plan.sources == "auto"
    sources = section_plan.round_sources if auto else section_plan.sources
    *positions, width = section_plan.section.dst_shape
    features = min(width, section_plan.factor_width or width)
    return sources * math.prod(positions) * features


def _saved_bytes(session, probe, sections, plan):
    """What a fit's costliest pass holds per sample, in the units of saved bytes: a
    section graph's, or a pass without gradients (the statistics pass, and later
    ``transform``, ``score`` and the ablations)."""
    held = statistics_bytes(sections, session.dtype.itemsize, output_gram=plan.output_gram)
    # A forward pass without gradients: what it holds at once, temporaries included
    # (a conv net's maps, two at a time; autograd saves nothing to count there).
    # Twice: scoring and the ablations run the model twice a batch, as it is and
    # with the layer's activations replaced, and keep both outputs.
    with torch.no_grad():
        forward = peak_bytes_per_sample(probe, lambda: session.run(probe))
    passes = [2 * forward / WORKING_SET_FACTOR]
    # Sections whose closed form's statistics the statistics pass gathers build
    # no graph: a fit of only those (or PCA's) holds what that pass holds.
    gathered = {s.section.src for s in plan.sections if s.route == "statistics pass"}
    graphs = [s for s in sections if s.src not in gathered] if plan.sections else []
    if graphs:
        with torch.no_grad():
            acts = session.read(probe, [s.src for s in graphs])
        passes += [
            saved_bytes_per_sample(
                probe,
                functools.partial(
                    session.section, probe, s.src, f.detach().requires_grad_(True), s.dst
                ),
                session.weights,
            )
            for s, f in zip(graphs, acts)
        ]
    # The last section's graph may be built within the statistics pass: both at once.
    return held + max(passes)


def statistics_bytes(sections, element_size=8, output_gram=False):
    """What the statistics pass holds per sample, in the units of saved bytes.

    Every node layer's activations and the output, as the pass reads them
    (``element_size`` bytes each), and the float64 rows and centred rows of
    one Gram at a time (the widest); the output has a Gram only for
    ``output_basis="pca"``.  A forward pass has no backward working set, so
    this is divided by the factor that :func:`auto_batch_size` applies to
    what autograd saves.  (A forward pass without gradients saves nothing
    for autograd to count.)
    """
    layers = [math.prod(s.src_shape) for s in sections]
    output = math.prod(sections[-1].dst_shape)
    widest = max(layers + ([output] if output_gram else []))
    held = element_size * (sum(layers) + output) + 16 * widest
    return held / WORKING_SET_FACTOR  # a float: an int would be read as a batch size


@outside_inference_mode
def plan_fit(session, source, probe, sections, routes, settings, *, compute_graph=False):
    """The :class:`~sklearn_lib._fitting.plan.FitPlan` of :func:`fit_bases` on ``source``.

    Sections whose ``M'`` is made of rows are priced by timing rows on the
    probe, on their route (:func:`row_seconds`).
    """
    price = functools.partial(row_seconds, session, probe, settings)
    return make_plan(
        session.progress.owner,
        sections,
        routes,
        settings,
        n_samples_of(source),
        price=price,
        compute_graph=compute_graph,
        gram_dtype=str(session.dtype).removeprefix("torch."),
    )


def row_seconds(session, probe, settings, route, n_rows, *, exact=False, repeats=None):
    """Seconds per Jacobian row and probe sample of a section's ``M'``, on its route.

    Timed on the real computation (``n_rows`` random rows of the section's
    own width, the integration rule's points, the Gram), best of ``repeats``
    (default: three for more than one row, else one).  None when it fails:
    pricing never stops a fit, but says so (a warning naming the section and
    the reason); out of memory, ``KeyboardInterrupt`` and ``SystemExit``
    propagate.

    For an ``exact`` fit on a route whose exact rows cost less than random
    ones (they go back per output position, ``exact_per_position``), the rows
    timed are the exact rows of one next feature at every position (already
    ``P_out`` rows; best of two where ``n_rows`` asks for more than one), unless
    the section's width of them would not go back per position
    (``per_position_fits``).  A final map whose exact rows each serve every
    position (``shares_positions``) is timed on all of them, once per pass.
    """
    section = route.section
    exact_rows = Cotangents.identity(section.dst_shape, session.dtype, session.device)
    repeats = (3 if n_rows > 1 else 1) if repeats is None else repeats
    if exact and route.shares_positions:
        # A final map whose exact rows each serve every position: its whole exact pass,
        # timed.  A row's price would carry the map's forward (a vocabulary wide), most of
        # it, and the rows' own share would drown in its noise.
        seconds = _timed(session, probe, settings, route, exact_rows, min(repeats, 2))
        return None if seconds is None else seconds / route.exact_rows
    if exact and route.exact_per_position:
        one = Cotangents(exact_rows.matrix[:, :1], exact_rows.n_positions)
        seconds = _timed(session, probe, settings, route, one, min(repeats, 2))
        if route.rows.per_position_fits(exact_rows.matrix.shape[1]):
            return None if seconds is None else seconds / exact_rows.n_positions
    generator = torch.Generator().manual_seed(0)
    cotangents = m_prime_sources(exact_rows, n_rows, generator, features=route.source_features)
    seconds = _timed(session, probe, settings, route, cotangents, repeats)
    return None if seconds is None else seconds / n_rows


def _timed(session, probe, settings, route, cotangents, repeats):
    """Seconds per probe sample of the section's ``M'`` with ``cotangents``, best of
    ``repeats``, or None where it fails (with a warning; out of memory propagates)."""
    section = route.section
    timing = Exploratory(
        f"Timing the section {section.src!r} -> {section.dst_title} on the probe",
        "the fit goes on, without an estimate of that section's pass in its plan",
    )
    with timing:
        rule = rule_tensors(settings.rule, session.device)
        jacobian = SectionJacobian(session, route)
        with torch.no_grad():
            (f,) = session.read(probe, [section.src])
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            jacobian.gram_sum(probe, f, cotangents, rule)
            best = min(best, time.perf_counter() - start)
        return best / f.shape[0]
    return None


@outside_inference_mode
def fit_bases(session, source, sections, plan, routes, settings):
    """The basis of every node layer and of the output, as ``plan`` says.

    Parameters
    ----------
    session : ModelSession
    source : ArraySource or StreamSource
    sections : tuple of Section
        With their shapes, in forward order.
    plan : FitPlan
    routes : RouteTable or None
        None for a PCA fit.
    settings : FitSettings

    Returns
    -------
    FitResult
    """
    fit = _Fit(session, source, plan, routes, settings)
    next_basis = fit.statistics_pass(sections)
    bases = {OUTPUT_NODE: next_basis}
    for section in reversed(sections):
        next_basis = bases[section.src] = fit.basis(section, next_basis)
    order = [*(s.src for s in sections), OUTPUT_NODE]
    return FitResult({name: bases[name] for name in order}, fit.rounds, fit.edges)


class _Fit:
    """The state of one :func:`fit_bases`: the statistics, and what the passes gave."""

    def __init__(self, session, source, plan, routes, settings):
        self.session, self.source, self.plan = session, source, plan
        self.routes, self.settings = routes, settings
        self.rule = rule_tensors(settings.rule, session.device)
        self.lib = settings.basis == "lib"
        self.rounds, self.edges = {}, {}
        self.halves = {}  # node layer -> its two half bases, where it had rounds
        self.joined = {}  # section src -> accumulator result of the statistics pass
        self.grams = {}  # section src -> JacobianGram whose rows may give edges
        self.moments = {}
        self.first = None  # the node layer that n_components applies to

    # -- the statistics pass -----------------------------------------------------------
    def statistics_pass(self, sections):
        """Run the statistics pass and return the output node's basis."""
        session, settings = self.session, self.settings
        self.first = sections[0].src
        for s in sections:
            self.moments[s.src] = MomentAccumulator(
                s.src, s.src_shape[-1], session.device, settings.center, low=session.dtype
            )
        output_shape = sections[-1].dst_shape
        output = MomentAccumulator(
            OUTPUT_NODE, output_shape[-1], session.device, gram=settings.output_basis == "pca"
        )
        joined = [self._joined(s) for s in sections if self.lib and self.plan.section(s).joins]
        statistics = [*self.moments.values(), output]  # their results are themselves, reduced
        what = "activation statistics" + "".join(f" and {acc.what}" for acc in joined)
        results = session.run_pass(self.source, [*statistics, *joined], what)
        self.joined = {acc.src: r for acc, r in zip(joined, results[len(statistics) :])}
        grams = [(f"activations {name!r}", acc.sq) for name, acc in self.moments.items()]
        self._say_products(grams + [(acc.what, acc.sums) for acc in joined])
        mean = output.mean.cpu().numpy()
        if settings.output_basis == "identity":
            return identity_basis(output_shape, mean)
        return pca_output_basis(output_shape, mean, output.gram.cpu().numpy())

    def _say_products(self, grams):
        """Say which dtype each Gram was multiplied in, where the fit's dtype left a
        choice (``grams``: pairs of what it is of, in words, and its GramSum)."""
        if self.plan.gram_dtype == "float64":
            return
        alike = {}
        for what, gram in grams:
            alike.setdefault(gram.words, []).append(what)
        for words, whats in alike.items():
            self.session.progress(f"Gram products of {', '.join(whats)}: {words}")

    def _joined(self, section):
        """The accumulator a joined section adds to the statistics pass."""
        if self.plan.section(section).route == "statistics pass":
            return self.routes[section].gram.statistics(self.session, section, self.rule)
        # The last section, in the identity output basis.
        eye = Identity(section.dst_shape[-1], self.session.dtype, self.session.device)
        return self._gram(section, eye, n_positions(section.dst_shape))

    def _gram(self, section, matrix, n_positions_out):
        plan = self.plan.section(section)
        acc = JacobianGram(
            self.session,
            self.routes[section],
            matrix,
            n_positions_out,
            sources=plan.sources,
            per_sample=plan.per_sample,
            rule=self.rule,
            keep_rows=plan.keep_rows,
            lengths_vary=self.source.lengths_vary,
        )
        if plan.keep_rows:
            self.grams[section.src] = acc
        return acc

    # -- one basis ---------------------------------------------------------------------
    def basis(self, section, next_basis):
        """The basis of ``section.src``, from its ``M'`` in ``next_basis``.

        Its statistics are released once it is made: a chain of wide layers
        holds the Grams of the layers still to come, not of those done.
        """
        say = self._say_steps(section)
        # Rounds of sources make trial bases, unsaid; the steps of the last one are said.
        basis_of = functools.partial(self._basis_of, section)
        m_prime = self._m_prime(section, next_basis, basis_of, say) if self.lib else None
        basis = self._basis_of(section, m_prime, say=say)
        del m_prime
        self.moments.pop(section.src)
        self.joined.pop(section.src, None)
        acc = self.grams.pop(section.src, None)
        if acc is not None:
            found = acc.edges(basis)
            if found is not None:
                self.edges[(section.src, section.dst)] = found
        return basis

    def _say_steps(self, section):
        """What reports the steps of a basis' linear algebra: on a wide node layer, seconds
        each with no pass to show them, progress lines; on others, nothing."""
        width = section.src_shape[-1]
        if width < WIDE_LAYER:
            return say_nothing
        what = "M' and the eigendecompositions" if self.lib else "the eigendecomposition"
        seconds = dense_seconds(width, self.settings.basis)
        self.session.progress(
            f"basis of {section.src!r}: {what} of {width} x {width} matrices (about "
            f"{duration(seconds)})"
        )

        def say(step, cost):
            seconds = dense_seconds(width, cost=cost)
            about = f" (about {duration(seconds)})" if seconds >= 1 else ""
            self.session.progress(f"basis of {section.src!r}: {step}{about}")

        return say

    def _m_prime(self, section, next_basis, basis_of, say):
        """``M'`` of ``section`` as the plan says: gathered already, one pass, or rounds."""
        plan = self.plan.section(section)
        matrix = self._device_matrix(next_basis)
        # The next node's half bases serve rounds only: an exact M' (and the chain of
        # estimates with it) takes the whole basis.
        next_halves = self.halves.pop(section.dst, None)
        if plan.joins:
            joined = self.joined[section.src]
            if plan.route != "statistics pass":
                return joined
            say("M' from the slopes gathered in the statistics pass", PRODUCT_COST)
            return joined.m_prime(matrix)
        acc = self._gram(section, matrix, next_basis.n_positions)
        if plan.sources == "auto":
            exact_rows = plan.exact_rows_per_batch(next_basis.n_components)
            if next_halves is not None:
                next_halves = [self._device_matrix(b) for b in next_halves]
            m_prime, self.rounds[section.src], halves = converged_m_prime(
                self.session,
                self.source,
                acc,
                basis_of,
                exact_rows=exact_rows,
                next_halves=next_halves,
                sources=plan.round_sources,
            )
            if halves is not None:
                self.halves[section.src] = halves
            self._say_products([(acc.what, acc.sums)])  # the last round's
            return m_prime
        (m_prime,) = self.session.run_pass(self.source, [acc], acc.what)
        self._say_products([(acc.what, acc.sums)])
        return m_prime

    def _device_matrix(self, basis):
        """The kept matrix of ``basis`` on the session's device, in its dtype (the kept
        matrix alone: a PCA output basis' pseudo-inverse is vocabulary-square)."""
        return as_tensor(basis.kept_matrix, self.session.device, self.session.dtype)

    def _basis_of(self, section, m_prime, say=say_nothing):
        """The fitted basis of ``section.src`` for ``m_prime`` (None: PCA)."""
        settings, session = self.settings, self.session
        stats, shape = self.moments[section.src], section.src_shape
        mean = stats.mean.cpu().numpy() if settings.center else np.zeros(shape[-1])
        gram = stats.gram.cpu().numpy()
        first = section.src == self.first
        return fit_node_basis(
            section.src,
            shape,
            mean,
            gram,
            m_prime,
            kind=settings.basis,
            n_components=settings.n_components if first else None,
            threshold=settings.truncation_threshold,
            rtol=session.tolerances.null_space,
            floor=session.tolerances.noise_floor(gram, mean),
            say=say,
        )
