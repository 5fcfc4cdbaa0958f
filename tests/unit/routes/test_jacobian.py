"""One home for section Jacobians (``_routes.jacobian``): every route against autograd.

Closed forms (the model's ``lib_section_*`` protocol and the Linear ->
elementwise formula) must give autograd's rows, Gram and directional
derivatives, and every closed form is checked once, then used or dropped.
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from _sections import jacobians
from torch import nn
from toy_models import modadd_tokens as tokens
from toy_models import small_modadd

from sklearn_lib import LIBTransformer
from sklearn_lib._core.nodes import OUTPUT_NODE
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.autograd import integrated_vjps
from sklearn_lib._routes.cotangents import Cotangents, scaled
from sklearn_lib.models import ModularAdditionTransformer

LAYERS = ["blocks.0.attn", "blocks.0.mlp", "unembed"]
RULES = [((1.0,), (1.0,)), ((0.0, 0.5, 1.0), (0.25, 0.5, 0.25))]


def autograd_rows(session, x, src, dst, points, rows, weights):
    """The reference: one backward pass per row, through the model itself."""
    leaf = points.detach().requires_grad_(True)
    with torch.enable_grad():
        out = session.section(x, src, leaf, dst)
        out = out.reshape(out.shape[0], *rows.shape[1:])
        return torch.cat(list(integrated_vjps(out, leaf, rows, weights, x.shape[0], False)))


def check_products(model, x, src, dst, d_next, n_positions_out, rule):
    """Rows, Gram (``M'``) and directional square sums (edges) against autograd.

    Returns the default-route section, whose ``route()`` tells the closed form
    it chose for each product.
    """
    session = ModelSession(model)
    (f,) = session.read(x, [src])
    alphas, weights = (torch.tensor(v, dtype=torch.float64) for v in rule)
    points = scaled(f, alphas)
    gen = torch.Generator().manual_seed(0)
    cotangents = Cotangents(
        torch.randn(d_next, 3, dtype=torch.float64, generator=gen), n_positions_out
    )
    rows = cotangents.rows
    auto = autograd_rows(session, x, src, dst, points, rows, weights)  # (R, n, P, d)
    fast, slow = jacobians(session, x, src, dst, rule)
    with torch.no_grad():
        closed = torch.cat(list(fast.gradients(x, points, rows, weights)))
    torch.testing.assert_close(closed.expand_as(auto), auto, rtol=1e-10, atol=1e-12)
    # The Gram of the rows.
    expected = torch.einsum("rnpd,rnpe->de", auto, auto)
    for engine in (fast, slow):
        got = engine.gram_sum(x, f, cotangents, (alphas, weights))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # Directional derivatives along coefficient-scaled directions, squared and summed.
    directions = torch.randn(4, auto.shape[-1], dtype=torch.float64, generator=gen)
    coefficients = torch.randn(x.shape[0], auto.shape[2], 4, dtype=torch.float64, generator=gen)
    along = torch.einsum("rnpd,jd,npj->rnj", auto, directions, coefficients)
    expected = (along**2).sum(1)
    for engine in (fast, slow):
        got = engine.directional_square_sums(x, points, rows, weights, directions, coefficients)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert all(slow.route.form(kind) is None for kind in ("rows", "gram", "tangents"))
    return fast


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a failed check falls back with a warning
@pytest.mark.parametrize("i", [0, 1, 2])
@pytest.mark.parametrize("rule", RULES)
def test_model_closed_forms_match_autograd(i, rule):
    model, x = small_modadd(), tokens()
    dst = LAYERS[i + 1] if i < 2 else OUTPUT_NODE
    fast = check_products(model, x, LAYERS[i], dst, 8 if i == 2 else 16, 1, rule)
    # The closed forms were used where the model has them (attention Gram: plain gradient).
    assert fast.route.form("rows") is not None
    assert (fast.route.form("gram") is not None) is (i == 1 or (i == 0 and len(rule[0]) == 1))
    assert (fast.route.form("tangents") is not None) is (i != 2)


def position_mlp(act, seed=0):
    """fc1 -> act -> fc2 -> tanh -> fc3 on inputs with positions (the Linear acts per position)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(3, 6), act=act, fc2=nn.Linear(6, 5), act2=nn.Tanh(), fc3=nn.Linear(5, 4)
        )
    ).double()


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("act", [nn.ReLU(), nn.GELU(), nn.Tanh()])
@pytest.mark.parametrize("shape", [(20, 3), (20, 4, 3)])
@pytest.mark.parametrize("rule", RULES)
def test_linear_elementwise_formula_matches_autograd(act, shape, rule):
    """The formula serves rows, Gram and edges, with and without positions."""
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    n_pos = shape[1] if len(shape) == 3 else 1
    for src, dst, d_next in [("fc1", "fc2", 6), ("fc2", "fc3", 5), ("fc3", OUTPUT_NODE, 4)]:
        fast = check_products(position_mlp(act), x, src, dst, d_next, n_pos, rule)
        assert all(
            type(fast.route.form(kind)).__name__ == "LinearElementwise"
            for kind in ("rows", "gram", "tangents")
        )


