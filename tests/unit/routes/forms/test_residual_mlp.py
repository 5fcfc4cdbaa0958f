"""The residual MLP closed form (``_traced``): what fx recognises, and its products
against brute-force Jacobians of the module itself."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from _faults import FATAL
from _sections import jacobians
from torch import nn
from toy_models import user_transformer

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.cotangents import Cotangents, scaled
from sklearn_lib._routes.forms import linear_elementwise
from sklearn_lib._routes.forms import residual_mlp as _traced
from sklearn_lib._routes.forms.base import applicable_forms
from sklearn_lib._routes.forms.residual_mlp import ResidualMLP

ALPHAS, WEIGHTS = (0.25, 0.75, 1.0), (0.2, 0.3, 0.5)


# -- models ------------------------------------------------------------------------------
def tokens(n=20, p=7):
    pairs = torch.randint(0, p, (n, 2), generator=torch.Generator().manual_seed(0))
    return torch.cat([pairs, torch.full((n, 1), p)], dim=1)


ACTIVATIONS = {
    "torch.relu": torch.relu,
    "F.relu": F.relu,
    "Tensor.relu": lambda z: z.relu(),
    "nn.ReLU": nn.ReLU(),
    "F.gelu": F.gelu,
    "F.gelu tanh": partial(F.gelu, approximate="tanh"),
    "nn.GELU tanh": nn.GELU(approximate="tanh"),
    "torch.tanh": torch.tanh,
    "nn.Tanh": nn.Tanh(),
    "torch.sigmoid": torch.sigmoid,
    "nn.Sigmoid": nn.Sigmoid(),
    "F.silu": F.silu,
    "nn.SiLU": nn.SiLU(),
    "none": None,
}


class Affine(nn.Module):
    """``x A + a`` in one of the spellings the detection accepts."""

    def __init__(self, d_in, d_out, style, bias):
        super().__init__()
        self.style = style
        if style == "nn.Linear":
            self.fc = nn.Linear(d_in, d_out, bias=bias)
            return
        shape = (d_out, d_in) if style == "F.linear" else (d_in, d_out)
        self.W = nn.Parameter(torch.randn(*shape) * d_in**-0.5)
        self.b = nn.Parameter(torch.randn(d_out) * 0.3) if bias else None

    def forward(self, x):
        if self.style == "nn.Linear":
            return self.fc(x)
        if self.style == "F.linear":
            return F.linear(x, self.W, self.b)
        y = x @ self.W if self.style == "@" else torch.matmul(x, self.W)
        return y if self.b is None else y + self.b


class Block(nn.Module):
    """``[x +] phi(x A + a) B [+ b]``, the two maps inlined into the block's forward."""

    def __init__(self, d=5, k=7, activation="torch.relu", style="@", residual="left", bias=True):
        super().__init__()
        self.first = Affine(d, k, style, bias)
        self.second = Affine(k, d if residual else 3, style, bias)
        self.phi = ACTIVATIONS[activation]  # a module is registered, a function is not
        self.residual = residual

    def forward(self, x):
        z = self.first(x)
        y = self.second(z if self.phi is None else self.phi(z))
        if self.residual == "left":
            return x + y
        return y + x if self.residual == "right" else y


class GeluBlock(nn.Module):
    def __init__(self, d=5, k=9):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, k), nn.Linear(k, d)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Wrapper(nn.Module):
    """``head(block(embed(x)))``; ``head=False`` returns the block's output."""

    def __init__(self, block, head=True):
        super().__init__()
        self.embed = nn.Linear(4, 5)
        self.block = block
        self.head = nn.Linear(_out_width(block), 2) if head else None

    def forward(self, x):
        h = self.block(self.embed(x))
        return h if self.head is None else self.head(h)


def _out_width(block):
    if isinstance(block, GeluBlock):
        return block.fc2.out_features
    return 5 if block.residual else 3


def wrapped(block, head=True, seed=0):
    torch.manual_seed(seed)
    return Wrapper(block(), head).double()


def detect(model, src="block", dst="head", **session):
    """The residual MLP form of the section, where the registry's veto allows it."""
    session = ModelSession(model, **session)
    section = Section(src, OUTPUT_NODE if dst is None else dst)
    found = [f for f in applicable_forms(session, section) if isinstance(f, ResidualMLP)]
    return found[0] if found else None


