"""One traced section graph run forward once per batch, and its rows sent back through it.

:class:`Trace` holds a section graph (:mod:`~sklearn_lib._routes.section_graph`)
with each dependent node's operation from :mod:`.traced_ops`.  It runs the
nodes forward on a batch, keeping what each product needs, then sends the
cotangent rows back node by node, chunk by chunk: exact rows of several
output positions first per position (:mod:`.traced_positions`), the rest
whole.  :class:`~.traced_section.TracedSection` is the closed form that
serves a section's rows by it.
"""

import operator
from dataclasses import dataclass

import torch
from torch import fx

from ..._core.numerics import CHUNK_ELEMENTS
from ..._model.failures import Exploratory, warn_fallback
from ..._model.inputs import n_rows, point_mask, repeat_rows
from ..cotangents import ExactRows, expand_to_points
from .base import Inapplicable
from .traced_fusion import chains, slope
from .traced_ops import OPS, Unsupported, describe, flat, op_of
from .traced_pending import Pending, Pieces, folds_kept, sum_of
from .traced_positions import (
    Diagonal,
    as_diagonal,
    diagonal_sum,
    joined_pieces,
    merged,
    nbytes,
    output_positions,
    position_map,
    whole_rows,
)

#: Operations whose presence makes a section attention, for the warning.
ATTENTION_OPS = ("softmax", "sdpa")
BILINEAR_OPS = ("matmul", "einsum")  # not "mul": a gated MLP multiplies two too
#: Bytes of cotangents that one chunk of rows may make at each node, by device type.
#: The rows are batched into matrix products; on a CPU, a chunk that fits its last-level
#: cache beats larger ones (measured on a GPT-2 block with a 32 MiB cache: 16 MiB chunks
#: 6.2 s, 64 MiB 7.4 s, 256 MiB 14.6 s); a GPU wants large products.
#: On a CPU at least MIN_ROWS rows per chunk all the same: where one row's values outgrow
#: the cache (thousands of samples), smaller chunks only add per-chunk work.
ROW_BYTES = {"cpu": 16 << 20}
ROW_BYTES_ELSEWHERE = 16 * CHUNK_ELEMENTS
MIN_ROWS = {"cpu": 4}
#: Rows per chunk that a batch of ``batch_size="auto"`` leaves room for on a CPU: with
#: fewer, each product is a stack of small ones, one per sample (the paper's transformer
#: as a user's class: 2.9 s at 4 rows per chunk, 2.2 s at 21; GPT-2 best at 16).
CACHED_ROWS = 16
#: The most bytes the rows per position of all next features may hold where they wait
#: to be taken whole (attention's scores of every feature): beyond, whole rows throughout.
PER_POSITION_BYTES = 1 << 30


@dataclass(frozen=True)
class _Step:
    """One node of the section: its operation, bound arguments and which depend on the start."""

    node: object
    op: object
    arguments: dict
    wanted: frozenset


