"""The LIB algorithm as functions: node layers and data in, one :class:`NodeBasis` per node out.

The bases are computed backwards from the model output, because each needs
the next one's.  The statistics pass reads every node layer once (mean and
Gram of each, mean of the output); then each section's ``M'`` takes one pass
over the data, in the next basis.  An accumulator whose inputs are known
before a pass joins it: with the identity output basis, known before any
data is read, the last section's ``M'`` joins the statistics pass, so ``k``
node layers take ``k`` passes.

A Linear -> elementwise section (:mod:`~sklearn_lib._routes.forms.linear_elementwise`) needs no
pass of its own: its ``M'`` is ``W^T ((C C^T) * S) W`` with ``S = sum s s^T``
over the integrated slopes, which do not depend on any basis, so the
statistics pass gathers ``S`` and the ``M'`` follows from the next basis
``C`` at no cost.  A chain of such sections (an MLP) fits in one pass.
"""

import functools
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg
import torch
from sklearn.exceptions import ConvergenceWarning

from .._core.nodes import OUTPUT_NODE, n_positions
from .._core.numerics import ROW_REUSE_BYTES, max_relative_error
from .._model.batching import STOCHASTIC_BATCH_SIZE, saved_bytes_per_sample
from .._model.capture import check_cut, check_gradient_flow, inspect_node_layers
from .._model.session import outside_inference_mode
from .._routes.cotangents import Cotangents, scaled
from .._routes.forms.linear_elementwise import LinearElementwise
from .._routes.integration import rule_tensors
from .._routes.jacobian import SectionJacobian, closed_forms, row_free_route
from ..exceptions import user_stacklevel
from .basis import fit_node_basis, identity_basis, pca_output_basis
from .plan import AUTO_MAX_ROUNDS, AUTO_MIN_ROUNDS, AUTO_SOURCES, auto_stays_exact, fit_plan
from .stats import MomentAccumulator, all_reduce_sum, global_count, row_average


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


@outside_inference_mode
def inspect(session, probe, names, settings):
    """Shapes of the node layers and the output on a probe batch; for LIB, the cut checks.

    Returns
    -------
    shapes : dict of str to tuple
    output_shape : tuple
    """
    if OUTPUT_NODE in names:
        raise ValueError(
            f"A node layer may not be called {OUTPUT_NODE!r}: that name is "
            "reserved for the model-output node"
        )
    with torch.no_grad():
        shapes, output_shape = inspect_node_layers(session, probe, names)
    if settings.basis == "lib":
        for src, dst in zip(names, [*names[1:], None]):
            with torch.no_grad():
                check_cut(session, probe, src, dst, session.rng)
            check_gradient_flow(session, probe, src, dst)
    return shapes, output_shape


@outside_inference_mode
def bytes_per_sample(session, probe, shapes, settings):
    """What a fit's passes make autograd save per sample, at most, measured on the probe.

    Each section's graph, as its ``M'`` pass builds it (one at a time); PCA
    bases only run forward passes, measured as a forward pass with gradients.
    Fits with stochastic sources keep :data:`~sklearn_lib._model.batching.STOCHASTIC_BATCH_SIZE`
    (returned as an int): their error shrinks with the number of batches.
    """
    if settings.basis == "lib" and settings.n_stochastic_sources is not None:
        return STOCHASTIC_BATCH_SIZE
    names = list(shapes)
    if settings.basis != "lib":
        return saved_bytes_per_sample(probe, lambda: session.run(probe))
    with torch.no_grad():
        acts = session.read(probe, names)
    return max(
        saved_bytes_per_sample(
            probe,
            functools.partial(session.section, probe, src, f.detach().requires_grad_(True), dst),
        )
        for src, dst, f in zip(names, [*names[1:], None], acts)
    )


