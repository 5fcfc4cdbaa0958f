"""Affine sections (``_routes.forms.affine``): the proof from the code, rows, the check."""

import pytest
import torch
import torch.nn.functional as F
from _faults import FATAL
from torch import nn

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.cotangents import Cotangents, scaled
from sklearn_lib._routes.forms import affine
from sklearn_lib._routes.forms.affine import Affine, is_affine_section
from sklearn_lib._routes.forms.base import Probe

SECTION = Section("block", OUTPUT_NODE)


class Block(nn.Module):
    """``fn(self, h)`` as a module with a matrix ``W``, a position mixer ``A`` and a bias."""

    def __init__(self, fn, d=4, positions=2):
        super().__init__()
        self.fn = fn
        self.W = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.A = nn.Parameter(torch.randn(positions, positions))
        self.b = nn.Parameter(torch.randn(d))
        self.register_buffer("scale", torch.tensor(3.0))
        self.inner = nn.Linear(d, d)

    def forward(self, h):
        return self.fn(self, h)


class Model(nn.Module):
    """``block(tanh(stem(x)))``, or ``block(exp(x))`` (a positive input) with ``positive``."""

    def __init__(self, block, positive=False, after=None):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(3, 4)
        self.block = block() if isinstance(block, type) else block
        self.positive = positive
        self.after = after

    def forward(self, x):
        h = self.block(x.exp() if self.positive else torch.tanh(self.stem(x)))
        return h if self.after is None else self.after(h)


AFFINE = {
    "matmul": lambda m, h: h @ m.W,
    "torch.matmul and bias": lambda m, h: torch.matmul(h, m.W) + m.b,
    "F.linear": lambda m, h: F.linear(h, m.W, m.b),
    "nn.Linear inside": lambda m, h: m.inner(h) - m.b,
    "scaled": lambda m, h: 2.0 * h @ m.W - h,
    "einsum over positions": lambda m, h: torch.einsum("ts,nsd->ntd", m.A, h) + m.b,
    "reshape": lambda m, h: (h @ m.W).reshape(h.shape[0], -1),
    "view and flatten": lambda m, h: torch.flatten(h.view(h.size(0), -1), 1),
    "sum": lambda m, h: h.sum(1) + torch.sum(h, dim=-1, keepdim=True),
    "mean and transpose": lambda m, h: h.transpose(1, 2).mean(-1),
    "slice": lambda m, h: h[:, 0] @ m.W,
    "cat": lambda m, h: torch.cat([h, 2 * h + m.b], dim=-1),
    "stack": lambda m, h: torch.stack([h, -h], dim=1),
    "division by a constant": lambda m, h: h / 3.0 + h / m.scale,
    "constant from parameters": lambda m, h: h @ (m.W @ m.W.T + torch.eye(4)),
}
NOT_AFFINE = {
    "clamp": lambda m, h: h.clamp(-1.0, 1.0),
    "relu": lambda m, h: torch.relu(h @ m.W),
    "tanh method": lambda m, h: (h @ m.W).tanh(),
    "product of two inputs": lambda m, h: h * (h @ m.W),
    "matmul of two inputs": lambda m, h: h @ h.transpose(1, 2),
    "division by the input": lambda m, h: m.b / h,
    "division of inputs": lambda m, h: h / h.sum(),
    "norm": lambda m, h: h / h.norm(),
    "exp": lambda m, h: torch.exp(h),
    "index by the input": lambda m, h: m.W[h],  # traced only: a float index cannot run
}


@pytest.mark.parametrize("name", list(AFFINE))
def test_affine_operations_are_accepted(name):
    fn = AFFINE[name]
    model = Model(Block(fn)).double()
    model(torch.randn(2, 2, 3, dtype=torch.float64))  # a forward that runs
    assert is_affine_section(model, SECTION)


@pytest.mark.parametrize("name", list(NOT_AFFINE))
def test_other_operations_are_refused(name):
    model = Model(Block(NOT_AFFINE[name])).double()
    if name != "index by the input":
        model(torch.randn(2, 2, 3, dtype=torch.float64))
    assert not is_affine_section(model, SECTION)


@pytest.mark.parametrize("module", [nn.Linear(4, 3), nn.Identity(), nn.Flatten()])
def test_linear_modules_are_affine(module):
    assert is_affine_section(Model(module), SECTION)


