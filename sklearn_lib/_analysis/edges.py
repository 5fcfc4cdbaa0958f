"""The edges of an interaction graph: one pass over the data, one accumulator per section.

See :mod:`~sklearn_lib._analysis.graph` for the edge's definition; the
directional derivatives are the sections' own
(:meth:`~sklearn_lib._routes.jacobian.SectionJacobian.edge_sums`), by the
route table's routes.
"""

from .._core.distributed import row_average
from .._core.nodes import Section
from .._fitting.stochastic import edge_sources
from .._model.session import outside_inference_mode
from .._routes.cotangents import Cotangents
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
    """

    def __init__(self, session, route, src, dst, rule, n_stochastic_sources=None):
        self.session, self.src, self.rule = session, src, rule
        self.reads = (src.name,)
        self.key = (src.name, dst.name)
        self.sources = n_stochastic_sources
        self.section = SectionJacobian(session, route)
        self.src_tensors = src.tensors(session.device)
        self.exact = Cotangents(dst.tensors(session.device, session.dtype)[1], dst.n_positions)
        self.total = 0
        self.rows = 0
        self.count = 0

    def update(self, batch, acts):
        cotangents = edge_sources(self.exact, self.sources, self.session.generator)
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
    sections = graph_sections(bases)
    accumulators = [
        EdgeAccumulator(session, routes[section], src, dst, rule, n_stochastic_sources)
        for section, src, dst in zip(sections, bases[:-1], bases[1:])
        if (src.name, dst.name) not in found
    ]
    if accumulators:
        # One forward pass per batch reads every section's input.
        what = "edges " + ", ".join(f"{acc.key[0]!r} -> {acc.key[1]!r}" for acc in accumulators)
        results = session.run_pass(source, accumulators, what)
        found.update((acc.key, result) for acc, result in zip(accumulators, results))
    keys = [(s.src, s.dst) for s in sections]
    edges = {key: found[key][0] for key in keys}
    nodes = [basis.name for basis in bases]
    lambdas = {basis.name: basis.lambdas[: basis.n_components].copy() for basis in bases}
    info = {
        "basis": bases[0].kind,
        "integration": integration,
        "n_intervals": int(n_intervals),
        "n_stochastic_sources": n_stochastic_sources,
        "n_samples": found[keys[0]][1],
    }
    return InteractionGraph(nodes, lambdas, edges, info)