def test_position_folding_equals_the_exact_rows(rng):
    """Exact rows of a position-wise section are folded into one-position rows: same M', edges."""
    model = position_mlp(nn.SiLU())
    x = torch.as_tensor(rng.normal(size=(15, 4, 3)))
    session = ModelSession(model)
    (f,) = session.read(x, ["fc2"])
    rule = (torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    cotangents = Cotangents(torch.as_tensor(rng.normal(size=(5, 2))), 4)
    fast, slow = jacobians(session, x, "fc2", "fc3")
    torch.testing.assert_close(
        fast.gram_sum(x, f, cotangents, rule), slow.gram_sum(x, f, cotangents, rule)
    )
    src = tuple(torch.as_tensor(a) for a in (rng.normal(size=6), rng.normal(size=(6, 3))))
    src = (*src, torch.linalg.pinv(src[1]))
    torch.testing.assert_close(
        fast.edge_sums(x, f, src, cotangents, rule), slow.edge_sums(x, f, src, cotangents, rule)
    )
    assert type(fast.route.form("gram")).__name__ == "LinearElementwise"


class ScaledLinear(nn.Linear):
    """A Linear subclass whose forward is not ``x W^T + b``: the formula must not be trusted."""

    def forward(self, x):
        return 1.5 * super().forward(x)


def test_linear_elementwise_formula_is_checked_once_and_falls_back(rng):
    model = position_mlp(nn.Tanh())
    wrong = position_mlp(nn.Tanh())
    wrong.fc2 = ScaledLinear(6, 5).double()
    wrong.fc2.load_state_dict(model.fc2.state_dict())
    X = rng.normal(size=(60, 3))
    with pytest.warns(RuntimeWarning, match="Linear -> elementwise formula.*disagrees"):
        got = LIBTransformer(wrong, "fc2", downstream_layers=["fc3"]).fit(X)
        graph = got.interaction_graph(X)
    expected = LIBTransformer(wrong, "fc2", downstream_layers=["fc3"], jacobian="autograd").fit(X)
    expected_graph = expected.interaction_graph(X)
    for name in ("fc2", "fc3"):
        np.testing.assert_allclose(
            got.bases_[name].lambdas, expected.bases_[name].lambdas, rtol=1e-9
        )
    for key, E in expected_graph.edges.items():
        np.testing.assert_allclose(graph.edges[key], E, rtol=1e-9, atol=1e-14 * E.max())


def test_which_closed_forms_apply():
    model = small_modadd()
    params = ModelSession(model).params
    points = torch.randn(3, 16, dtype=torch.float64)
    rows = torch.randn(2, 1, 8, dtype=torch.float64)  # over the logits
    rows16 = torch.randn(2, 1, 16, dtype=torch.float64)  # over the MLP input
    one, three = torch.ones(1, dtype=torch.float64), torch.ones(3, dtype=torch.float64) / 3
    # The attention Gram factors only for the plain gradient; other rules use rows.
    attn = torch.randn(3, 3, 16, dtype=torch.float64)
    attn_gram = model.lib_section_gram
    assert attn_gram(params, *LAYERS[:2], "input", attn, three, rows16) is NotImplemented
    assert attn_gram(params, *LAYERS[:2], "input", attn, one, rows16).shape == (16, 16)
    # Output capture, unknown pairs, and tangents on the affine readout: not covered.
    assert model.lib_section_vjp(params, *LAYERS[:2], "output", attn, rows16) is NotImplemented
    assert model.lib_section_vjp(params, LAYERS[0], None, "input", attn, rows) is NotImplemented
    tangents = (torch.randn(2, 16, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64))
    out = model.lib_section_vjp(params, "unembed", None, "input", points, rows, tangents=tangents)
    assert out is NotImplemented
    # The affine readout's rows are the same for every point: a size-1 point axis.
    assert model.lib_section_vjp(params, "unembed", None, "input", points, rows).shape == (2, 1, 16)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("integration, n_intervals", [("gradient", 0), ("trapezoidal", 2)])
def test_fit_and_graph_equal_the_autograd_path(integration, n_intervals):
    model = small_modadd()
    X = tokens(60).numpy()
    params = dict(
        downstream_layers=LAYERS[1:],
        integration=integration,
        n_intervals=n_intervals,
        batch_size=25,
        truncation_threshold=0,
    )
    fits = []
    for jacobian in ("auto", "autograd"):
        lib = LIBTransformer(model, LAYERS[0], jacobian=jacobian, **params).fit(X)
        fits.append((lib, lib.interaction_graph(X)))
    (fast, graph_fast), (slow, graph_slow) = fits
    for name in LAYERS:
        a, b = fast.bases_[name].lambdas, slow.bases_[name].lambdas
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12 * b[0])
    for key, E in graph_slow.edges.items():
        np.testing.assert_allclose(graph_fast.edges[key], E, rtol=1e-7, atol=1e-10 * E.max())


