"""The Linear -> elementwise closed form against the generic Jacobian path."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from toy_models import PositionMixer, ResidualMLP, tanh_mlp

from sklearn_lib import LIBTransformer
from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.forms import linear_elementwise
from sklearn_lib._routes.forms.base import applicable_forms
from sklearn_lib._routes.forms.linear_elementwise import LinearElementwise
from sklearn_lib._routes.forms.linear_elementwise import linear_elementwise_section as section_of


def _mlp(act, d_in=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(d_in, 7),
            act1=act,
            drop=nn.Dropout(0.3),
            fc2=nn.Linear(7, 6),
            act2=nn.GELU(),
            fc3=nn.Linear(6, 3),
        )
    ).double()


def _fit(model, layer, downstream, X, structured, **params):
    jacobian = "auto" if structured else "autograd"
    return LIBTransformer(
        model, layer, downstream_layers=downstream, jacobian=jacobian, **params
    ).fit(X)


@pytest.mark.parametrize(
    "act", [nn.ReLU(), nn.ReLU(inplace=True), nn.Tanh(), nn.SiLU(), nn.LeakyReLU(0.1)]
)
@pytest.mark.parametrize(
    "integration, n_intervals", [("gradient", 0), ("trapezoidal", 3), ("gauss-legendre", 2)]
)
def test_closed_form_equals_generic_path(rng, act, integration, n_intervals):
    model = _mlp(act)
    X = rng.normal(size=(120, 5))
    params = dict(integration=integration, n_intervals=n_intervals, truncation_threshold=0)
    fast = _fit(model, "fc1", ["fc2", "fc3"], X, True, **params)
    slow = _fit(model, "fc1", ["fc2", "fc3"], X, False, **params)
    for name in ("fc1", "fc2", "fc3"):
        np.testing.assert_allclose(
            fast.bases_[name].lambdas, slow.bases_[name].lambdas, rtol=1e-9, atol=1e-14
        )


def test_closed_form_with_positions(rng):
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(3, 6), act=nn.GELU(), fc2=nn.Linear(6, 4))
    ).double()
    X = rng.normal(size=(50, 5, 3))  # 5 positions, Linear acts on each
    fast = _fit(model, "fc1", ["fc2"], X, True)
    slow = _fit(model, "fc1", ["fc2"], X, False)
    np.testing.assert_allclose(fast.lambdas_, slow.lambdas_, rtol=1e-9)


def linear_elementwise_section(model, src, dst, capture="input"):
    """Whether the form applies to ``src -> dst`` (None: the output), as the registry asks."""
    session = ModelSession(model, capture=capture)
    section = Section(src, OUTPUT_NODE if dst is None else dst)
    if [f for f in applicable_forms(session, section) if isinstance(f, LinearElementwise)]:
        return section_of(model, section)
    return None


def test_which_sections_take_the_closed_form():
    model = _mlp(nn.ReLU())
    assert linear_elementwise_section(model, "fc1", "fc2")[0] == "fc1"
    assert linear_elementwise_section(model, "fc2", "fc3")[0] == "fc2"
    # fc3 -> output: a Linear with nothing after it.
    assert linear_elementwise_section(model, "fc3", None) == ("fc3", [])
    # Two Linear layers in between: not elementwise.
    assert linear_elementwise_section(model, "fc1", "fc3") is None
    assert linear_elementwise_section(model, "fc1", "fc2", capture="output") is None
    # The node layer is not a Linear's input.
    assert linear_elementwise_section(model, "act1", "fc2") is None
    # Not an nn.Sequential.
    assert linear_elementwise_section(PositionMixer(), "mix", "head") is None
    assert linear_elementwise_section(ResidualMLP(), "block", "out") is None
    assert linear_elementwise_section(tanh_mlp(), "fc2", "fc3")[0] == "fc2"


@pytest.mark.parametrize("n_positions", [1, 2])
@pytest.mark.parametrize("n_cotangents", [1, 4])  # fewer rows than 7 hidden units; more
def test_the_gram_of_few_rows_and_of_many_equal_autograds(n_cotangents, n_positions):
    """Integrated over a rule of three points with unequal weights, as a fit's would be."""
    torch.manual_seed(1)
    linear = nn.Linear(5, 7).double()
    form = LinearElementwise(linear, [nn.Tanh()])
    f = torch.randn(3, n_positions, 5, dtype=torch.float64)
    alphas = torch.tensor([0.2, 0.6, 1.0], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    points = torch.cat([a * f for a in alphas]).requires_grad_(True)  # alpha-major
    cotangents = torch.randn(n_cotangents, n_positions, 7, dtype=torch.float64)
    got = form.gram(None, points.detach(), weights, cotangents)
    outputs = torch.tanh(linear(points))
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for c in cotangents:
        (g,) = torch.autograd.grad((outputs * c).sum(), points, retain_graph=True)
        # The spec's integrated gradient: sum_a w_a grad F at alpha_a f, per sample.
        integrated = sum(w * g[i * 3 : (i + 1) * 3] for i, w in enumerate(weights))
        rows = integrated.reshape(-1, 5)
        expected += rows.T @ rows
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [None, 7], ids=["one chunk", "small chunks"])
@pytest.mark.parametrize("n_positions", [1, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_slope_directional_is_the_sum_over_hidden_units_and_positions(
    chunk, n_positions, residual, monkeypatch
):
    if chunk is not None:
        monkeypatch.setattr(linear_elementwise, "CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(0)
    w, s = (torch.randn(n, n_positions, 6, dtype=torch.float64, generator=gen) for n in (4, 5))
    projected = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    coef = torch.randn(5, n_positions, 3, dtype=torch.float64, generator=gen)
    through = torch.randn(4, n_positions, 3, dtype=torch.float64, generator=gen)
    along = torch.einsum("rpk,mpk,kj->rmpj", w, s, projected)
    along = along + through[:, None] if residual else along
    expected = torch.einsum("rmpj,mpj->rmj", along, coef)
    got = linear_elementwise.slope_directional(w, s, projected, coef, through if residual else None)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("n_positions", [1, 2])
def test_directional_derivatives_are_those_of_the_rows(n_positions):
    torch.manual_seed(2)
    form = LinearElementwise(nn.Linear(5, 7).double(), [nn.Tanh()])
    points = torch.randn(3, n_positions, 5, dtype=torch.float64)
    cotangents = torch.randn(4, n_positions, 7, dtype=torch.float64)
    v = torch.randn(2, 5, dtype=torch.float64)
    coef = torch.randn(3, n_positions, 2, dtype=torch.float64)
    rows = form.vjp(None, points, cotangents)  # (R, m, P, d)
    expected = torch.einsum("rmpd,jd,mpj->rmj", rows, v, coef)
    got = form.vjp(None, points, cotangents, tangents=(v, coef))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
