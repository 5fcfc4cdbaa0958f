"""Fewer rows behind a final linear map: ``M'`` of a section that ends in ``y = z A + b``.

A section to the model output that ends in a linear map of a narrower
input ``z`` (a language model's unembedding, ``d_in = 768`` wide for
``d_out = 50,257`` logits; an output head; a projection) has the Jacobian
``J = J_z A`` with ``J_z`` the part before the map.  With the next basis'
columns ``c_i``, the exact ``M'`` sums, per output position,

    sum_i J^T c_i c_i^T J = J_z^T (A C C^T A^T) J_z,

and ``A C C^T A^T = R R^T`` with ``R`` of ``rank <= d_in`` columns (the
eigenvectors of the ``d_in x d_in`` matrix, scaled).  So the exact ``M'``
needs one backward row per column of ``R`` and output position, through
``J_z`` only, instead of one per output feature: 768 instead of 50,257.
Random sources are drawn in ``R`` too (``signs @ R^T``, the same expected
Gram as ``signs @ (A C)^T``): signs of ``d_in`` features instead of
``d_out``, 65 times fewer for GPT-2, and no product a vocabulary wide.

Where the part before the map keeps positions apart (output position ``t``
of ``z`` reads input position ``t`` alone: a final LayerNorm), one row per
column of ``R``, at every output position at once, has at each input
position the gradient of that position's own row, so its Gram over
positions is theirs: ``d_in`` rows instead of ``P_out * d_in``
(:class:`~sklearn_lib._routes.cotangents.EveryPositionRows`).  Whether it
does is found on the values, at the first run (:func:`_keeps_positions`:
the gradients of ``z`` on one side of each split of the positions by a bit
of their index vanish on the other), and agreed by every rank.

Detection is by running the section, not by reading code: the form applies
where the section's output is, as a tensor, the output of an ``nn.Linear``
(or a Hugging Face ``Conv1D``, ``y = z W + b``) of the model with fewer
inputs than outputs, called once in the section, position by position.
Its backward rows are autograd's (the part before the map may be anything),
so it reads padding as the autograd route does.  Like every closed form it
is checked against autograd on the probe before use.
"""

import math

import torch
from torch import nn

from ..._core.identity import Identity
from ..._model.inputs import n_rows, point_mask
from ..autograd import integrated_vjps
from ..cotangents import EveryPositionRows, ExactRows, SampledRows
from ..products import gram_of, masked_inputs
from .affine import Affine
from .base import ClosedForm, structural_veto