class RaisesBlock(GeluBlock):
    error = None

    def forward(self, h):
        raise type(self).error()


@pytest.mark.parametrize("error", list(FATAL))
def test_out_of_memory_and_stops_while_tracing_propagate(error):
    """fx failing on user code means "no form"; out of memory is no such failure."""
    section = Section("block", "head")
    RaisesBlock.error = FATAL[error]
    with pytest.raises(type(FATAL[error]())):
        ResidualMLP.detect(ModelSession(wrapped(RaisesBlock)), section)
    RaisesBlock.error = lambda: RuntimeError("a user's error")
    assert ResidualMLP.detect(ModelSession(wrapped(RaisesBlock)), section) is None


# -- detection ---------------------------------------------------------------------------
def test_detects_the_user_transformer_mlp():
    form = detect(user_transformer(), "blocks.0.mlp", "unembed")
    assert form is not None and form.residual and form.activation == ("relu", "none")
    assert form.A.shape == (8, 16) and form.B.shape == (16, 8)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("style", ["@", "torch.matmul", "F.linear", "nn.Linear"])
@pytest.mark.parametrize("residual", ["left", "right", None])
@pytest.mark.parametrize("bias", [True, False])
def test_detects_every_spelling(activation, style, residual, bias):
    torch.manual_seed(0)
    block = partial(Block, activation=activation, style=style, residual=residual, bias=bias)
    model = Wrapper(block()).double()
    form = detect(model)
    assert form is not None and form.residual is bool(residual)
    assert (form.activation is None) is (activation == "none")
    if "gelu" in activation.lower():
        assert form.activation == ("gelu", "tanh" if "tanh" in activation else "none")
    # The form holds the session's own parameters, not copies.
    session = ModelSession(model)
    form = ResidualMLP.detect(session, Section("block", "head"))
    weights = {id(t) for t in session.params.values()}
    assert id(form.first.weight) in weights and id(form.second.weight) in weights


@pytest.mark.parametrize("head", [True, False])
def test_detects_a_linear_gelu_block(head):
    form = detect(wrapped(GeluBlock, head), "block", "head" if head else None)
    assert form.activation == ("gelu", "tanh") and form.residual


class LayerNormBlock(GeluBlock):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(5)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.ln(x))))


class TwoActivations(GeluBlock):
    def forward(self, x):
        return x + self.fc2(torch.tanh(torch.relu(self.fc1(x))))


class DropoutBlock(GeluBlock):
    def forward(self, x):
        return x + self.fc2(F.dropout(torch.relu(self.fc1(x)), 0.5, training=True))


class ComputedWeight(GeluBlock):
    def forward(self, x):
        return x + torch.relu(x @ self.fc1.weight.T.tanh()) @ self.fc2.weight.T


class InPlace(GeluBlock):
    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h.mul_(2.0)  # a side effect the pattern does not show
        return x + self.fc2(h)


class ExtraArgument(GeluBlock):
    def forward(self, x, scale=1.0):
        return x + self.fc2(torch.relu(self.fc1(x)))


class ReusedOutput(Wrapper):
    def forward(self, x):
        h = self.block(self.embed(x))
        return self.head(h) + h.sum(-1, keepdim=True)


class ResidualAround(Wrapper):
    def forward(self, x):
        e = self.embed(x)
        return self.block(e) + e


class Untraceable(Wrapper):
    def forward(self, x):
        h = self.block(self.embed(x))
        if h.sum() > 0:  # data-dependent control flow: fx cannot trace this
            h = 2 * h
        return self.head(h)


class TwoBlocks(Wrapper):
    def __init__(self):
        super().__init__(GeluBlock())
        self.other = GeluBlock()

    def forward(self, x):
        return self.head(self.other(self.block(self.embed(x))))