@outside_inference_mode
def plan(session, owner, source, probe, shapes, output_shape, settings, one_pass=()):
    """The :class:`~sklearn_lib._fitting.plan.FitPlan` of :func:`fit_bases` on ``source``.

    Sections that autograd serves are priced by timing Jacobian rows on the
    probe (see :func:`~sklearn_lib._fitting.plan.fit_plan`); ``one_pass`` sections
    (:func:`one_pass_sections`) take no pass of their own.
    """
    names = list(shapes)
    seconds = {}
    if settings.basis == "lib" and settings.jacobian != "autograd":
        find_routes(session, probe, shapes, output_shape, settings)
    routes = {}
    for src, dst in zip(names, [*names[1:], None]):
        closed = settings.jacobian != "autograd" and exact_is_cheap(session, src, dst)
        if settings.basis == "lib" and not closed:
            seconds[src] = functools.partial(
                _row_seconds, session, probe, src, dst, shapes, output_shape, settings
            )
        elif closed:
            affine = row_free_route(session, src, dst) == "affine"
            routes[src] = "affine, its rows made once" if affine else "by closed form"
    return fit_plan(owner, names, shapes, output_shape, settings, source, seconds, one_pass, routes)


def find_routes(session, probe, shapes, output_shape, settings):
    """Decide on the probe, once per session, the route of each section's ``M'``.

    The closed form that passes its check against autograd (see
    ``_section``), else whether the section is affine.  The verdicts stay in
    the session, for the passes, the fit's plan and
    ``n_stochastic_sources="auto"`` (:func:`exact_is_cheap`).
    """
    names = list(shapes)
    alphas, weights = rule_tensors(settings.rule, session.device)
    with torch.no_grad():
        acts = dict(zip(names, session.read(probe, names)))
    for src, dst in zip(names, [*names[1:], None]):
        dst_shape = output_shape if dst is None else shapes[dst]
        eye = torch.eye(dst_shape[-1], dtype=session.dtype, device=session.device)
        rows = Cotangents(eye, n_positions(dst_shape)).rows
        section = SectionJacobian(session, src, dst)
        points = scaled(acts[src], alphas)
        if section._closed("gram", probe, points, rows, weights) is None:
            section.is_affine(probe, points, rows, weights)


def exact_is_cheap(session, src, dst):
    """Whether a closed form serves the section's ``M'``, or it is affine (:func:`find_routes`)."""
    return row_free_route(session, src, dst) is not None


def _row_seconds(session, probe, src, dst, shapes, output_shape, settings, n_rows):
    """Seconds per Jacobian row and probe sample of a section's ``M'``, by autograd.

    Timed on the real computation (``n_rows`` random rows of the section's
    own width, the integration rule's points, the Gram), best of three for
    more than one row.  None when it fails: pricing never stops a fit, and
    the pass that meets the same failure reports it, naming its batch.
    """
    dst_shape = output_shape if dst is None else shapes[dst]
    eye = torch.eye(dst_shape[-1], dtype=session.dtype, device=session.device)
    generator = torch.Generator().manual_seed(0)
    cotangents = Cotangents(eye, n_positions(dst_shape)).sampled(n_rows, generator, True)
    rule = rule_tensors(settings.rule, session.device)
    section = SectionJacobian(session, src, dst, "autograd")
    with torch.no_grad():
        (f,) = session.read(probe, [src])
    best = float("inf")
    for _ in range(3 if n_rows > 1 else 1):
        start = time.perf_counter()
        try:
            section.gram_sum(probe, f, cotangents, rule)
        except Exception:  # any failure of the model: no price
            return None
        best = min(best, time.perf_counter() - start)
    return best / (n_rows * f.shape[0])