class Trace:
    """One section graph with its products: run forward, then rows back, chunk by chunk.

    Parameters
    ----------
    model : torch.nn.Module
        The session's model (its parameters are read at every call).
    graph : SectionGraph
    steps : list of _Step
        The dependent nodes, in the order they run.
    """

    def __init__(self, model, graph, steps):
        self.model, self.graph = model, graph
        # Rows per output position: None untried, True taken, False whole rows from now on.
        self.diagonal, self.bytes_per_feature = None, None
        self.bytes_per_sample = None  # of the largest value a row meets, as last measured
        self.steps = {step.node: step for step in steps}
        # Elementwise chains as one step each: their slope is made in the forward.
        self.chains = chains(self.steps, graph)
        self.chained = set()  # the chains' nodes but their outputs: run with the outputs
        for out, (z, order) in self.chains.items():
            for node in order:
                self.steps.pop(node)
            self.chained.update(order[:-1])
            self.steps[out] = _Step(out, OPS["elementwise"], {"input": z}, frozenset({"input"}))

    @classmethod
    def of(cls, model, graph):
        """The trace of ``graph``, or an :class:`Inapplicable` naming an operation outside
        the table, or an argument one has no product for (to warn of where the section
        holds attention)."""
        found = [(n, *op_of(n, model)) for n in graph.nodes if n in graph.dependent]
        missing = [(node, why) for node, op, why in found if op is None]
        missing += [
            (node, f"{describe(node)} has {op.refuses}")
            for node, op, arguments in found
            if op is not None
            and op.takes is not None
            and not _wanted_names(_wanted(arguments, graph)) <= op.takes
        ]
        if missing:
            node, why = missing[0]
            attention = any(_is_attention(n, op, a, graph) for n, op, a in found) or any(
                _reads_attention(n, graph, model) for n, _ in missing
            )
            return Inapplicable(why, warn=attention)
        steps = [_Step(n, op, a, frozenset(_wanted(a, graph))) for n, op, a in found]
        return cls(model, graph, steps)

    def forward(self, points, x):
        """Every node's value at ``points`` of batch ``x``, and what each product keeps."""
        values, saved = {self.graph.start: points}, {}
        copies = points.shape[0] // n_rows(x)  # the rule's points, alpha-major
        for node in self.graph.nodes:
            if node in self.graph.inputs:  # the model's own input: the batch's, once per point
                values[node] = repeat_rows(self.graph.input_value(node, x), copies)
                continue
            if node in self.chained:
                continue  # run with its chain's output, which alone is read further on
            if node in self.chains:  # a chain's value and slope, in one run
                z, order = self.chains[node]
                values[node], saved[node] = slope(self._run_on, values, z, order)
                continue
            args = fx.node.map_arg(node.args, values.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
            values[node] = self._run(node, args, kwargs)
            step = self.steps.get(node)
            if step is not None and step.op.save is not None:
                bound = _values(step.arguments, values)
                saved[node] = step.op.save(bound, values[node], self._rerun(node, args, kwargs))
        return values, saved

    def _run(self, node, args, kwargs):
        if node in self.graph.constants:  # an export's parameter, a tensor made in forward
            return self.graph.constants[node]()
        if node.op == "get_attr":
            return operator.attrgetter(node.target)(self.model)
        if node.op == "call_module":
            return self.model.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _run_on(self, node, values):
        """``node`` run on ``values`` (by node)."""
        args = fx.node.map_arg(node.args, values.__getitem__)
        return self._run(node, args, fx.node.map_arg(node.kwargs, values.__getitem__))

    def _rerun(self, node, args, kwargs):
        """``call(z)``: the node on ``z`` in place of its first argument."""
        return lambda z: self._run(node, (z, *args[1:]), kwargs)

    def chunks(self, values, saved, cotangents, x):
        """The start's cotangents, chunk by chunk of rows: ``(r, m or 1, *positions, d)``.

        Rows of padded output positions vanish, as on the autograd route.
        Exact rows of several output positions go back per position through
        the position-wise nodes first (:mod:`.traced_positions`).
        """
        out, start = values[self.graph.end], values[self.graph.start]
        mask, kept = point_mask(x, out.shape[1:], out.shape[0], out.dtype), {}
        # Per sample of the batch: an integration rule's points are copies of it.
        self.bytes_per_sample = self._largest(values, self.graph.nodes) / n_rows(x)
        with folds_kept(kept):
            made = self._per_position(values, saved, cotangents, mask)
        chunk = self._chunk(values, made)
        for i in range(0, cotangents.shape[0], chunk):
            with folds_kept(kept):
                g = self._rows(values, saved, made, cotangents, mask, (i, i + chunk))
            if g.shape[1] == 1 and tuple(g.shape[2:]) == tuple(start.shape[1:]):
                yield g  # the same at every point
            else:
                yield g.expand(g.shape[0], *start.shape)

    def _chunk(self, values, made):
        """Rows per chunk: the cotangents of the largest value they meet within the device's
        :data:`ROW_BYTES` (whole rows: at or before the last node ``made`` per position
        leaves to them)."""
        nodes = self.graph.nodes
        if made is not None:
            index = {node: i for i, node in enumerate(nodes)}
            nodes = nodes[: max((index.get(n, 0) for n in made), default=0) + 1]
        device = values[self.graph.start].device.type
        budget = ROW_BYTES.get(device, ROW_BYTES_ELSEWHERE)
        return max(MIN_ROWS.get(device, 1), budget // max(self._largest(values, nodes), 1))

    def _largest(self, values, nodes):
        """Bytes of the largest value of ``nodes`` (or fused attention's pattern)."""
        tensors = [values[n] for n in nodes if isinstance(values.get(n), torch.Tensor)]
        sizes = [t.numel() * t.element_size() for t in tensors]
        sizes += [self._pattern_bytes(n, values) for n in nodes if n in self.steps]
        return max(sizes, default=1)

    def batch_within_cache(self, device):
        """The most samples per batch whose rows run :data:`CACHED_ROWS` to a chunk on
        ``device``, as the last batch measured; None before any, or off a CPU (a GPU wants
        large products)."""
        budget = ROW_BYTES.get(torch.device(device).type)
        if budget is None or not self.bytes_per_sample:
            return None
        return max(1, int(budget // (CACHED_ROWS * self.bytes_per_sample)))

    def _pattern_bytes(self, node, values):
        """Bytes of the attention pattern that fused attention (``sdpa``) makes for each row
        in its products, though the graph holds no such value; 0 for other nodes."""
        step = self.steps[node]
        if step.op.name != "sdpa":
            return 0
        bound = _values(step.arguments, values)
        q, k = bound["query"], bound["key"]
        return q.numel() // q.shape[-1] * k.shape[-2] * q.element_size()

    def _rows(self, values, saved, made, cotangents, mask, span):
        """The start's cotangents of rows ``span``: from the per-position ones ``made``, or
        from the end's."""
        start, stop = span[0], min(span[1], cotangents.shape[0])
        if made is not None:
            later = {
                node: (whole_rows(terms, start, stop), names)
                for node, (terms, names) in made.items()
            }
            start_terms = later.pop(self.graph.start, None)  # rows that reached it per position
            cot = {} if start_terms is None else {self.graph.start: start_terms[0]}
            return self._backward(values, saved, cot, later)
        out = values[self.graph.end]
        c = cotangents[start:stop].to(out.dtype)
        if c.ndim == 4:  # each sample's own rows, (r, n, P_out, d): at each of its points
            c = expand_to_points(c, out.shape[0]).reshape(c.shape[0], *out.shape)
        else:
            c = c.reshape(c.shape[0], 1, *out.shape[1:])
        return self._backward(values, saved, {self.graph.end: c if mask is None else c * mask})

    def _per_position(self, values, saved, cotangents, mask):
        """:meth:`_diagonal`'s rows per position where they apply and agree with the whole
        rows on this batch (three pairs of rows: the first, the middle position's, the last);
        else None.  A disagreement or a failure warns, once, and the trace takes whole rows
        from then on."""
        if self.diagonal is False:
            return None
        with Exploratory() as trying:  # out of memory propagates
            made = self._diagonal(values, saved, cotangents, mask)
            agrees = made is None or self._agrees(values, saved, made, cotangents, mask)
        if trying.error is not None:
            made, agrees = None, f"failed ({trying.why})"
        if agrees is not True:
            self.diagonal = False
            why = agrees or "disagree with its whole rows"
            warn_fallback(
                f"The traced section's rows per output position {why} on the section ending "
                f"at {self.graph.end.name!r}; it takes the whole rows (slower, the same "
                "result). Please report this."
            )
            return None
        if made is not None:
            self.diagonal = True
        return made

    def _agrees(self, values, saved, made, cotangents, mask):
        """Whether the rows per position equal the whole rows on three pairs of rows."""
        R, k = cotangents.shape[0], cotangents.matrix.shape[1]
        middle = min((cotangents.n_positions // 2) * k + k // 2, max(R - 2, 0))
        tolerance = torch.finfo(values[self.graph.end].dtype).eps ** 0.5
        for first in sorted({0, middle, max(R - 2, 0)}):
            span = (first, min(first + 2, R))
            a, b = (self._rows(values, saved, way, cotangents, mask, span) for way in (made, None))
            if not (a - b).abs().max() <= tolerance * b.abs().max():
                return False
        return True

    def fits_per_position(self, n_features):
        """Whether rows per position of ``n_features`` next features stay within
        :data:`PER_POSITION_BYTES` (as the last batch measured; True before any)."""
        per_feature = self.bytes_per_feature
        return per_feature is None or n_features * per_feature <= PER_POSITION_BYTES

    def _diagonal(self, values, saved, cotangents, mask):
        """Exact rows sent back per output position through every product that keeps
        positions apart (:mod:`.traced_positions`).

        Returns ``{node: (terms, names)}``: the :class:`Diagonal` cotangents of each node
        whose products of the arguments ``names`` mix positions (all of the start's),
        for :meth:`_backward` to take whole, chunk by chunk; None where the rows are not
        exact rows of several positions.
        """
        out = values[self.graph.end]
        if not isinstance(cotangents, ExactRows) or cotangents.n_positions < 2:
            return None
        if cotangents.matrix.shape[1] == 0:
            return None  # no next feature: no rows
        C = cotangents.matrix.to(out.dtype)  # row i of the diagonal: C[:, i] everywhere
        positions = output_positions(out.shape[1:], out.device)
        step = self._chunk(values, None)  # the MLP's hidden values meet these rows
        parts = []
        for i in range(0, C.shape[1], step):
            part = C[:, i : i + step]
            seed = part.T.reshape(part.shape[1], *[1] * (out.ndim - 1), part.shape[0])
            seed = seed.expand(part.shape[1], 1, *out.shape[1:])
            seed = Diagonal(seed if mask is None else seed * mask, positions)
            parts.append(self._features(values, saved, seed))
            if len(parts) == 1:  # measured on the first chunk of features
                held = sum(nbytes(terms) for terms, _ in parts[0].values())
                self.bytes_per_feature = held / part.shape[1]
                if not self.fits_per_position(C.shape[1]):
                    return None  # all features' rows at attention would not fit: whole rows
        return {
            node: (merged([p[node][0] for p in parts]), names)
            for node, (_, names) in parts[0].items()
        }

    def _features(self, values, saved, seed):
        """:meth:`_diagonal` for one chunk of features, the end's :class:`Diagonal` ``seed``."""
        cot, later = {self.graph.end: seed}, {}
        for node in reversed(self.graph.nodes):
            step = self.steps.get(node)
            if step is None or node not in cot:
                continue
            terms = cot.pop(node)
            bound = _values(step.arguments, values)
            if isinstance(terms, dict):  # a split's pieces: joined, for its input
                joined = joined_pieces(terms, step.op, bound, values[node])
                if joined is None:
                    later[node] = (terms, step.wanted)
                else:
                    _accumulate(cot, step.arguments["input"], joined)
                continue
            term = diagonal_sum(terms)
            maps = {} if term is None else position_map(
                step.op.name, bound, values[node], term.positions, step.wanted
            )  # fmt: skip
            kept = frozenset(name for name, m in maps.items() if m is not None)
            if step.wanted - kept:  # their products mix positions: made whole, later
                later[node] = (terms, step.wanted - kept)
            if kept:
                grads = step.op.vjp(bound, values[node], term.rows, saved.get(node), kept)
                for name, target, grad in _named_targets(step, grads):
                    _accumulate(cot, target, as_diagonal(grad, maps[name]))
        if self.graph.start in cot:
            later[self.graph.start] = (cot.pop(self.graph.start), frozenset())
        return later

    def _backward(self, values, saved, cot, later=None):
        """The start's cotangent from the cotangents ``cot`` (row axis first) of the nodes
        reached so far, and ``later``'s: ``{node: (cotangent, names)}`` to send back
        through the products of the arguments ``names`` alone."""
        later = later or {}
        for node in reversed(self.graph.nodes):
            step = self.steps.get(node)
            if step is None or (node not in cot and node not in later):
                continue
            bound = _values(step.arguments, values)
            for g, asked, names in self._terms(node, step, cot, later):
                grads = step.op.vjp(bound, values[node], g, saved.get(node), asked)
                for name, target, grad in _named_targets(step, grads):
                    if name in names:
                        _accumulate(cot, target, grad)
        start = cot.get(self.graph.start)
        if start is None:
            raise Unsupported("no derivative reaches the section's start")
        return _one(start)

    @staticmethod
    def _terms(node, step, cot, later):
        """``(cotangent, asked, kept)`` to send back from ``node``: the products of the
        arguments ``asked`` are made, those of ``kept`` sent on.  A product that is made
        lazily (pending) is asked for every argument and the others dropped unmade, so that
        it stays pending (a weight joins it where cheapest)."""
        if node in cot:
            yield _one(cot.pop(node), step.op), step.wanted, step.wanted
        if node in later:
            g, names = later[node]
            yield _one(g, step.op), step.wanted if step.op.pending else names, names


# -- helpers -----------------------------------------------------------------------------
def _wanted(arguments, graph):
    """Names of the arguments that depend on the start (``name#i`` inside lists)."""
    dependent = graph.dependent | {graph.start}
    for name, value in arguments.items():
        value = flat(value)
        if isinstance(value, (list, tuple)):
            yield from (f"{name}#{i}" for i, v in enumerate(value) if _among(v, dependent))
        elif _among(value, dependent):
            yield name


def _wanted_names(wanted):
    return {w.partition("#")[0] for w in wanted}


def _values(arguments, values):
    bound = {name: fx.node.map_arg(v, values.__getitem__) for name, v in arguments.items()}
    return {name: flat(v) for name, v in bound.items()}


def _named_targets(step, grads):
    """``(name, node, cotangent)`` for each wanted argument's product (``name#i`` in lists)."""
    for name, grad in grads.items():
        value = flat(step.arguments[name])
        if isinstance(value, (list, tuple)):
            yield from ((f"{name}#{i}", value[i], g) for i, g in enumerate(grad) if g is not None)
        else:
            yield name, value, grad


def _accumulate(cot, node, grad):
    if isinstance(grad, dict):  # pieces of a split, each summed as a node's terms
        pieces = cot.setdefault(node, {})
        for i, g in grad.items():
            _accumulate(pieces, i, g)
    elif node not in cot:
        cot[node] = grad
    else:  # terms summed when the node is reached (sum_of): alike products at once
        before = cot[node]
        cot[node] = [*(before if isinstance(before, list) else [before]), grad]


def _one(g, op=None):
    """A node's cotangent as one term for the product of ``op``: its terms summed, a
    pending one (or pieces) kept where ``op`` takes it (None: a tensor)."""
    if isinstance(g, dict):  # a split's pieces
        return {i: _one(piece) for i, piece in g.items()}
    if isinstance(g, list):
        g = sum_of([t.materialize() if isinstance(t, Pieces) else t for t in g])
    if isinstance(g, Pieces) and not (op is not None and op.pieces):
        return g.materialize()
    if isinstance(g, Pending) and not (op is not None and op.pending):
        return g.materialize()
    return g


def _is_attention(node, op, arguments, graph):
    """Whether ``node`` is a softmax or a product of two tensors that depend on the start."""
    if op is None:
        return False
    if op.name in ATTENTION_OPS:
        return True
    return op.name in BILINEAR_OPS and len(_wanted_names(_wanted(arguments, graph))) >= 2


def _reads_attention(node, graph, model):
    """Whether ``node`` normalises attention scores another way: one of its inputs is a
    product of two tensors that depend on the start (``sort(q @ k^T)``, say)."""
    for i in node.all_input_nodes:
        if i in graph.dependent:
            op, arguments = op_of(i, model)
            if _is_attention(i, op, arguments, graph):
                return True
    return False


def _among(value, nodes):
    return isinstance(value, fx.Node) and value in nodes