class WrongClosedForm(ModularAdditionTransformer):
    """Claims closed forms that are off by a factor: the engine must not trust them."""

    def lib_section_vjp(self, params, src, dst, capture, points, cotangents, tangents=None):
        out = super().lib_section_vjp(
            params, src, dst, capture, points, cotangents, tangents=tangents
        )
        return out if out is NotImplemented else 1.01 * out

    def lib_section_gram(self, params, src, dst, capture, points, weights, cotangents):
        out = super().lib_section_gram(params, src, dst, capture, points, weights, cotangents)
        return out if out is NotImplemented else 1.01 * out


def test_a_wrong_closed_form_warns_and_falls_back_to_autograd():
    right = small_modadd()
    wrong = WrongClosedForm(p=7, d_model=16, n_heads=2, d_head=8, d_mlp=32).double()
    wrong.load_state_dict(right.state_dict())
    X = tokens(50).numpy()
    with pytest.warns(RuntimeWarning, match="disagrees with autograd"):
        got = LIBTransformer(wrong, LAYERS[0], downstream_layers=LAYERS[1:]).fit(X)
    expected = LIBTransformer(right, LAYERS[0], downstream_layers=LAYERS[1:]).fit(X)
    for name in LAYERS:
        np.testing.assert_allclose(
            got.bases_[name].lambdas, expected.bases_[name].lambdas, rtol=1e-8
        )


class MixPositionsModel(torch.nn.Module):
    """``out_p = sum_q W_pq tanh(mix(x_q))``: three output positions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Linear(4, 4)
        self.W = torch.nn.Parameter(torch.randn(3, 3))

    def forward(self, x):  # (n, 3, 4)
        return torch.einsum("pq,nqd->npd", self.W, torch.tanh(self.mix(x)))


class WrongAtLaterPositions(MixPositionsModel):
    """A closed form (by autograd) that ignores every output position but the first."""

    def lib_section_vjp(self, params, src, dst, capture, points, cotangents, tangents=None):
        if tangents is not None:
            return NotImplemented
        cotangents = cotangents.clone()
        cotangents[:, 1:] = 0
        leaf = points.clone().requires_grad_(True)
        with torch.enable_grad():
            hidden = torch.tanh(leaf @ params["mix.weight"].T + params["mix.bias"])
            out = torch.einsum("pq,nqd->npd", params["W"], hidden)
            grads = [
                torch.autograd.grad(out, leaf, c.expand_as(out), retain_graph=True)[0]
                for c in cotangents
            ]
        return torch.stack(grads)


def test_the_check_covers_every_output_position(rng):
    """Rows are position-major: the check must not look at the first position only."""
    X = rng.normal(size=(50, 3, 4))
    with pytest.warns(RuntimeWarning, match="disagrees with autograd"):
        got = LIBTransformer(WrongAtLaterPositions().double(), "mix").fit(X)
    expected = LIBTransformer(MixPositionsModel().double(), "mix").fit(X)
    np.testing.assert_allclose(got.lambdas_, expected.lambdas_, rtol=1e-9)


def test_a_closed_form_that_raises_falls_back(rng):
    """Parameters renamed (here by a parametrization) break the closed form, not the fit."""
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, weight):
            return 2 * weight

    model = small_modadd()
    parametrize.register_parametrization(model.blocks[0].mlp, "W_in", Double())
    X = tokens(40).numpy()
    with pytest.warns(RuntimeWarning, match="it raised KeyError"):
        got = LIBTransformer(model, LAYERS[0], downstream_layers=LAYERS[1:]).fit(X)
    slow = LIBTransformer(model, LAYERS[0], downstream_layers=LAYERS[1:], jacobian="autograd")
    np.testing.assert_allclose(got.lambdas_, slow.fit(X).lambdas_, rtol=1e-9)


def test_the_thread_count_is_left_alone():
    threads = torch.get_num_threads()
    LIBTransformer(small_modadd(), LAYERS[0], downstream_layers=LAYERS[1:]).fit(tokens(30).numpy())
    assert torch.get_num_threads() == threads