@outside_inference_mode
def one_pass_sections(session, probe, shapes, output_shape, settings):
    """The sections whose ``M'`` the statistics pass can gather, by node layer.

    Those with the Linear -> elementwise closed form, when ``M'`` is exact
    and closed forms are allowed, each checked against autograd on the probe
    (with a random next basis: the check does not depend on the basis) as
    every closed form is before use.

    Returns
    -------
    dict of str to LinearElementwise
    """
    if settings.basis != "lib" or settings.jacobian == "autograd":
        return {}
    if settings.n_stochastic_sources not in (None, "auto"):
        return {}  # the estimate the user asked for is another computation
    names = list(shapes)
    candidates = {}
    for src, dst in zip(names, [*names[1:], None]):
        forms = closed_forms(session, src, dst)
        if forms and isinstance(forms[0], LinearElementwise):  # not the model's own first
            candidates[src] = dst
    if not candidates:
        return {}
    rule = rule_tensors(settings.rule, session.device)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # one forward pass reads every candidate's input
        acts = dict(zip(candidates, session.read(probe, list(candidates))))
    found = {}
    for src, dst in candidates.items():
        dst_shape = output_shape if dst is None else shapes[dst]
        matrix = torch.randn(dst_shape[-1], min(dst_shape[-1], 4), generator=generator)
        matrix = matrix.to(device=session.device, dtype=session.dtype)
        section = SectionJacobian(session, src, dst)
        f = acts[src]
        with warnings.catch_warnings():
            # A form that fails here falls back in its pass, which warns then.
            warnings.simplefilter("ignore", RuntimeWarning)
            section.gram_sum(probe, f, Cotangents(matrix, n_positions(dst_shape)), rule)
        if isinstance(section.route("gram"), LinearElementwise):  # it passed its check
            found[src] = section.route("gram")
    return found


@outside_inference_mode
def fit_bases(
    session, source, shapes, output_shape, settings, one_pass=None, report=None, edges=None
):
    """The basis of every node layer and of the output.

    Parameters
    ----------
    session : ModelSession
    source : ArraySource or StreamSource
    shapes : dict of str to tuple
        Node layers in forward order with their per-sample activation shapes.
    output_shape : tuple
    settings : FitSettings
    one_pass : dict of str to LinearElementwise, optional
        :func:`one_pass_sections`: their ``M'`` comes from the statistics pass.
    report : dict, optional
        With ``n_stochastic_sources="auto"``, filled with each section's
        :class:`SourceRounds` (by source node layer).
    edges : dict, optional
        Filled with the edges ``(E, N)`` of the sections whose Jacobian rows
        the fit made and could keep (:meth:`JacobianGram.edges`), by
        ``(src, dst)`` node names: they need no pass of their own.

    Returns
    -------
    dict of str to NodeBasis
        Forward order: the node layers, then ``"output"``.
    """
    names = list(shapes)
    one_pass = one_pass or {}
    moments = {
        name: MomentAccumulator(name, shapes[name][-1], session.device, settings.center)
        for name in names
    }
    output = MomentAccumulator(
        OUTPUT_NODE, output_shape[-1], session.device, gram=settings.output_basis == "pca"
    )
    lib = settings.basis == "lib"
    following = dict(zip(names, [*names[1:], None]))
    early = [
        SlopeGram(session, src, following[src], form, settings) for src, form in one_pass.items()
    ]
    auto = settings.n_stochastic_sources == "auto"
    # Under "auto", exact M' wherever rounds would cost as much (few rows), or a
    # closed form or the affine route makes the exact rows cheap.
    exact = replace(settings, n_stochastic_sources=None)

    def cheap(src, dst, rows):
        if auto_stays_exact(rows):
            return True
        routes = settings.jacobian != "autograd" and exact_is_cheap(session, src, dst)
        # The same on every rank (each checked its own probe), or the passes would differ.
        doubts = all_reduce_sum(torch.tensor(float(not routes), device=session.device))
        return float(doubts) == 0

    last_cheap = cheap(names[-1], None, n_positions(output_shape) * output_shape[-1])
    if lib and settings.output_basis == "identity" and names[-1] not in one_pass:
        # The output's basis is known before any data is read: the last
        # section's M' joins the statistics pass.
        eye = torch.eye(output_shape[-1], device=session.device, dtype=session.dtype)
        last = names[-1]
        if not auto or last_cheap:  # rounds of sources need passes of their own
            early.append(
                JacobianGram(
                    session,
                    last,
                    None,
                    shapes[last],
                    eye,
                    n_positions(output_shape),
                    exact if auto else settings,
                    keep_rows=edges is not None,
                )
            )
    statistics = [*moments.values(), output]  # their results are themselves, reduced
    what = "activation statistics" + "".join(f" and {acc.what}" for acc in early)
    results = session.run_pass(source, [*statistics, *early], what)
    m_primes = {acc.src: m_prime for acc, m_prime in zip(early, results[len(statistics) :])}
    grams = {acc.src: acc for acc in early if isinstance(acc, JacobianGram)}
    slopes = {src: m_primes.pop(src) for src in one_pass}

    output_mean = output.mean.cpu().numpy()
    if settings.output_basis == "identity":
        next_basis = identity_basis(output_shape, output_mean)
    else:
        next_basis = pca_output_basis(output_shape, output_mean, output.gram.cpu().numpy())
    bases = {OUTPUT_NODE: next_basis}
    for i in reversed(range(len(names))):
        name = names[i]
        stats = moments[name]

        def basis_of(m_prime, name=name, stats=stats, first=i == 0):
            mean = stats.mean.cpu().numpy() if settings.center else np.zeros(shapes[name][-1])
            gram = stats.gram.cpu().numpy()
            return fit_node_basis(
                name,
                shapes[name],
                mean,
                gram,
                m_prime,
                kind=settings.basis,
                n_components=settings.n_components if first else None,
                threshold=settings.truncation_threshold,
                rtol=session.tolerances.null_space,
                floor=session.tolerances.noise_floor(gram, mean),
            )

        m_prime = None
        if lib:
            m_prime = m_primes.get(name)
            dst = names[i + 1] if i + 1 < len(names) else None
            matrix = next_basis.tensors(session.device, session.dtype)[1]
            if name in slopes:
                m_prime = slopes[name].m_prime(matrix)
            elif m_prime is None:
                rounds = auto and not cheap(name, dst, next_basis.n_positions * matrix.shape[1])
                acc = JacobianGram(
                    session,
                    name,
                    dst,
                    shapes[name],
                    matrix,
                    next_basis.n_positions,
                    exact if auto and not rounds else settings,
                    keep_rows=edges is not None,
                )
                grams[name] = acc
                if rounds:
                    m_prime, sources = converged_m_prime(session, source, acc, basis_of)
                    if report is not None:
                        report[name] = sources
                else:
                    (m_prime,) = session.run_pass(source, [acc], acc.what)
        dst_name = next_basis.name
        next_basis = basis_of(m_prime)
        bases[name] = next_basis
        if edges is not None and name in grams:
            found = grams.pop(name).edges(next_basis)
            if found is not None:
                edges[(name, dst_name)] = found
    return {name: bases[name] for name in [*names, OUTPUT_NODE]}