def _negative_cases():
    torch.manual_seed(0)
    hooked = Wrapper(GeluBlock()).double()
    hooked.block.fc1.register_forward_hook(lambda m, a, out: 2 * out)
    return {
        "LayerNorm inside": (Wrapper(LayerNormBlock()), "block", "head", {}),
        "two activations": (Wrapper(TwoActivations()), "block", "head", {}),
        "dropout in train mode": (Wrapper(DropoutBlock()), "block", "head", {}),
        "weight computed": (Wrapper(ComputedWeight()), "block", "head", {}),
        "in-place change": (Wrapper(InPlace()), "block", "head", {}),
        "extra argument": (Wrapper(ExtraArgument()), "block", "head", {}),
        "output reused": (ReusedOutput(GeluBlock()), "block", "head", {}),
        "residual around src": (ResidualAround(GeluBlock(), head=False), "block", None, {}),
        "untraceable model": (Untraceable(GeluBlock()), "block", "head", {}),
        "dst not next": (TwoBlocks(), "block", "head", {}),
        "not an MLP": (Wrapper(GeluBlock()), "embed", "block", {}),
        "capture output": (Wrapper(GeluBlock()), "block", "head", {"capture": "output"}),
        "hooked": (hooked, "block", "head", {}),
        "attention": (user_transformer(), "blocks.0.attn", "blocks.0.mlp", {}),
    }


@pytest.mark.parametrize("case", list(_negative_cases()))
def test_does_not_detect(case):
    model, src, dst, session = _negative_cases()[case]
    assert detect(model.double(), src, dst, **session) is None


def test_detection_leaves_the_model_as_it_was():
    constant = torch.ones(5, dtype=torch.float64)

    class WithConstant(Wrapper):
        def forward(self, x):  # fx stores `constant` on the root while tracing
            return self.head(self.block(self.embed(x) + constant))

    torch.manual_seed(0)
    session = ModelSession(WithConstant(GeluBlock()).double())
    before = set(vars(session.model))
    assert ResidualMLP.detect(session, Section("block", "head")) is not None
    assert set(vars(session.model)) == before


class WithOptions(Wrapper):
    """Other forward arguments at their defaults are traced as the real call takes them."""

    def forward(self, x, mask=None, scale=1.0, readout=True):
        h = self.block(self.embed(x) if mask is None else self.embed(x) * mask)
        if not readout:
            return h
        return self.head(h) * scale


def test_other_forward_arguments_take_their_defaults():
    torch.manual_seed(0)
    model = WithOptions(GeluBlock()).double()
    assert detect(model, "block", "head") is not None
    assert detect(model, "block", None) is None  # readout=True: the head comes after


# -- products against brute force ---------------------------------------------------------
def brute_rows(module, points, cotangents, alphas=(1.0,), weights=(1.0,)):
    """Integrated rows ``sum_a w_a J(alpha_a x)^T c``, (R, m, *positions, d), one Jacobian each."""
    rows = []
    for point in points:
        g = 0
        for alpha, weight in zip(alphas, weights):
            jac = torch.autograd.functional.jacobian(lambda p: module(p[None])[0], alpha * point)
            out_shape = jac.shape[: jac.ndim - point.ndim]
            c = cotangents.reshape(-1, *out_shape)
            g = g + weight * torch.tensordot(c, jac, dims=len(out_shape))
        rows.append(g)
    return torch.stack(rows, 1)


CASES = {
    "transformer mlp": (user_transformer, "blocks.0.mlp", "unembed", (6, 8)),
    "gelu block, positions": (partial(wrapped, GeluBlock), "block", "head", (6, 3, 5)),
    "gelu block": (partial(wrapped, GeluBlock), "block", "head", (6, 5)),
    "sigmoid, no residual, positions": (
        partial(wrapped, partial(Block, activation="nn.Sigmoid", residual=None)),
        "block",
        "head",
        (6, 3, 5),
    ),
    "silu, right residual": (
        partial(wrapped, partial(Block, activation="F.silu", residual="right", style="F.linear")),
        "block",
        "head",
        (6, 2, 5),
    ),
}


def _case(name, seed=1):
    make, src, dst, shape = CASES[name]
    model = make()
    session = ModelSession(model)
    form = ResidualMLP.detect(session, Section(src, dst))
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(*shape, dtype=torch.float64, generator=gen)
    d_out = form.B.shape[1]
    n_pos = shape[1] if len(shape) == 3 else 1
    cotangents = torch.randn(4, n_pos, d_out, dtype=torch.float64, generator=gen)
    return form, session.model.get_submodule(src), points, cotangents, gen


