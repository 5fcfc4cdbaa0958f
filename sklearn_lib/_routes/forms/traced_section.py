"""The closed form of a section read from its trace: attention, LayerNorm and MLPs by
batched products, with no autograd graph.

Every transformer has attention, ``softmax(q k^T * scale + mask) v``, and
however the user writes it (``@``, ``matmul``, ``einsum``, ``bmm`` or
``F.scaled_dot_product_attention``; projections by ``nn.Linear``,
``F.linear``, ``addmm`` as Hugging Face's ``Conv1D`` does, or parameter
products; any head layout, causal or given masks), it is a composition of
a few operations whose vector-Jacobian products are matrix products.  So
the section is not matched against one pattern: its trace
(:mod:`~sklearn_lib._routes.section_graph`) is run forward once per batch,
keeping each node's value, and the cotangent rows go back through the
nodes all at once, each node by its product in the table of
:mod:`.traced_ops`.  For the softmax of attention scores that product is
``P * (G - sum(G * P))``; for ``q k^T`` it is two batched matrix
products; for a weight, one matrix product of all rows.  An attention
block with its residual add, a whole pre-LayerNorm transformer block, an
MLP with its last position sliced off: any section whose every operation
is in the table is one closed form.

The exact rows of a section with several output positions (a block's
``P k`` rows, one per position and next feature) first go back per
position (:mod:`.traced_positions`): through the MLP, the LayerNorms, the
projections and attention's query path, row ``(t, i)`` is zero at every
position but ``t``, so ``k`` rows stand for all ``P k``; only the products
that mix positions (attention's keys and values) and what follows them take
the rows whole, chunk by chunk.  That path is checked once per trace against
the whole rows.

Where a section holds attention (a product of two tensors that both depend
on its start, or a softmax) but an operation outside the table, the fit
warns and names it: the speed is lost, never the result.  Like every closed
form, this one is checked once against autograd on the probe.
"""

import itertools

import torch

from ..._model.failures import Exploratory, warn_fallback
from ..._model.inputs import is_dict, n_rows, point_mask, repeat_rows
from ..autograd import autograd_rows
from ..products import integrated
from ..section_export import exported_section
from ..section_graph import FX_FAILS, section_graph
from .base import ClosedForm, Inapplicable, NotOffered
from .traced_ops import Unsupported
from .traced_run import Trace