class SlopeGram:
    """Accumulator of ``S = sum s s^T`` of a Linear -> elementwise section (see ``_session``).

    Its result gives the section's exact ``M'`` for any next basis
    (:meth:`m_prime`), so it joins the statistics pass.  With the plain
    gradient rule the slopes come from the next node's activations where the
    activation allows it (:meth:`LinearElementwise.slopes_from_outputs`),
    else from running the Linear layer again.
    """

    def __init__(self, session, src, dst, form, settings):
        self.src, self.dst, self.form = src, dst or OUTPUT_NODE, form
        self.what = f"slopes {src!r}"
        self.rule = rule_tensors(settings.rule, session.device)
        alphas, weights = (np.asarray(t, dtype=float) for t in settings.rule)
        plain = alphas.tolist() == [1.0] and weights.tolist() == [1.0]  # the plain gradient
        self.from_outputs = plain and form.slopes_from_outputs(torch.zeros(1)) is not None
        self.binary = self.from_outputs and form.binary_slopes
        self.reads = (src, self.dst) if self.from_outputs else (src,)
        width = form.linear.out_features
        self.total = torch.zeros(width, width, dtype=torch.float64, device=session.device)
        self.rows = 0

    def update(self, batch, acts):
        f = acts[self.src]
        if self.from_outputs:
            s = self.form.slopes_from_outputs(acts[self.dst])
        else:
            alphas, weights = self.rule
            s = self.form.integrated_slopes(scaled(f, alphas), weights)
        s = s.reshape(-1, s.shape[-1])  # (n * P, d_next): positions are samples here
        if (self.binary and s.shape[0] < 2**24) or s.dtype != torch.float64:
            # 0/1 slopes (ReLU) have exact float32 products (counts below 2^24 per
            # batch); a float32 fit takes its own dtype's.  Sums stay float64.
            low = s.to(torch.float32)
            self.total += (low.T @ low).to(torch.float64)
        else:
            self.total.addmm_(s.T, s)
        self.rows += batch.n_rows(f.shape[1:])

    def result(self):
        all_reduce_sum(self.total)
        self.rows = global_count(self.rows, self.total.device)
        return self

    def m_prime(self, matrix):
        """``M'`` in the next basis ``matrix`` ``(d_next, k_next)``, per row, as numpy."""
        return (self.form.gram_from_slopes(self.total, matrix) / self.rows).cpu().numpy()


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
    """

    n_sources: int
    rounds: int
    lambda_error: float
    cosine: float
    converged: bool


def converged_m_prime(session, source, acc, basis_of):
    """``M'`` from rounds of random sources until the basis it gives stops moving.

    Each round is one pass with :data:`AUTO_SOURCES` sources per batch (new
    draws every batch), an independent estimate of ``M'``; the result is
    their mean.  Its Lambda error is estimated from the spread of the
    rounds' own top-``k`` Lambdas (twice their standard error, relative to
    the largest Lambda), and its subspace from two halves of the rounds
    (their mean's angle is about half theirs).  Rounds go on, in pairs, from
    :data:`AUTO_MIN_ROUNDS`, until the Lambda error is within
    :data:`AUTO_LAMBDA_TOLERANCE` and the cosine at least :data:`AUTO_COSINE`,
    or :data:`AUTO_MAX_ROUNDS` have run.

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
        for half in (0, 1):
            acc.reset(AUTO_SOURCES)
            what = f"{acc.what} (round {len(tops) + 1})"
            (m_round,) = session.run_pass(source, [acc], what)
            halves[half] = halves[half] + m_round
            tops.append(basis_of(m_round).lambdas[:AUTO_TOP_K])
        rounds = len(tops)
        mean = basis_of((halves[0] + halves[1]) / rounds)
        k = min(len(top) for top in tops)
        spread = np.std([top[:k] for top in tops], axis=0, ddof=1).max()
        lambda_error = float(2 * spread / np.sqrt(rounds) / max(mean.lambdas[0], _TINY))
        cut = _gapped_top(mean.lambdas[: mean.n_components], lambda_error * mean.lambdas[0])
        cosine = _mean_cosine(cut, *(basis_of(m / (rounds // 2)) for m in halves))
        converged = lambda_error <= AUTO_LAMBDA_TOLERANCE and cosine >= AUTO_COSINE
        passed = passed + 1 if converged else 0
        if (passed >= 2 and rounds >= AUTO_MIN_ROUNDS) or rounds >= AUTO_MAX_ROUNDS:
            break
    report = SourceRounds(rounds * AUTO_SOURCES, rounds, lambda_error, cosine, converged)
    if not converged:
        warnings.warn(
            f"n_stochastic_sources='auto' did not converge on {acc.what} after {rounds} rounds "
            f"({report.n_sources} sources per batch): estimated Lambda error {lambda_error:.1%} "
            f"of the largest, top features' cosine {cosine:.3f}. More samples (or a "
            "smaller batch_size: more draws per pass) help; n_stochastic_sources=None is exact",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
    return (halves[0] + halves[1]) / rounds, report


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


class JacobianGram:
    """Accumulator of ``M'`` of one section (see ``_session`` for the protocol).

    Exact: one row per output position and next feature.  With
    ``n_stochastic_sources=S``: ``S`` random +-1 combinations of all rows per
    batch, whose average Gram is an unbiased estimate.

    Parameters
    ----------
    session : ModelSession
    src : str
    dst : str or None
        None: the model output.
    shape : tuple
        ``src``'s per-sample activation shape.
    matrix : torch.Tensor of shape (d_next, k_next)
        The next node's kept LIB matrix, in the session's dtype and device.
    n_positions_out : int
        Positions of the next node.
    settings : FitSettings
    keep_rows : bool, default=False
        Keep the exact Jacobian rows the pass makes (up to
        :data:`~sklearn_lib._core.numerics.ROW_REUSE_BYTES`), so that
        :meth:`edges` gives the section's edges without a pass of its own.
    """

    def __init__(
        self, session, src, dst, shape, matrix, n_positions_out, settings, keep_rows=False
    ):
        self.session, self.src, self.dst = session, src, dst
        self.reads = (src,)
        self.what = f"Jacobians {src!r} -> {dst or OUTPUT_NODE!r}"
        self.sources = settings.n_stochastic_sources
        self.rule = rule_tensors(settings.rule, session.device)
        self.section = SectionJacobian(session, src, dst, settings.jacobian)
        self.exact = Cotangents(matrix, n_positions_out)
        self.total = torch.zeros(shape[-1], shape[-1], dtype=torch.float64, device=session.device)
        self.rows = 0
        self.count = 0
        # The edges are taken at the reconstruction from the kept features, and
        # along the rule's path over centred features: only the plain gradient
        # has the fit's own points.
        alphas, weights = self.rule
        plain = alphas.numel() == 1 and float(alphas[0]) == 1.0 and float(weights[0]) == 1.0
        self.kept = [] if keep_rows and plain and self.sources is None else None
        self.kept_bytes = 0

    def reset(self, sources):
        """Start over with ``sources`` random sources per batch (a new round)."""
        self.sources = sources
        self.total = torch.zeros_like(self.total)
        self.rows = self.count = 0
        self.kept = None  # sampled rows are not the edges' rows

    def update(self, batch, acts):
        cotangents = self.exact.sampled(self.sources, self.session.generator, True)
        f = acts[self.src]
        # The batch's rows, (R, n, P_in, d) at most: over the budget before they
        # are made, none is kept.
        size = (1 + len(cotangents.rows)) * f.numel() * f.element_size()
        if self.kept is not None and self.kept_bytes + size > ROW_REUSE_BYTES:
            self.kept = None
        self._made = None if self.kept is None else []
        keep = None if self.kept is None else self._keep
        self.total += self.section.gram_sum(batch.x, f, cotangents, self.rule, keep=keep)
        self.rows += batch.n_rows(f.shape[1:])
        self.count += batch.n
        if self.kept is not None:
            if not self._made:  # a closed form gave the Gram without rows
                self.kept = None
            else:
                self.kept.append((batch, f, self._made))
                self.kept_bytes += f.numel() * f.element_size()
        self._made = None

    def _keep(self, g):
        """Keep one chunk of this batch's rows; False (and keep none) over the budget."""
        size = g.numel() * g.element_size()
        if self.kept is None or self.kept_bytes + size > ROW_REUSE_BYTES:
            # Over the budget: the edges take a pass of their own.
            self.kept = None
            return False
        self._made.append(g)
        self.kept_bytes += size
        return True

    def result(self):
        """``M'`` averaged over all ``N * P_in`` rows (of every rank; valid ones), as numpy."""
        return row_average(self.total, self.rows, self.count)[0]

    def edges(self, src):
        """The section's edges from the kept rows, ``(E, N)`` as :func:`row_average` gives them.

        None, on every rank alike, where some rank kept no rows or its points
        are not those of the edges: activations that the kept features do
        not reconstruct (a truncation that drops variance).  The kept rows
        are released either way.

        Parameters
        ----------
        src : NodeBasis
            The section's source basis, just fitted.
        """
        kept, self.kept = self.kept, None
        tensors = src.tensors(self.session.device)
        usable = kept is not None and all(
            _same_points(f, tensors, self.session.tolerances.same_points) for _, f, _ in kept
        )
        # Every rank decides alike, or some would run a pass that others skip.
        unusable = all_reduce_sum(torch.tensor(float(not usable), device=self.session.device))
        if float(unusable) > 0:
            return None
        total, rows, count = 0, 0, 0
        for batch, f, chunks in kept:
            total = total + self.section.edge_sums(
                batch.x, f, tensors, self.exact, self.rule, rows=chunks
            )
            rows += batch.n_rows(f.shape[1:])
            count += batch.n
        return row_average(total, rows, count)


def _same_points(f, src, rtol):
    """Whether the kept features of basis ``src`` reconstruct activations ``f``."""
    mean, C, C_pinv = src
    f = f.to(torch.float64)
    return max_relative_error((f - mean) @ C @ C_pinv + mean, f) <= rtol
