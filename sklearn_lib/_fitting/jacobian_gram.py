"""The accumulator of one section's ``M'``, and the edges from the rows it made."""

import torch

from .._core.distributed import all_reduce_sum, row_average
from .._core.gram_sum import GramSum
from .._core.numerics import ROW_REUSE_BYTES, max_relative_error
from .._routes.cotangents import Cotangents, batch_cotangents, section_reads
from .._routes.jacobian import SectionJacobian
from .stochastic import m_prime_sources


class JacobianGram:
    """Accumulator of ``M'`` of one section (see ``_model.session`` for the protocol).

    Exact: one row per output position and next feature.  With
    ``n_stochastic_sources=S``: ``S`` random +-1 combinations of all rows per
    batch, whose average Gram is an unbiased estimate.

    Parameters
    ----------
    session : ModelSession
    route : SectionRoute
        The section, with its shapes, and how its products are served.
    matrix : torch.Tensor of shape (d_next, k_next)
        The next node's kept LIB matrix, in the session's dtype and device.
    n_positions_out : int
        Positions of the next node.
    sources : int or None
        Random sources per batch (:func:`~sklearn_lib._fitting.stochastic.m_prime_sources`);
        None: exact.
    per_sample : bool, default=False
        Draw the sources for each sample of a batch apart (the plan's
        :attr:`~sklearn_lib._fitting.plan.SectionPlan.per_sample`).
    rule : (torch.Tensor, torch.Tensor)
        Integration points and weights on the session's device.
    keep_rows : bool, default=False
        Keep the exact Jacobian rows the pass makes (up to
        :data:`~sklearn_lib._core.numerics.ROW_REUSE_BYTES`), so that
        :meth:`edges` gives the section's edges without a pass of its own;
        the plan asks for it only for exact rows at the fit's own points
        (the plain gradient).
    lengths_vary : bool or None, default=False
        Whether batches may differ in sequence length (the source's
        ``lengths_vary``): the rows of each batch are then those of its own
        output positions (:func:`~sklearn_lib._routes.cotangents.batch_cotangents`).
    """

    def __init__(
        self,
        session,
        route,
        matrix,
        n_positions_out,
        *,
        sources,
        rule,
        per_sample=False,
        keep_rows=False,
        lengths_vary=False,
    ):
        section = route.section
        self.session, self.src, self.route_section = session, section.src, section
        self.reads = section_reads(section, lengths_vary)
        self.what = f"Jacobians {section}"
        self.sources, self.per_sample = sources, per_sample
        self.features = route.source_features
        self.rule = rule
        self.section = SectionJacobian(session, route)
        self.exact = self.home = Cotangents(matrix, n_positions_out)
        self.sums = self._new_sum()
        self.rows = 0
        self.count = 0
        self.kept = [] if keep_rows else None
        self.kept_bytes = 0

    def reset(self, sources, matrix=None):
        """Start over with ``sources`` random sources per batch (a new round), in the
        next node's kept ``matrix`` where given (a half basis of its rounds), else in
        the next basis it was made with."""
        self.exact = self.home if matrix is None else Cotangents(matrix, self.home.n_positions)
        self.sources = sources
        self.sums = self._new_sum()
        self.rows = self.count = 0
        self.kept = None  # sampled rows are not the edges' rows

    def update(self, batch, acts):
        exact = batch_cotangents(self.exact, self.route_section, acts)
        f = acts[self.src]
        n = f.shape[0] if self.per_sample else None
        cotangents = m_prime_sources(
            exact, self.sources, self.session.generator, n, features=self.features
        )
        # The batch's rows, (R, n, P_in, d) at most: over the budget before they
        # are made, none is kept.
        size = (1 + len(cotangents.rows)) * f.numel() * f.element_size()
        if self.kept is not None and self.kept_bytes + size > ROW_REUSE_BYTES:
            self.kept = None
        self._made = None if self.kept is None else []
        keep = None if self.kept is None else self._keep
        self.section.gram_sum(batch.x, f, cotangents, self.rule, keep=keep, into=self.sums)
        self.rows += batch.n_rows(f.shape[1:])
        self.count += batch.n
        if self.kept is not None:
            if not self._made:  # a closed form gave the Gram without rows
                self.kept = None
            else:
                self.kept.append((batch, f, exact, self._made))
                self.kept_bytes += f.numel() * f.element_size()
        self._made = None

    def _new_sum(self):
        """The running ``sum g g^T``: products in the fit's dtype where its first
        batch certifies them (see :class:`~sklearn_lib._core.gram_sum.GramSum`)."""
        d = self.route_section.src_shape[-1]
        return GramSum(d, self.session.device, self.session.dtype)

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
        return row_average(self.sums.total, self.rows, self.count)[0]

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
            _same_points(f, tensors, self.session.tolerances.same_points) for _, f, _, _ in kept
        )
        # Every rank decides alike, or some would run a pass that others skip.
        unusable = all_reduce_sum(torch.tensor(float(not usable), device=self.session.device))
        if float(unusable) > 0:
            return None
        total, rows, count = 0, 0, 0
        for batch, f, exact, chunks in kept:
            total = total + self.section.edge_sums(
                batch.x, f, tensors, exact, self.rule, rows=chunks
            )
            rows += batch.n_rows(f.shape[1:])
            count += batch.n
        return row_average(total, rows, count)


def _same_points(f, src, rtol):
    """Whether the kept features of basis ``src`` reconstruct activations ``f``."""
    mean, C, C_pinv = src
    f = f.to(torch.float64)
    return max_relative_error((f - mean) @ C @ C_pinv + mean, f) <= rtol
