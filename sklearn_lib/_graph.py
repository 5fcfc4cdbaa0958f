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
import torch
from sklearn.utils import check_random_state

from ._capture import NodeLayer, resolve_module
from ._integration import integration_rule
from ._jacobian import cotangent_rows, scaled
from ._section import SectionJacobian
from ._stats import all_reduce_sum, global_count
from ._utils import Progress, batch_slices


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


def section_nodes(lib):
    """``NodeLayer`` objects for every fitted node (None stands for the output)."""
    nodes = []
    for name, basis in lib.bases_.items():
        if name == "output":
            nodes.append(None)
        else:
            nodes.append(NodeLayer(name, resolve_module(lib.model, name), basis.shape))
    return nodes


def kept_tensors(basis, device):
    """``(mean, C[:, :k], C+[:k])`` of a NodeBasis as float64 tensors on ``device``."""
    return tuple(
        torch.as_tensor(a, device=device) for a in (basis.mean, basis.kept_matrix, basis.kept_pinv)
    )


def edges_batch(section, x, f, src_basis, dst_basis, alphas, weights, signs=None):
    """Un-normalised squared edges of one batch, shape (k_out, k_in), float64.

    ``section`` is the :class:`~sklearn_lib._section.SectionJacobian` from
    ``src_basis``'s node layer to ``dst_basis``'s and ``f`` the activations
    of its source on the batch ``x``.
    """
    mean, C, C_pinv = kept_tensors(src_basis, x.device)
    f_hat = (f.to(torch.float64) - mean) @ C  # (n, *positions, k_in)
    # Points a * f_hat in feature space, mapped back to activations.
    points = (scaled(f_hat, alphas) @ C_pinv + mean).to(f.dtype)  # (A*n, *positions, d)
    f_hat_rows = f_hat.reshape(f.shape[0], -1, C.shape[1])  # (n, P_in, k_in)
    basis_next = torch.as_tensor(dst_basis.kept_matrix, device=x.device, dtype=f.dtype)
    rows = cotangent_rows(basis_next, dst_basis.n_positions, signs)
    # sum_x (sum_s dF_hat_r/df_hat_{j,s} * f_hat_{j,s})^2: the derivative along row j of
    # C_pinv, scaled by the feature's value at each input position, squared.
    sums = section.directional_square_sums(x, points, rows, weights, C_pinv, f_hat_rows)
    k_out = basis_next.shape[1]
    per_row = sums.reshape(-1, k_out, sums.shape[1])  # (P_out or S, k_out, k_in)
    return per_row.sum(0) if signs is None else per_row.mean(0)


def compute_interaction_graph(
    lib,
    X,
    *,
    integration=None,
    n_intervals=None,
    n_stochastic_sources=None,
    random_state=None,
    verbose=None,
):
    """Edges of every section of a fitted :class:`LIBTransformer`; see its method."""
    integration = lib.integration if integration is None else integration
    n_intervals = lib.n_intervals if n_intervals is None else n_intervals
    alphas, weights = integration_rule(integration, n_intervals)
    if n_stochastic_sources is not None and (
        not isinstance(n_stochastic_sources, (int, np.integer)) or n_stochastic_sources < 1
    ):
        raise ValueError(
            f"n_stochastic_sources={n_stochastic_sources!r} must be None or an int >= 1"
        )
    rng = check_random_state(lib.random_state if random_state is None else random_state)
    generator = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
    progress = Progress("interaction_graph", lib.verbose if verbose is None else verbose)
    X = lib._validate_input(X, reset=False)
    names = list(lib.bases_)
    nodes = section_nodes(lib)
    pairs = list(zip(names[:-1], names[1:]))
    with lib._model_session() as runner:
        rule = [torch.as_tensor(v, device=runner.device) for v in (alphas, weights)]
        sections = [
            SectionJacobian(runner, src, dst, lib._structured) for src, dst in zip(nodes, nodes[1:])
        ]
        totals = [0] * len(sections)
        what = "edges " + ", ".join(f"{src!r} -> {dst!r}" for src, dst in pairs)
        batches = progress.batches(batch_slices(len(X), lib.batch_size), len(X), what)
        for sl in batches:
            x = lib._to_tensor(runner, X[sl])
            # One forward pass reads every section's input.
            with torch.no_grad():
                reads = runner.read(x, [section.src.module for section in sections])
            for i, (section, f) in enumerate(zip(sections, reads)):
                dst_basis = lib.bases_[pairs[i][1]]
                signs = None
                if n_stochastic_sources is not None:
                    draws = torch.randint(
                        0, 2, (n_stochastic_sources, dst_basis.n_positions), generator=generator
                    )
                    signs = (2 * draws - 1).to(runner.device)
                src_basis = lib.bases_[pairs[i][0]]
                totals[i] = totals[i] + edges_batch(
                    section, x, f, src_basis, dst_basis, *rule, signs
                )
        edges = {}
        for pair, total in zip(pairs, totals):
            # Sums over every rank's shard when torch.distributed runs.
            total = all_reduce_sum(total)
            n = global_count(len(X), total.device)
            edges[pair] = (total / (n * lib.bases_[pair[0]].n_positions)).cpu().numpy()
    lambdas = {
        name: basis.lambdas[: basis.n_components].copy() for name, basis in lib.bases_.items()
    }
    info = {
        "basis": lib.basis,
        "integration": integration,
        "n_intervals": int(n_intervals),
        "n_stochastic_sources": n_stochastic_sources,
        "n_samples": n,
    }
    return InteractionGraph(names, lambdas, edges, info)
