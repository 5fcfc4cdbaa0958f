"""The route table: how each section's Jacobian products are served, decided once per call.

For every section and kind of product (rows, Gram, directional derivatives,
see :data:`~sklearn_lib._routes.products.KINDS`), the table holds the closed
form that serves it, or None for autograd.  :func:`decide_routes` walks the
registry of closed forms (:mod:`~sklearn_lib._routes.forms`) once, on the
probe: each form that applies is checked against autograd (16 samples; the
first row and two random +-1 combinations of all rows, which test every
output position and feature), and the first that passes serves the kind.  A
disagreement or an exception warns and falls back, so a wrong closed form
costs speed, never correctness; so does any failure while the table is
decided (reading the probe, a detection, a check's autograd rows), except
out of memory, ``KeyboardInterrupt`` and ``SystemExit``, which propagate
(:class:`~sklearn_lib._model.failures.Exploratory`).  ``jacobian="autograd"``
is applied here and nowhere else: every route is then autograd.

Everything downstream reads the table: the passes
(:class:`~sklearn_lib._routes.jacobian.SectionJacobian`), the fit's plan,
and ``n_stochastic_sources="auto"``.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from .._core.distributed import agreed as agreed_values
from .._core.nodes import n_positions
from .._model.failures import Exploratory, warn_fallback
from .._model.inputs import n_rows
from .._model.session import outside_inference_mode
from .cotangents import Cotangents, scaled
from .forms import Affine, FinalLinear
from .forms.base import REGISTRY, ClosedForm, Probe, applicable_forms
from .products import KINDS, masked

#: ``jacobian``'s values.
JACOBIAN_ROUTES = ("auto", "autograd")

#: The ways of making ``M'`` (:attr:`SectionRoute.m_prime`) whose cost grows with the
#: rows: a backward pass per row (all of autograd's, or those of a final linear map's
#: input), or a closed form's rows (made many at once, yet each row costs its share).
ROW_ROUTES = ("autograd", "final linear", "closed-form rows")


@dataclass(frozen=True)
class Verdict:
    """One check of a closed form against autograd on the probe."""

    form: str
    kind: str
    passed: bool
    why: str = ""


@dataclass(frozen=True)
class SectionRoute:
    """How one section's products are served.

    Attributes
    ----------
    section : Section
    rows, gram, tangents : ClosedForm or None
        The closed form serving each kind of product; None: autograd.
    verdicts : tuple of Verdict
        The checks that decided it.
    skipped : tuple of str
        ``"title: why"`` of each form that did not apply, so never checked.
    """

    section: object
    rows: object = None
    gram: object = None
    tangents: object = None
    verdicts: tuple = ()
    skipped: tuple = ()

    def form(self, kind):
        """The closed form serving ``kind``, or None for autograd."""
        return getattr(self, kind)

    @property
    def m_prime(self):
        """How ``M'`` is made: ``"closed form"`` (its Gram), ``"affine"`` (rows of one
        sample for all), ``"closed-form rows"``, ``"final linear"`` (a backward pass per
        row of a final linear map's input) or ``"autograd"`` (a backward pass per row).

        A closed form with statistics (:attr:`gathers_statistics`) may also be
        gathered in the statistics pass; that is the plan's decision.
        """
        if isinstance(self.gram, FinalLinear):
            return "final linear"
        if self.gram is not None:
            return "closed form"
        if isinstance(self.rows, Affine):
            return "affine"
        return "autograd" if self.rows is None else "closed-form rows"

    @property
    def exact_rows(self):
        """Rows of the exact ``M'`` on this route: ``P_out`` times the next node's full
        width, or times the inputs of a final linear map where fewer (and not times
        ``P_out`` where the map's input keeps positions apart: each row serves every
        position)."""
        rows = self.section.exact_rows
        if self.m_prime == "final linear":
            positions = 1 if self.shares_positions else n_positions(self.section.dst_shape)
            rows = positions * min(self.section.dst_shape[-1], self.gram.width)
        return rows

    @property
    def shares_positions(self):
        """Whether the exact rows are a final map's, each at every position at once (its
        input keeps positions apart): ``exact_rows`` of them in all, not per position."""
        return self.m_prime == "final linear" and bool(self.gram.shares_positions)

    @property
    def source_features(self):
        """The most next features a random source mixes per output position: a final
        linear map's inputs (its sources are drawn in the map's factor, fewer than a
        vocabulary's logits), else None (every one)."""
        return self.gram.width if self.m_prime == "final linear" else None

    @property
    def exact_per_position(self):
        """Whether the exact rows go back per output position (a rows form that sends them
        so, and several output positions): they cost less per row than random ones."""
        several = n_positions(self.section.dst_shape) > 1
        return several and getattr(self.rows, "exact_per_position", False)

    @property
    def sources_per_sample(self):
        """Whether random sources may be drawn for each sample apart: ``M'`` is made of
        rows (autograd's, a final linear map's or a closed form's) that take each sample's
        own cotangents (:attr:`ClosedForm.per_sample_rows
        <sklearn_lib._routes.forms.base.ClosedForm.per_sample_rows>`)."""
        if self.m_prime not in ROW_ROUTES:
            return False
        return all(f is None or f.per_sample_rows for f in (self.gram, self.rows))

    @property
    def gathers_statistics(self):
        """Whether the Gram's form has statistics the statistics pass can gather."""
        return self.gram is not None and type(self.gram).statistics is not ClosedForm.statistics

    @property
    def row_free(self):
        """Whether ``M'`` needs no backward pass per row (any route but autograd's rows,
        all of them or those of a final linear map's input)."""
        return self.m_prime not in ROW_ROUTES

    @property
    def makes_rows(self):
        """Whether ``M'`` is made from rows (which can then serve the edges)."""
        return self.gram is None


