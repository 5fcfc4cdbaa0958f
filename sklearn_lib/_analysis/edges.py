"""The edges of an interaction graph: one pass over the data, one accumulator per section.

See :mod:`~sklearn_lib._analysis.graph` for the edge's definition; the
directional derivatives are the sections' own
(:meth:`~sklearn_lib._routes.jacobian.SectionJacobian.edge_sums`), by the
route table's routes.
"""

from .._core.distributed import row_average
from .._core.nodes import Section, n_positions
from .._fitting.stochastic import edge_sources
from .._model.session import outside_inference_mode
from .._routes.cotangents import Cotangents, batch_cotangents, section_reads
from .._routes.integration import integration_rule, rule_tensors
from .._routes.jacobian import SectionJacobian
from .graph import InteractionGraph


class EdgeAccumulator:
    """Accumulator of the squared edges of one section (see ``_model.session`` for the protocol).

    Parameters
    ----------
    session : ModelSession
    route : SectionRoute
        How the section's products are served (the route table's).
    src, dst : NodeBasis
        The section's fitted nodes (``dst`` may be the output node).
    rule : (torch.Tensor, torch.Tensor)
        Integration points and weights on the session's device.
    n_stochastic_sources : int or None
        Random +-1 projections over the output positions per batch, instead
        of the exact sum over them (:func:`~sklearn_lib._fitting.stochastic.edge_sources`).
    lengths_vary : bool or None, default=False
        Whether batches may differ in sequence length (see
        :func:`~sklearn_lib._routes.cotangents.section_reads`).
    """

    def __init__(
        self, session, route, src, dst, rule, *, n_stochastic_sources=None, lengths_vary=False
    ):
        self.session, self.src, self.rule = session, src, rule
        self.route_section = route.section
        self.reads = section_reads(route.section, lengths_vary)
        self.key = (src.name, dst.name)
        self.sources = n_stochastic_sources
        self.section = SectionJacobian(session, route)
        self.src_tensors = src.tensors(session.device)
        # At the positions of the call's probe, which may differ from the fit's.
        matrix = dst.tensors(session.device, session.dtype)[1]
        self.exact = Cotangents(matrix, n_positions(route.section.dst_shape))
        self.total = 0
        self.rows = 0
        self.count = 0

    def update(self, batch, acts):
        exact = batch_cotangents(self.exact, self.route_section, acts)
        cotangents = edge_sources(exact, self.sources, self.session.generator)
        f = acts[self.src.name]
        self.total = self.total + self.section.edge_sums(
            batch.x, f, self.src_tensors, cotangents, self.rule
        )
        self.rows += batch.n_rows(f.shape[1:])
        self.count += batch.n

    def result(self):
        """Edges ``(k_out, k_in)`` averaged over all ``N * P_in`` rows (valid ones), and N."""
        return row_average(self.total, self.rows, self.count)


def graph_sections(bases):
    """The sections between consecutive fitted nodes, with their shapes."""
    return tuple(
        Section(src.name, dst.name, tuple(src.shape), tuple(dst.shape))
        for src, dst in zip(bases[:-1], bases[1:])
    )


@outside_inference_mode
def interaction_graph(
    session,
    source,
    bases,
    routes,
    *,
    integration="gradient",
    n_intervals=0,
    n_stochastic_sources=None,
    known=None,
):
    """The interaction graph of consecutive fitted nodes, from one pass over the data.

    Parameters
    ----------
    session : ModelSession
    source : ArraySource or StreamSource
    bases : list of NodeBasis
        In forward order, the last one the model output's.
    routes : RouteTable
        The route of each section (:func:`graph_sections`), decided on the
        same rule (:func:`~sklearn_lib._routes.table.decide_routes`).
    integration, n_intervals
        The integration rule (:func:`~sklearn_lib.integration_rule`).
    n_stochastic_sources : int or None
    known : dict, optional
        Edges ``(E, N)`` of sections found already on the same data and
        rule, by ``(src, dst)`` names (a fit's, see
        :func:`~sklearn_lib._fitting.fit.fit_bases`); only the others take the pass,
        and none is run when every section is known.

    Returns
    -------
    InteractionGraph
    """
    rule = rule_tensors(integration_rule(integration, n_intervals), session.device)
    found = dict(known or {})
    # The routes' sections hold the shapes of the call's data.
    sections = [routes[section].section for section in graph_sections(bases)]
    sources = {"n_stochastic_sources": n_stochastic_sources, "lengths_vary": source.lengths_vary}
    accumulators = [
        EdgeAccumulator(session, routes[section], src, dst, rule, **sources)
        for section, src, dst in zip(sections, bases[:-1], bases[1:])
        if (src.name, dst.name) not in found
    ]
    if accumulators:
        # One forward pass per batch reads every section's input.
        what = "edges " + ", ".join(f"{acc.key[0]!r} -> {acc.key[1]!r}" for acc in accumulators)
        results = session.run_pass(source, accumulators, what)
        found.update((acc.key, result) for acc, result in zip(accumulators, results))
    info = {
        "basis": bases[0].kind,
        "integration": integration,
        "n_intervals": int(n_intervals),
        "n_stochastic_sources": n_stochastic_sources,
    }
    return _graph(bases, [(s.src, s.dst) for s in sections], found, info)


def _graph(bases, keys, found, info):
    """The :class:`InteractionGraph` of ``bases`` from the edges ``(E, N)`` ``found`` by key."""
    return InteractionGraph(
        [basis.name for basis in bases],
        {basis.name: basis.lambdas[: basis.n_components].copy() for basis in bases},
        {key: found[key][0] for key in keys},
        {**info, "n_samples": found[keys[0]][1]},
    )
