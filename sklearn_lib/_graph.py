"""Interaction graphs: edges between the LIB features of consecutive node layers.

For a section from node layer ``l`` to ``l+1``, ``F_hat`` maps layer-``l``
features to layer-``(l+1)`` features (through ``C_pinv``, the section and
``C_next``), and the spec's squared edge is

    E[i, j] = 1/(N P_in) sum_x sum_t (
                  sum_s sum_a w_a dF_hat_{i,t}/df_hat_{j,s}(a f_hat) f_hat_{j,s}
              )^2

Gradients with respect to features follow from those with respect to
activations by the chain rule: ``f = f_hat @ C_pinv[:k] + mu`` gives
``d/df_hat = (d/df) @ C_pinv[:k]^T``.  Only non-constant features have
edges (the paper's constant bias feature is not part of the basis here).
"""

import json
from dataclasses import dataclass, field

import numpy as np

from ._basis import OUTPUT_NODE
from ._integration import integration_rule, rule_tensors
from ._jacobian import Cotangents
from ._section import SectionJacobian
from ._stats import row_average


@dataclass
class InteractionGraph:
    """Node layers, their features' Lambda, and squared edges between them.

    Attributes
    ----------
    nodes : list of str
        Node layers in forward order; the last is ``"output"``.
    lambdas : dict of str to ndarray
        ``Lambda`` of each node's kept features (ones for an identity output).
    edges : dict of (str, str) to ndarray
        ``edges[(src, dst)]`` has shape ``(n_dst_features, n_src_features)``,
        all entries ``>= 0``.
    info : dict
        How the edges were computed (integration rule, samples, sources).
    """

    nodes: list
    lambdas: dict
    edges: dict
    info: dict = field(default_factory=dict)

    @property
    def sections(self):
        """``(src, dst)`` pairs in forward order."""
        return list(zip(self.nodes[:-1], self.nodes[1:]))

    def top_edges(self, section, n_edges):
        """Boolean mask of the ``n_edges`` strongest edges of a section."""
        E = self.edges[tuple(section)]
        # A stable sort keeps ties in a fixed (row-major) order.
        order = np.argsort(-E, axis=None, kind="stable")
        mask = np.zeros(E.size, dtype=bool)
        mask[order[:n_edges]] = True
        return mask.reshape(E.shape)

    def summary(self, top=5):
        """A short text description: features, edge totals and the strongest edges."""
        lines = [f"InteractionGraph with {len(self.nodes)} node layers ({self.info})"]
        for node in self.nodes:
            lam = self.lambdas[node]
            lines.append(f"  node {node!r}: {lam.shape[0]} features, Lambda max {lam.max():.4g}")
        for src, dst in self.sections:
            E = self.edges[(src, dst)]
            flat = np.sort(E, axis=None)[::-1]
            share = np.cumsum(flat) / max(flat.sum(), np.finfo(float).tiny)
            n90 = int(np.searchsorted(share, 0.9)) + 1
            lines.append(
                f"  edges {src!r} -> {dst!r}: {E.shape[1]} x {E.shape[0]}, total {E.sum():.4g}, "
                f"{n90} of {E.size} edges carry 90% of it"
            )
            for idx in np.argsort(-E, axis=None, kind="stable")[:top]:
                i, j = np.unravel_index(idx, E.shape)
                lines.append(f"    {src}[{j}] -> {dst}[{i}]: {E[i, j]:.4g}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def save(self, path):
        """Save as a compressed ``.npz`` of plain arrays and JSON (no pickle)."""
        arrays = {f"lambdas_{i}": self.lambdas[n] for i, n in enumerate(self.nodes)}
        arrays.update({f"edges_{i}": self.edges[s] for i, s in enumerate(self.sections)})
        meta = json.dumps({"nodes": self.nodes, "info": self.info})
        np.savez_compressed(path, meta=np.array(meta), **arrays)

    @classmethod
    def load(cls, path):
        """Load a graph written by :meth:`save` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            nodes = meta["nodes"]
            lambdas = {n: data[f"lambdas_{i}"] for i, n in enumerate(nodes)}
            edges = {s: data[f"edges_{i}"] for i, s in enumerate(zip(nodes[:-1], nodes[1:]))}
        return cls(nodes, lambdas, edges, meta["info"])

    def plot(self, top_edges=200, ax=None, **kwargs):
        """Layered drawing; see :func:`sklearn_lib.plotting.plot_interaction_graph`."""
        from .plotting import plot_interaction_graph

        return plot_interaction_graph(self, top_edges=top_edges, ax=ax, **kwargs)


class EdgeAccumulator:
    """Accumulator of the squared edges of one section (see ``_session`` for the protocol).

    Parameters
    ----------
    session : ModelSession
    src, dst : NodeBasis
        The section's fitted nodes (``dst`` may be the output node).
    rule : (torch.Tensor, torch.Tensor)
        Integration points and weights on the session's device.
    n_stochastic_sources : int or None
        Random +-1 projections over the output positions per batch, instead
        of the exact sum over them.
    jacobian : {"auto", "autograd"}
    """

    def __init__(self, session, src, dst, rule, n_stochastic_sources=None, jacobian="auto"):
        self.session, self.src, self.rule = session, src, rule
        self.reads = (src.name,)
        self.key = (src.name, dst.name)
        self.sources = n_stochastic_sources
        dst_name = None if dst.name == OUTPUT_NODE else dst.name
        self.section = SectionJacobian(session, src.name, dst_name, jacobian)
        self.src_tensors = src.tensors(session.device)
        self.exact = Cotangents(dst.tensors(session.device, session.dtype)[1], dst.n_positions)
        self.total = 0
        self.count = 0

    def update(self, batch, acts):
        cotangents = self.exact.sampled(self.sources, self.session.generator, False)
        f = acts[self.src.name]
        self.total = self.total + self.section.edge_sums(
            batch.x, f, self.src_tensors, cotangents, self.rule
        )
        self.count += batch.n

    def result(self):
        """Edges ``(k_out, k_in)`` averaged over all ``N * P_in`` rows (of every rank), and N."""
        return row_average(self.total, self.count, self.src.n_positions)


def interaction_graph(
    session,
    source,
    bases,
    *,
    integration="gradient",
    n_intervals=0,
    n_stochastic_sources=None,
    jacobian="auto",
):
    """The interaction graph of consecutive fitted nodes, from one pass over the data.

    Parameters
    ----------
    session : ModelSession
    source : ArraySource or StreamSource
    bases : list of NodeBasis
        In forward order, the last one the model output's.
    integration, n_intervals
        The integration rule (:func:`~sklearn_lib.integration_rule`).
    n_stochastic_sources : int or None
    jacobian : {"auto", "autograd"}

    Returns
    -------
    InteractionGraph
    """
    rule = rule_tensors(integration_rule(integration, n_intervals), session.device)
    accumulators = [
        EdgeAccumulator(session, src, dst, rule, n_stochastic_sources, jacobian)
        for src, dst in zip(bases[:-1], bases[1:])
    ]
    # One forward pass per batch reads every section's input.
    what = "edges " + ", ".join(f"{acc.key[0]!r} -> {acc.key[1]!r}" for acc in accumulators)
    results = session.run_pass(source, accumulators, what)
    edges = {acc.key: E for acc, (E, _) in zip(accumulators, results)}
    nodes = [basis.name for basis in bases]
    lambdas = {basis.name: basis.lambdas[: basis.n_components].copy() for basis in bases}
    info = {
        "basis": bases[0].kind,
        "integration": integration,
        "n_intervals": int(n_intervals),
        "n_stochastic_sources": n_stochastic_sources,
        "n_samples": results[0][1],
    }
    return InteractionGraph(nodes, lambdas, edges, info)