def _linear_map(module):
    """``(A, bias)`` with ``y = z A + bias`` for a linear module, or None."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    if isinstance(module, nn.Linear):
        return weight.T, module.bias
    if type(module).__name__ == "Conv1D" and getattr(module, "nf", None) == weight.shape[1]:
        return weight, module.bias  # Hugging Face's Conv1D: x @ weight + bias
    return None


class FinalLinear(ClosedForm):
    """``M'`` of a section ending in a linear map, from rows of the map's input (see the module).

    Parameters
    ----------
    session : ModelSession
    section : Section
    candidates : dict of str to torch.nn.Module
        The model's linear modules of the output's width with narrower inputs.
    """

    title = "The final linear map's factor (rows of its input)"
    traced = False  # found by running the section, not by reading its code
    padding = True  # its rows are autograd's: padding reads as on the autograd route
    exact_rows = True  # takes the exact or sampled rows as they are made, not all at once
    per_sample_rows = True  # autograd's rows take each sample's own cotangents

    def __init__(self, session, section, candidates):
        self.session, self.section, self.candidates = session, section, candidates
        self.final = None  # the name of the module found at the first run
        self.reads_start = False  # whether the map's input is the section's start, as found
        self.shares_positions = None  # whether J_z keeps positions apart, found at the first run
        self._factors = (None, None, None)  # (next matrix, the map's name, their factor R)

    @classmethod
    def detect(cls, session, section):
        """The form where the model has a linear module of the output's width, narrower
        inputs and features last, and the section is not affine as a whole; else None."""
        if section.dst_shape is None or not section.to_output:
            return None
        if session.axis_of(section.dst) not in (None, -1):
            return None
        if structural_veto(session, section) is None and Affine.detect(session, section):
            return None  # the affine route makes its rows once a pass: cheaper still
        width = section.dst_shape[-1]
        candidates = {}
        for name, module in session.model.named_modules():
            found = _linear_map(module)
            if found is not None and found[0].shape[1] == width and found[0].shape[0] < width:
                candidates[name] = module
        return cls(session, section, candidates) if candidates else None

    @property
    def width(self):
        """Inputs of the final map (rows per output position at most), once found."""
        if self.final is None:
            return None
        return _linear_map(self.candidates[self.final])[0].shape[0]

    def vjp(self, x, points, cotangents, tangents=None):
        return NotImplemented  # only the Gram: its rows are of the map's input

    def gram(self, x, points, weights, cotangents):
        """The Gram of the rows through the map's input, or NotImplemented where the
        section does not end in one of the candidates."""
        # Closed forms are called without gradients; these rows are autograd's.
        with torch.enable_grad():
            run = self._run(x, points)
            if run is None:  # autograd's rows (sources drawn narrow are widened there)
                return NotImplemented
            leaf, z, A, count = run
            rows = self._input_rows(cotangents, A)
            n = n_rows(x)
            if self.reads_start and isinstance(rows, ExactRows):
                return _constant_gram(rows.matrix, weights, count)
            chunks = integrated_vjps(z, leaf, rows, weights, n, points.device.type == "cuda")
            gram = gram_of(masked_inputs(chunks, x, points.shape[1:]), n, points.shape[-1])
        if isinstance(gram, int):  # no rows: the map (or the next basis) is all zero
            d = points.shape[-1]
            return torch.zeros(d, d, dtype=torch.float64, device=points.device)
        return gram

    def _run(self, x, points):
        """``(leaf, z, A, count)``: the section run with gradients, the map's input
        ``(A*n, P, d_in)`` (zero at padded output positions), its matrix and, where the
        map reads the section's start, the batch's valid output positions (else None);
        None where no candidate ends it."""
        calls = []

        def record(name):
            def hook(module, args, output):
                z = args[0] if args else None
                # Versions now: an in-place change after the map (a clamp_) would make
                # the output no longer the map's, while the object stays the same.
                versions = tuple(t._version for t in (z, output) if torch.is_tensor(t))
                calls.append((name, z, output, versions))

            return hook

        leaf = points.detach().requires_grad_(True)
        handles = [m.register_forward_hook(record(n)) for n, m in self.candidates.items()]
        try:
            out = self.session.section(x, self.section.src, leaf, self.section.dst)
        finally:
            for handle in handles:
                handle.remove()
        ends = [
            (n, z)
            for n, z, y, versions in calls
            if y is out
            and torch.is_tensor(z)
            and z.requires_grad
            and versions == (z._version, y._version)
        ]
        if len(ends) != 1 or ends[0][1].shape[:-1] != out.shape[:-1]:
            return None  # not a map applied position by position at the very end
        self.final, z = ends[0]
        # The map reads the section's start itself (the unembedding as a section of its
        # own): J_z is the identity, and the rows need no backward pass.
        self.reads_start = _same_values(z, leaf)
        if self.shares_positions is None:  # an identity keeps them apart: no pass to ask
            self.shares_positions = self.reads_start or _keeps_positions(z, leaf)
        mask = point_mask(x, out.shape[1:], z.shape[0], z.dtype)
        n = n_rows(x)
        if mask is not None:  # rows of padded output positions vanish
            z = z * mask
        count = None  # counted only where it is used: a sum on the device waits for it
        if self.reads_start:
            count = n * math.prod(out.shape[1:-1]) if mask is None else float(mask[:n].sum())
        A = _linear_map(self.candidates[self.final])[0]
        return leaf, z.reshape(z.shape[0], -1, z.shape[-1]), A, count

    def _input_rows(self, cotangents, A):
        """The cotangents of the map's input, in the factor ``R`` of ``A C C^T A^T``: one
        per column (each output position, or every one at once) for exact rows, random
        sources drawn in it for sampled ones; other rows each mapped through ``A``."""
        if not isinstance(cotangents, (ExactRows, SampledRows)):
            return cotangents.to(A.dtype) @ A.T  # (R, P, d_out) -> (R, P, d_in)
        made = self._factor_of(cotangents.matrix, A)
        if isinstance(cotangents, SampledRows):
            return cotangents.through(made)  # (R, [n,] P, r), made when sliced
        if self.shares_positions and not self.reads_start:
            return EveryPositionRows(made, cotangents.n_positions)
        return ExactRows(made, cotangents.n_positions)

    def _factor_of(self, C, A):
        """``R`` with ``R R^T = A C C^T A^T``, made once per next matrix ``C`` and map
        (found anew on each batch: :attr:`final` names this batch's)."""
        known, final, made = self._factors
        if known is not C or final != self.final:
            # The identity basis (the output's): A itself, not a product of d_in * V^2.
            M = A.to(C.dtype) if _is_identity(C) else A.to(C.dtype) @ C
            made = _factor(M)
            self._factors = (C, self.final, made)
        return made


#: Autograd nodes that copy or re-view a tensor without moving its entries.
_SAME_VALUES = frozenset(
    {"CloneBackward0", "ViewBackward0", "AliasBackward0", "SliceBackward0",
     "UnsafeViewBackward0", "ReshapeAliasBackward0"}
)  # fmt: skip


def _same_values(z, leaf):
    """Whether ``z`` is ``leaf`` by copies, views and full slices alone (as autograd
    recorded it): the same values in the same shape, so an identity Jacobian.  Views
    never reorder entries, and a slice that drops some leaves fewer than ``leaf`` has."""
    if z is leaf:
        return True
    if z.shape != leaf.shape:
        return False
    fn = z.grad_fn
    while fn is not None and type(fn).__name__ in _SAME_VALUES:
        inputs = [f for f, _ in fn.next_functions if f is not None]
        if len(inputs) != 1:
            return False
        fn = inputs[0]
    return fn is not None and getattr(fn, "variable", None) is leaf


def _keeps_positions(z, leaf):
    """Whether position ``t`` of ``z`` reads position ``t`` of ``leaf`` alone.

    Positions are split in two by each bit of their index: the gradient of
    ``z`` (random cotangents) on one side must vanish on the other.  Any two
    positions differ in some bit, so a dependence of any position on any
    other shows in one of the ``2 ceil(log2 P)`` backward passes, unless the
    probe's values hide it (a position that is padding in every sample of
    the probe reads nothing there).
    """
    flat = z.reshape(z.shape[0], -1, z.shape[-1])
    n_out = flat.shape[1]
    if n_out != math.prod(leaf.shape[1:-1]):
        return False
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(flat.shape, generator=generator).to(device=flat.device, dtype=flat.dtype)
    index = torch.arange(n_out, device=flat.device)
    for bit in range(max(n_out - 1, 0).bit_length()):
        side = ((index >> bit) & 1).bool()
        for part in (side, ~side):
            cotangent = values * part[None, :, None]
            (g,) = torch.autograd.grad(flat, leaf, cotangent, retain_graph=True, allow_unused=True)
            if g is not None and torch.count_nonzero(g.reshape(g.shape[0], n_out, -1)[:, ~part]):
                return False
    return True


def _constant_gram(R, weights, count):
    """``count (sum_a w_a)^2 R R^T`` in float64: the Gram of ``count`` rows through an
    identity ``J_z``, each the integrated ``R``."""
    R = R.to(torch.float64)
    return (float(weights.sum()) ** 2 * count) * (R @ R.T)


def _is_identity(C):
    """Whether the matrix ``C`` is the identity (one nonzero per column, on the diagonal)."""
    if isinstance(C, Identity):
        return True
    if C.shape[0] != C.shape[1] or int(torch.count_nonzero(C)) != C.shape[0]:
        return False
    return bool((torch.diagonal(C) == 1).all())


def _factor(M):
    """``R`` with ``R R^T = M M^T`` and the fewest columns: ``M`` where it is narrow,
    else the eigenvectors of ``M M^T`` scaled by the square roots of their eigenvalues."""
    if M.shape[1] <= M.shape[0]:
        return M
    wide = M.to(torch.float64)  # the product in float64 whatever the compute dtype
    values, vectors = torch.linalg.eigh(wide @ wide.T)
    kept = values > values.max().clamp(min=0) * M.shape[0] * torch.finfo(torch.float64).eps
    return (vectors[:, kept] * values[kept].sqrt()).to(M.dtype)
