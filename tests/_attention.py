"""Test helpers: attention and pre-LayerNorm blocks written in many ways, and the rows of a
traced section against autograd's."""

import math

import torch
import torch.nn.functional as F
from _sections import section_of
from torch import nn

from sklearn_lib._core.nodes import OUTPUT_NODE
from sklearn_lib._fitting.stochastic import m_prime_sources
from sklearn_lib._model.inputs import n_rows
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.autograd import autograd_rows
from sklearn_lib._routes.cotangents import Cotangents, scaled
from sklearn_lib._routes.forms.traced_section import TracedSection
from sklearn_lib._routes.integration import rule_tensors
from sklearn_lib._routes.products import masked_inputs

D, H, P = 8, 2, 4
E = D // H
RULE = ((0.25, 0.75, 1.0), (0.2, 0.3, 0.5))


# -- attention, written in several ways ---------------------------------------------------
class Conv1D(nn.Module):
    """Hugging Face GPT-2's ``Conv1D``: ``addmm`` on the flattened positions."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * nx**-0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class Attention(nn.Module):
    """Causal self-attention with its residual add; ``style`` picks the spelling."""

    def __init__(self, style="einsum", mask="where", last=False):
        super().__init__()
        self.style, self.mask_style, self.last = style, mask, last
        for name in "QKV":
            setattr(self, f"W_{name}", nn.Parameter(torch.randn(H, D, E) * D**-0.5))
            setattr(self, f"b_{name}", nn.Parameter(torch.randn(H, E) * 0.1))
        self.W_O = nn.Parameter(torch.randn(H, E, D) * D**-0.5)
        self.qkv = nn.Linear(D, 3 * D)
        self.conv = Conv1D(3 * D, D)
        self.proj = nn.Linear(D, D)
        self.register_buffer("causal", torch.tril(torch.ones(P, P, dtype=torch.bool)))
        self.register_buffer("additive", torch.triu(torch.full((P, P), -1e9), 1))

    def heads(self, x):
        n, p, _ = x.shape
        if self.style == "einsum":
            return [torch.einsum("npd,hde->nhpe", x, getattr(self, f"W_{c}")) + getattr(
                self, f"b_{c}")[:, None] for c in "QKV"]  # fmt: skip
        fused = self.conv(x) if self.style == "conv1d" else self.qkv(x)
        if self.style == "F.linear":
            fused = F.linear(x, self.qkv.weight, self.qkv.bias)
        q, k, v = fused.split(D, dim=2)
        return [t.view(n, p, H, E).transpose(1, 2) for t in (q, k, v)]

    def scores(self, q, k):
        if self.style == "bmm":
            n = q.shape[0]
            s = torch.bmm(q.reshape(n * H, P, E), k.reshape(n * H, P, E).transpose(1, 2))
            return s.view(n, H, P, P) / math.sqrt(E)
        return torch.matmul(q, k.transpose(-1, -2)) * E**-0.5

    def masked(self, s):
        p = s.shape[-1]
        if self.mask_style == "where":
            return torch.where(self.causal[:p, :p], s, torch.tensor(-1e9, dtype=s.dtype))
        if self.mask_style == "masked_fill":
            return s.masked_fill(~self.causal[:p, :p], float("-inf"))
        return s + self.additive[:p, :p] if self.mask_style == "additive" else s

    def forward(self, x):
        q, k, v = self.heads(x)
        if self.mask_style == "sdpa":
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            z = F.softmax(self.masked(self.scores(q, k)), dim=-1) @ v
        if self.style == "einsum":
            out = torch.einsum("nhpe,hed->npd", z, self.W_O)
        else:
            out = self.proj(z.transpose(1, 2).reshape(x.shape))
        y = x + out
        return y[:, -1] if self.last else y


class Block(nn.Module):
    """A pre-LayerNorm transformer block: LN -> attention -> residual -> LN -> MLP -> residual."""

    def __init__(self, style="linear", mask="sdpa", layer_norm="module"):
        super().__init__()
        self.attn = Attention(style, mask)
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.fc1, self.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
        self.layer_norm = layer_norm

    def norm(self, x, ln):
        if self.layer_norm == "module":
            return ln(x)
        if self.layer_norm == "functional":
            return F.layer_norm(x, (D,), ln.weight, ln.bias, ln.eps)
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    def forward(self, x):
        x = self.attn(self.norm(x, self.ln1))  # the attention module adds its own residual
        return x + self.fc2(F.gelu(self.fc1(self.norm(x, self.ln2))))


class Model(nn.Module):
    """``head(blocks(embed(x)))``, the blocks in a ModuleList; ``last`` slices the last
    position outside the blocks."""

    def __init__(self, *blocks, last=False, width=D):
        super().__init__()
        self.embed = nn.Linear(3, D)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, 5)
        self.last = last

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h[:, -1] if self.last else h)


def model_of(*blocks, seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    model = Model(*[b() if callable(b) else b for b in blocks], **kwargs)
    for p in model.parameters():  # non-zero biases everywhere
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.05)
    return model.to(dtype).eval()


def inputs(n=6, dtype=torch.float64, seed=1):
    return torch.randn(n, P, 3, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -- the check ----------------------------------------------------------------------------
def rows_against_autograd(model, src, dst=OUTPUT_NODE, x=None, rule=RULE, exact=False,
                          **options):  # fmt: skip
    """``(traced, autograd)`` integrated rows of the section, all exact rows and two random
    combinations, float64; with ``exact``, the exact rows alone, given as exact rows (which
    the form may send back per output position); with ``exact="per sample"``, five random
    sources drawn for each sample apart (rows ``(5, n, P_out, d_out)``)."""
    return rows_and_form(model, src, dst, x, rule, exact, **options)[:2]


def rows_and_form(model, src, dst=OUTPUT_NODE, x=None, rule=RULE, exact=False, **options):
    """:func:`rows_against_autograd`'s rows and the form that made them."""
    if exact == "per sample":
        return _per_sample_rows(model, src, dst, x, rule, **options)
    dtype = options.pop("dtype", next(model.parameters()).dtype)
    x = inputs(dtype=dtype) if x is None else x
    session = ModelSession(model, dtype=dtype, **options)
    section = section_of(session, x, src, dst)
    form = TracedSection.detect(session, section)
    assert isinstance(form, TracedSection), getattr(form, "why", form)
    with torch.no_grad():
        (f,) = session.read(x, [src])
    alphas, weights = rule_tensors(rule, session.device)
    points = scaled(f, alphas)
    given = Cotangents.identity(section.dst_shape, dtype, session.device).rows
    rows = given[:]
    if not exact:
        mixed = torch.randn(2, rows.shape[0], generator=torch.Generator().manual_seed(3))
        rows = torch.cat([rows, (mixed.to(dtype) @ rows.flatten(1)).view(2, *rows.shape[1:])])
    chunks, n = [(0, 3), (3, rows.shape[0])], n_rows(x)
    made = form.rows(x, points, given if exact else rows, weights, chunks)
    traced = torch.cat([g.expand(g.shape[0], n, *g.shape[2:]) for g in made])
    # Padded input positions count nowhere, as in every pass.
    auto = autograd_rows(session, section, x, points, rows, weights)
    auto = torch.cat(list(masked_inputs(auto, x, f.shape[1:])))
    return traced.to(torch.float64), auto.to(torch.float64), form