class MyLinear(nn.Linear):
    def forward(self, x):
        return torch.relu(super().forward(x))


def test_a_subclass_of_linear_is_traced_not_trusted():
    assert not is_affine_section(Model(MyLinear(4, 3)), SECTION)


def test_hooked_modules_are_refused():
    linear = nn.Linear(4, 3)
    assert is_affine_section(Model(linear), SECTION)
    linear.register_forward_hook(lambda module, args, out: torch.relu(out))
    assert not is_affine_section(Model(linear), SECTION)
    block = Block(AFFINE["nn.Linear inside"])
    assert is_affine_section(Model(block), SECTION)
    block.inner.register_forward_pre_hook(lambda module, args: (args[0].abs(),))
    assert not is_affine_section(Model(block), SECTION)


def _untraceable(m, h):
    if h.sum() > 0:  # control flow on a value: fx cannot trace it
        return h
    return -h


@pytest.mark.parametrize(
    "model",
    [
        Model(Block(AFFINE["matmul"]), after=torch.tanh),  # more than the block's forward
        Model(Block(AFFINE["matmul"]), after=lambda h: 2 * h),
        Model(Block(_untraceable)),
    ],
    ids=["tanh after", "scaled after", "untraceable"],
)
def test_sections_that_are_more_than_an_affine_forward_are_refused(model):
    assert not is_affine_section(model, SECTION)


def test_a_missing_module_is_not_affine():
    assert not is_affine_section(Model(nn.Linear(4, 3)), Section("nothing", OUTPUT_NODE))


@pytest.mark.parametrize("error", list(FATAL))
def test_out_of_memory_and_stops_while_tracing_propagate(error):
    """fx failing on user code means "not shown affine"; out of memory is no such failure."""

    def raises(m, h):
        raise FATAL[error]()

    with pytest.raises(type(FATAL[error]())):
        is_affine_section(Model(Block(raises)), SECTION)

    def fails(m, h):
        raise RuntimeError("a user's error")

    assert not is_affine_section(Model(Block(fails)), SECTION)


# -- the rows ---------------------------------------------------------------------------------
def _mixer(rng):
    model = Model(Block(AFFINE["einsum over positions"])).double()
    x = torch.as_tensor(rng.normal(size=(5, 2, 3)))
    session = ModelSession(model)
    (f,) = session.read(x, ["block"])
    return model, session, x, f


def _brute_rows(block, point, cotangents):
    """``J^T c`` from the full Jacobian of ``block`` at ``point`` (P, d): (R, P, d)."""
    jac = torch.autograd.functional.jacobian(lambda p: block(p[None])[0], point)
    return torch.tensordot(cotangents, jac, dims=2)


def test_vjp_gives_the_rows_once_with_a_size_one_point_axis(rng):
    model, session, x, f = _mixer(rng)
    form = Affine(session, SECTION)
    alphas = torch.tensor([0.5, 1.0], dtype=torch.float64)
    cotangents = torch.as_tensor(rng.normal(size=(3, 2, 4)))  # (R, P_out, d_out)
    got = form.vjp(x, scaled(f, alphas), cotangents)
    assert got.shape == (3, 1, 2, 4)
    for point in (f[0], 5 * f[3], torch.zeros_like(f[0])):  # the same Jacobian everywhere
        expected = _brute_rows(model.block, point, cotangents)
        torch.testing.assert_close(got[:, 0], expected, rtol=1e-12, atol=1e-14)
    tangents = (torch.ones(1, 4, dtype=torch.float64), torch.ones(10, 2, 1, dtype=torch.float64))
    assert form.vjp(x, scaled(f, alphas), cotangents, tangents) is NotImplemented