class RouteTable(Mapping):
    """The :class:`SectionRoute` of each section, by its ``(src, dst)`` names."""

    def __init__(self, routes):
        self._routes = {(r.section.src, r.section.dst): r for r in routes}

    def __getitem__(self, section):
        return self._routes[(section.src, section.dst)]

    def __iter__(self):
        return iter(self._routes)

    def __len__(self):
        return len(self._routes)

    def batch_within_cache(self):
        """The most samples per batch for which every form's rows stay within the cache
        (:meth:`ClosedForm.batch_within_cache`), or None where none has a bound."""
        forms = {id(f): f for r in self._routes.values() for f in (r.rows, r.gram, r.tangents)}
        sizes = [f.batch_within_cache() for f in forms.values() if f is not None]
        return min((s for s in sizes if s is not None), default=None)

    def summary(self):
        """One line per section: how ``M'`` is made and what each check said."""
        lines = []
        for route in self._routes.values():
            checks = "; ".join(
                f"{v.form} for {v.kind}: {'passed' if v.passed else 'failed, ' + v.why}"
                for v in route.verdicts
            )
            line = f"{route.section}: M' by {route.m_prime}" + (f" ({checks})" if checks else "")
            if route.m_prime == "autograd" and route.skipped:
                line += "; not applied: " + "; ".join(route.skipped)
            lines.append(line)
        return "\n".join(lines)


def autograd_route(section):
    """The route of ``section`` without closed forms."""
    return SectionRoute(section)


@outside_inference_mode
def decide_routes(session, probe, sections, rule, kinds, *, jacobian="auto", sampled=False):
    """The :class:`RouteTable` of ``sections``, decided on ``probe`` (see the module docstring).

    Parameters
    ----------
    session : ModelSession
    probe : torch.Tensor or dict of torch.Tensor
        The first samples of the data, on the session's device.
    sections : sequence of Section
        With their shapes.
    rule : (torch.Tensor, torch.Tensor)
        Integration points and weights: the points at which forms are checked.
    kinds : collection of str
        The products the call needs (:data:`~sklearn_lib._routes.products.KINDS`).
        Rows are decided where asked for and needed: alone, or where an asked
        Gram or directional derivative has no closed form (then rows serve
        it); every other product is autograd's.
    jacobian : {"auto", "autograd"}
    sampled : bool, default=False
        Whether every row asked for is a random source (a fit with an integer
        ``n_stochastic_sources`` and no graph): forms whose products gain
        nothing on them (:attr:`ClosedForm.sampled_rows_gain`) are not tried.

    Notes
    -----
    A section whose positions an ``attention_mask`` among the inputs covers
    takes autograd, or a form that reads padding as autograd does
    (:attr:`ClosedForm.padding`): the others know nothing of padding.  Under
    ``torch.distributed`` a form serves a product only where every rank's
    check chose it, so that all ranks run the same passes.
    """
    if jacobian == "autograd":
        return RouteTable([autograd_route(section) for section in sections])
    names = [section.src for section in sections]
    reading = Exploratory(
        f"Reading the probe's activations of {names} to choose the routes",
        "every section takes autograd",
    )
    routes = [autograd_route(section) for section in sections]
    with reading, torch.no_grad():
        acts = session.read(probe, names)
    if reading.error is None:
        registry = [form for form in REGISTRY if form.sampled_rows_gain or not sampled]
        routes = [
            _decide(session, probe, s, f, rule, kinds, registry=registry)
            for s, f in zip(sections, acts)
        ]
    # Every rank agrees, also one whose reading failed: all ranks run the same passes.
    return RouteTable(_agreed(routes, session.device))