def _per_sample_rows(model, src, dst, x, rule, **options):
    dtype = options.pop("dtype", next(model.parameters()).dtype)
    x = inputs(dtype=dtype) if x is None else x
    session = ModelSession(model, dtype=dtype, **options)
    section = section_of(session, x, src, dst)
    form = TracedSection.detect(session, section)
    with torch.no_grad():
        (f,) = session.read(x, [src])
    alphas, weights = rule_tensors(rule, session.device)
    points, n = scaled(f, alphas), n_rows(x)
    exact = Cotangents.identity(section.dst_shape, dtype, session.device)
    rows = m_prime_sources(exact, 5, torch.Generator().manual_seed(3), n_samples=n).rows
    assert rows.per_sample and rows.shape[:2] == (5, n)
    made = form.rows(x, points, rows, weights, [(0, 2), (2, 5)])
    traced = torch.cat([g.expand(g.shape[0], n, *g.shape[2:]) for g in made])
    auto = autograd_rows(session, section, x, points, rows, weights)
    auto = torch.cat(list(masked_inputs(auto, x, f.shape[1:])))
    return traced.to(torch.float64), auto.to(torch.float64), form


def assert_same(traced, auto, dtype=torch.float64):
    scale = auto.abs().max()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert scale > 0
    assert (traced - auto).abs().max() <= tol * scale


STYLES = ["einsum", "linear", "F.linear", "conv1d", "bmm"]
MASKS = ["where", "masked_fill", "additive", "sdpa", "none"]


def per_position(model, src, dst=OUTPUT_NODE, x=None, dtype=torch.float64, **options):
    """Exact rows through the form, checked against autograd's, and the trace that made
    them (which must have taken them per output position)."""
    traced, auto, form = rows_and_form(model, src, dst, x, exact=True, dtype=dtype, **options)
    assert_same(traced, auto, dtype)
    trace = form.trace if form.trace is not None else next(iter(form._exported.values()))
    assert trace.diagonal is True  # per position, and checked against the whole rows
    return trace