def test_rows_are_made_once_per_cotangent_rows_object(rng, monkeypatch):
    model, session, x, f = _mixer(rng)
    calls, real = [], affine.autograd_rows

    def counting(*args, **kwargs):
        calls.append(1)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(affine, "autograd_rows", counting)
    form = Affine(session, SECTION)
    C = torch.as_tensor(rng.normal(size=(4, 3)))
    rows = Cotangents(C, 2).rows  # 6 exact rows, made when sliced
    alphas, weights = (torch.tensor(v, dtype=torch.float64) for v in ((0.5, 1.0), (0.3, 0.6)))
    chunks = [(0, 4), (4, 6)]
    first = list(form.rows(x, scaled(f, alphas), rows, weights, chunks))
    assert len(calls) == 2  # one autograd pass per chunk
    assert [g.shape for g in first] == [(4, 1, 2, 4), (2, 1, 2, 4)]
    expected = _brute_rows(model.block, f[0], rows[:]) * 0.9  # times the sum of the weights
    torch.testing.assert_close(torch.cat(first)[:, 0], expected, rtol=1e-12, atol=1e-14)
    # Another batch with the same rows object: no Jacobian work, the same rows.
    other = 3 * f.flip(0)
    again = list(form.rows(x.flip(0), scaled(other, alphas), rows, weights, chunks))
    assert len(calls) == 2
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A new rows object (equal values): made again.
    list(form.rows(x, scaled(f, alphas), Cotangents(C, 2).rows, weights, chunks))
    assert len(calls) == 4


# -- the check ---------------------------------------------------------------------------------
def _probe(model, x, rule=((1.0,), (1.0,))):
    session = ModelSession(model)
    (f,) = session.read(x, ["block"])
    alphas, weights = (torch.tensor(v, dtype=torch.float64) for v in rule)
    with torch.no_grad():
        out = model(x)
    rows = Cotangents(torch.eye(out.shape[-1], dtype=torch.float64), out[0].numel() // 4).rows
    return session, Probe(x, scaled(f, alphas), rows, weights)


RULE = ((0.5, 1.0), (0.5, 0.5))


@pytest.mark.parametrize("rule", [((1.0,), (1.0,)), RULE], ids=["gradient", "two points"])
def test_the_check_passes_an_affine_section(rng, rule):
    model = Model(Block(AFFINE["einsum over positions"])).double()
    session, probe = _probe(model, torch.as_tensor(rng.normal(size=(20, 2, 3))), rule)
    assert Affine(session, SECTION).check(session, SECTION, "rows", probe) == (True, "")


@pytest.mark.parametrize("rule", [((1.0,), (1.0,)), RULE], ids=["gradient", "two points"])
def test_the_check_refuses_a_section_linear_on_the_probe_only(rng, rule):
    """ReLU of positive activations: every probe sample's rows are the same, yet not affine."""
    model = Model(Block(NOT_AFFINE["relu"]), positive=True).double()
    with torch.no_grad():
        model.block.W.copy_(torch.eye(4))  # relu(h) of h > 0: the identity on the probe
    x = torch.as_tensor(rng.normal(size=(20, 2, 4)))
    session, probe = _probe(model, x, rule)
    # The rows at the probe's points alone do not show it.
    (f,) = session.read(x, ["block"])
    assert torch.all(f > 0)
    passed, why = Affine(session, SECTION).check(session, SECTION, "rows", probe)
    assert passed is False
    assert why.startswith("its rows differ between samples (relative")


def test_the_check_refuses_a_nonlinear_section(rng):
    model = Model(Block(NOT_AFFINE["tanh method"])).double()
    session, probe = _probe(model, torch.as_tensor(rng.normal(size=(20, 2, 3))))
    passed, why = Affine(session, SECTION).check(session, SECTION, "rows", probe)
    assert passed is False and "its rows differ between samples" in why


@pytest.mark.parametrize("kind", ["gram", "tangents"])
def test_only_rows_are_offered(rng, kind):
    model = Model(Block(AFFINE["matmul"])).double()
    session, probe = _probe(model, torch.as_tensor(rng.normal(size=(20, 2, 3))))
    assert Affine(session, SECTION).check(session, SECTION, kind, probe) == (None, "")


def test_one_sample_cannot_show_it(rng):
    model = Model(Block(NOT_AFFINE["tanh method"])).double()
    session, probe = _probe(model, torch.as_tensor(rng.normal(size=(1, 2, 3))))
    assert Affine(session, SECTION).check(session, SECTION, "rows", probe) == (None, "")


def test_detect_reads_the_sessions_model():
    session = ModelSession(Model(Block(AFFINE["matmul"])))
    form = Affine.detect(session, SECTION)
    assert isinstance(form, Affine) and form.session is session and form.section is SECTION
    assert Affine.detect(ModelSession(Model(Block(NOT_AFFINE["relu"]))), SECTION) is None