def _decide(session, probe, section, f, rule, kinds, *, registry):
    alphas, weights = rule
    points = scaled(f, alphas)
    rows = Cotangents.identity(section.dst_shape, session.dtype, session.device).rows
    skipped = [
        f"{form.title}: its rows cost what autograd's cost where all are random sources"
        for form in REGISTRY
        if form not in registry
    ]
    unmatched = []
    forms = applicable_forms(session, section, registry, skipped=skipped, warn=unmatched)
    for title, why in unmatched:
        _falls_back(section, title, why)
    if masked(probe, points, rows):  # only forms that read padding as autograd does
        skipped += [
            f"{f.title}: an attention_mask covers its positions" for f in forms if not f.padding
        ]
        forms = [form for form in forms if form.padding]
    if not forms:
        return SectionRoute(section, skipped=tuple(skipped))
    checked = Probe(probe, points, rows, weights)
    chosen, verdicts = {}, []
    notes = (verdicts, skipped)
    for kind in ("gram", "tangents"):
        if kind in kinds:
            chosen[kind] = _first_passing(session, section, forms, kind, checked, notes)
    if "rows" in kinds and (not chosen or None in chosen.values()):
        chosen["rows"] = _first_passing(session, section, forms, "rows", checked, notes)
    return SectionRoute(section, verdicts=tuple(verdicts), skipped=tuple(skipped), **chosen)


def _agreed(routes, device):
    """``routes`` with each product's form kept only where every rank chose the same."""
    forms = [[route.form(kind) for kind in KINDS] for route in routes]
    # The place of each chosen form's class in the registry, -1 for autograd.
    chosen = [[-1 if f is None else REGISTRY.index(type(f)) for f in row] for row in forms]
    agreed = agreed_values(chosen, device)
    routes = [
        replace(route, **{k: f if a == c else None for k, f, a, c in zip(KINDS, row, ok, mine)})
        for route, row, ok, mine in zip(routes, forms, agreed, chosen)
    ]
    # A final map's exact rows serve every position where every rank found so: its
    # rows per batch, and so the plan, must be the same everywhere.
    finals = [route.gram for route in routes if isinstance(route.gram, FinalLinear)]
    apart = agreed_values([int(bool(form.shares_positions)) for form in finals], device)
    for form, flag in zip(finals, apart):
        form.shares_positions = flag == 1
    return routes


def _first_passing(session, section, forms, kind, probe, notes):
    """The first of ``forms`` that offers ``kind`` and passes its check; the others warn.

    ``notes = (verdicts, skipped)``: lists that get each check's verdict, and
    each form found on the values not to offer ``kind``, saying why.
    """
    verdicts, skipped = notes
    if kind == "tangents":
        tangents = _probe_tangents(probe.x, probe.points, session)
        probe = Probe(probe.x, probe.points, probe.rows, probe.weights, tangents)
    for form in forms:
        # A check that raises (the model, or the form, on the probe): the form is not used.
        with Exploratory() as checking:
            passed, why = form.check(session, section, kind, probe)
        if checking.error is not None:
            passed, why = False, f"its check raised {checking.why}"
        if passed is None:
            note = f"{form.describe(kind)}: {why}"
            if why and note not in skipped:
                skipped.append(note)
            continue  # the form does not offer this kind
        verdicts.append(Verdict(form.describe(kind), kind, passed, why))
        if passed:
            return form
        _falls_back(section, form.describe(kind), why)
    return None


def _falls_back(section, form, why):
    """Warn that ``form`` does not serve ``section``, and why: autograd does."""
    warn_fallback(
        f"{form} is not used on the section {section.src!r} -> {section.dst_title}: {why}; "
        "using autograd instead"
    )


def _probe_tangents(probe, points, session):
    """Seeded random directions ``(J, d)`` and coefficients ``(n, P_in, J)`` for a check.

    Directional derivatives are linear in both, so random ones test every
    direction a basis could ask for.
    """
    n, d = n_rows(probe), points.shape[-1]
    J = min(d, 4)
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(J, d, generator=generator, dtype=torch.float64)
    positions = points[0].numel() // d
    coefficients = torch.randn(n, positions, J, generator=generator, dtype=torch.float64)
    return directions.to(session.device), coefficients.to(session.device)