class TracedSection(ClosedForm):
    """A section's rows by batched products through its trace (see the module docstring).

    Parameters
    ----------
    session : ModelSession
    section : Section
    trace : Trace or None
        The fx trace, for every batch; None: exported on each batch's shapes
        (:func:`~sklearn_lib._routes.section_export.exported_section`).
    """

    title = "The traced section's products"
    reads_forward_kwargs = True
    exact_per_position = True  # exact rows go back per output position (traced_positions)
    per_sample_rows = True  # a cotangent per sample at the end goes back like any other
    padding = True  # it reads the mask as the model does, and zeroes padded rows
    # Random rows mix every position: nothing goes back per position, and they cost what
    # autograd's cost (measured on the language-model example's GPT-2: passes within 4%
    # at 1, 4 and 16 sources), after an export of 1-2 s.
    sampled_rows_gain = False

    def __init__(self, session, section, trace=None):
        self.session, self.section, self.trace = session, section, trace
        self._exported, self._by_fields = {}, {}

    @classmethod
    def detect(cls, session, section):
        """The form of ``section``, or an :class:`Inapplicable` saying why not."""
        graph = section_graph(session.model, section, session.forward_kwargs)
        if isinstance(graph, str) and graph.startswith(FX_FAILS):
            return cls(session, section)  # torch.export on the batches' shapes
        if isinstance(graph, str):
            return Inapplicable(graph)
        trace = Trace.of(session.model, graph)
        return trace if isinstance(trace, Inapplicable) else cls(session, section, trace)

    def describe(self, kind):
        return self.title if self.trace is not None else self.title + " (torch.export)"

    def per_position_fits(self, n_features):
        """Whether exact rows of ``n_features`` next features go back per output position
        within :data:`PER_POSITION_BYTES`, as the traces measured them (True before)."""
        return all(t.fits_per_position(n_features) for t in self._traces())

    def batch_within_cache(self):
        """The most samples per batch whose rows the traces make in cache-sized chunks
        (:meth:`Trace.batch_within_cache`), or None where no trace has a bound."""
        sizes = [t.batch_within_cache(self.session.device) for t in self._traces()]
        return min((s for s in sizes if s is not None), default=None)

    def _traces(self):
        """The traces made so far."""
        traces = [self.trace] if self.trace is not None else []
        return traces + [t for t in [*self._exported.values(), *self._by_fields.values()]
                         if isinstance(t, Trace)]  # fmt: skip

    def _trace(self, x, m):
        """The trace for ``m`` points of batch ``x``; raises :class:`NotOffered` or
        :class:`Unsupported` (attention) where there is none.

        fx: the one traced with the forward's defaults, or, for a dict batch,
        one with its fields as inputs (a mask the defaults leave out).
        Otherwise the export on the points' shapes (the batch repeated once
        per point of the rule); an export that fails after one succeeded raises
        a ``RuntimeError``, which :meth:`rows` warns of.
        """
        model, kwargs = self.session.model, self.session.forward_kwargs
        if self.trace is not None and not is_dict(x):
            return self.trace
        if self.trace is not None:
            key = tuple(sorted(x))
            if key not in self._by_fields:
                graph = section_graph(model, self.section, kwargs, key)
                self._by_fields[key] = graph if isinstance(graph, str) else Trace.of(model, graph)
            return _usable(self._by_fields[key])
        graph = exported_section(model, self.section, repeat_rows(x, m // n_rows(x)), kwargs)
        if isinstance(graph, str) and any(isinstance(t, Trace) for t in self._exported.values()):
            # Exported before (for the check that chose this form): the model's code
            # traces, so an export that fails on other shapes gives the route up there,
            # which is said.
            raise RuntimeError(f"on inputs shaped as this batch, {graph}")
        if isinstance(graph, str):
            raise NotOffered(graph)
        key = (graph.start, graph.end)  # the same nodes: the same kept export
        if key not in self._exported:
            self._exported = {key: Trace.of(model, graph)}  # the last batch shape's
        return _usable(self._exported[key])

    def vjp(self, x, points, cotangents, tangents=None):
        """Rows ``J^T c`` at every point, ``(R, m or 1, *positions, d)``; directional
        derivatives are made from rows (NotImplemented)."""
        if tangents is not None:
            return NotImplemented
        with torch.no_grad():
            return torch.cat(list(self._made(x, points, cotangents)))

    def _made(self, x, points, cotangents):
        """The rows at every point, chunk by chunk, the forward run once for all; padded
        input positions zeroed, as every pass counts them."""
        trace = self._trace(x, points.shape[0])
        values, saved = trace.forward(points.detach(), x)
        mask = point_mask(x, points.shape[1:], points.shape[0], points.dtype)
        for g in trace.chunks(values, saved, cotangents, x):
            yield g if mask is None else g * mask

    def rows(self, x, points, rows, weights, chunks):
        """Integrated rows ``(r, n or 1, P_in, d)``, the forward run once for all chunks.

        A batch the trace does not serve (a shape the export does not cover,
        a failure on its values) takes autograd's rows, with a warning where
        it failed; the check against autograd passed on other batches.
        """
        n = n_rows(x)
        with Exploratory() as tracing, torch.no_grad():  # out of memory propagates
            made = self._made(x, points, rows)
            first = next(made, None)
        if tracing.error is not None:  # the batch is autograd's: same rows, slower
            if not isinstance(tracing.error, NotOffered):
                warn_fallback(
                    f"{self.title} failed on a batch ({tracing.why}); the section "
                    f"{self.section.src!r} -> {self.section.dst_title} takes autograd's "
                    "rows there"
                )
            yield from autograd_rows(self.session, self.section, x, points, rows, weights)
            return
        with torch.no_grad():
            for g in itertools.chain([first] if first is not None else [], made):
                yield integrated(g, weights, n)


# -- helpers ---------------------------------------------------------------------------
def _usable(trace):
    """``trace``, or the exception that says why there is none."""
    if isinstance(trace, str):
        raise NotOffered(trace)
    if isinstance(trace, Inapplicable):
        raise (Unsupported if trace.warn else NotOffered)(trace.why)
    return trace