@pytest.fixture(params=[None, 50], ids=["one chunk", "small chunks"])
def chunk(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(_traced, "CHUNK_ELEMENTS", request.param)
        # The directional derivatives' chunks (slope_directional).
        monkeypatch.setattr(linear_elementwise, "CHUNK_ELEMENTS", request.param)


@pytest.mark.parametrize("name", list(CASES))
def test_rows_equal_brute_force(name, chunk):
    form, module, points, cotangents, _ = _case(name)
    expected = brute_rows(module, points, cotangents)
    torch.testing.assert_close(form.vjp(None, points, cotangents), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_directional_derivatives_equal_brute_force(name, chunk):
    form, module, points, cotangents, gen = _case(name)
    v = torch.randn(3, points.shape[-1], dtype=torch.float64, generator=gen)
    coef = torch.randn(*points.shape[:-1], 3, dtype=torch.float64, generator=gen)
    rows = brute_rows(module, points, cotangents)  # (R, m, *positions, d)
    expected = torch.einsum("rm...d,jd,m...j->rmj", rows, v, coef)
    got = form.vjp(None, points, cotangents, tangents=(v, coef))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", [((1.0,), (1.0,)), (ALPHAS, WEIGHTS)], ids=["gradient", "rule"])
@pytest.mark.parametrize("name", list(CASES))
def test_gram_equals_brute_force(name, rule, chunk):
    form, module, points, cotangents, _ = _case(name)
    alphas, weights = (torch.tensor(v, dtype=torch.float64) for v in rule)
    rows = brute_rows(module, points, cotangents, *rule)
    flat = rows.reshape(-1, rows.shape[-1])
    got = form.gram(None, scaled(points, alphas), weights, cotangents)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, flat.T @ flat, rtol=1e-10, atol=1e-12)


# -- the check of _section accepts the form -------------------------------------------------
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a failed check falls back with a warning
@pytest.mark.parametrize("name", ["transformer mlp", "gelu block, positions"])
def test_section_jacobian_accepts_the_form(name):
    make, src, dst, shape = CASES[name]
    model = make()
    if name == "transformer mlp":
        x = tokens()
    else:
        x = torch.randn(20, *shape[1:-1], 4, dtype=torch.float64)
    session = ModelSession(model)
    (f,) = session.read(x, [src])
    d_next = 8 if name == "transformer mlp" else 5
    n_pos = f.shape[1] if f.ndim == 3 else 1
    cotangents = Cotangents(torch.randn(d_next, 3, dtype=torch.float64), n_pos)
    rule = tuple(torch.tensor(v, dtype=torch.float64) for v in (ALPHAS, WEIGHTS))
    fast, slow = jacobians(session, x, src, dst, (ALPHAS, WEIGHTS))
    got = fast.gram_sum(x, f, cotangents, rule)
    assert isinstance(fast.route.form("gram"), ResidualMLP)
    torch.testing.assert_close(got, slow.gram_sum(x, f, cotangents, rule), rtol=1e-10, atol=1e-12)
    # The rows and the edges' directional derivatives pass the check as well.
    points = scaled(f, rule[0])
    rows = cotangents.rows
    with torch.no_grad():
        closed = torch.cat(list(fast.gradients(x, points, rows, rule[1])))
    auto = torch.cat(list(slow.gradients(x, points, rows, rule[1])))
    torch.testing.assert_close(closed, auto, rtol=1e-10, atol=1e-12)
    assert isinstance(fast.route.form("rows"), ResidualMLP)
    directions = torch.randn(4, f.shape[-1], dtype=torch.float64)
    coefficients = torch.randn(f.shape[0], n_pos, 4, dtype=torch.float64)
    got = fast.directional_square_sums(x, points, rows, rule[1], directions, coefficients)
    expected = slow.directional_square_sums(x, points, rows, rule[1], directions, coefficients)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert isinstance(fast.route.form("tangents"), ResidualMLP)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_products_on_cuda_equal_the_cpu():
    form, _, points, cotangents, gen = _case("gelu block, positions")
    cuda = ResidualMLP.detect(
        ModelSession(wrapped(GeluBlock), device="cuda"), Section("block", "head")
    )
    alphas, weights = (torch.tensor(v, dtype=torch.float64) for v in (ALPHAS, WEIGHTS))
    stacked = scaled(points, alphas)
    expected = form.gram(None, stacked, weights, cotangents)
    got = cuda.gram(None, stacked.cuda(), weights.cuda(), cotangents.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-12)
    rows = cuda.vjp(None, points.cuda(), cotangents.cuda())
    torch.testing.assert_close(
        rows.cpu(), form.vjp(None, points, cotangents), rtol=1e-10, atol=1e-12
    )
