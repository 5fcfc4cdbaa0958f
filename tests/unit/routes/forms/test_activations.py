"""The one table of elementwise activations (``_routes.forms.activations``)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sklearn_lib._routes.forms.activations import (
    ACTIVATIONS,
    BY_FUNCTION,
    BY_METHOD,
    BY_MODULE,
    BY_NAME,
    ELEMENTWISE_MODULES,
    IDENTITIES,
)

#: What each entry must compute, written independently of the table.
REFERENCE = {
    "relu": lambda z: torch.clamp(z, min=0),
    "tanh": lambda z: (torch.exp(z) - torch.exp(-z)) / (torch.exp(z) + torch.exp(-z)),
    "sigmoid": lambda z: 1 / (1 + torch.exp(-z)),
    "silu": lambda z: z / (1 + torch.exp(-z)),
    "gelu": lambda z: 0.5 * z * (1 + torch.erf(z / 2**0.5)),
}


def _points():
    # Away from relu's kink at 0, where its derivative is a convention.
    z = torch.linspace(-3, 3, 40, dtype=torch.float64)
    return z[z.abs() > 1e-3].reshape(2, -1)


def test_the_table_names_five_activations():
    assert [a.name for a in ACTIVATIONS] == ["relu", "tanh", "sigmoid", "silu", "gelu"]
    assert BY_NAME == {a.name: a for a in ACTIVATIONS}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_phi_the_module_the_functions_and_the_method_agree(name):
    entry, z = BY_NAME[name], _points()
    expected = REFERENCE[name](z)
    torch.testing.assert_close(entry.phi(z), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(entry.module()(z), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(entry.function()(z), expected, rtol=1e-12, atol=1e-14)
    assert entry.functions  # how a traced forward may call it
    for function in entry.functions:
        torch.testing.assert_close(function(z), expected, rtol=1e-12, atol=1e-14)
    if entry.method is not None:
        torch.testing.assert_close(getattr(z, entry.method)(), expected, rtol=1e-12, atol=1e-14)


def test_gelu_takes_its_approximate_flag():
    gelu, z = BY_NAME["gelu"], _points()
    tanh_form = 0.5 * z * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z**3)))
    torch.testing.assert_close(gelu.function("tanh")(z), tanh_form, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gelu.function("none")(z), REFERENCE["gelu"](z))
    assert not torch.allclose(gelu.function("tanh")(z), gelu.function("none")(z), atol=1e-6)
    # The others have no parameter: the flag changes nothing.
    assert BY_NAME["tanh"].function("tanh") is torch.tanh


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_slope_of_output_is_the_derivative_as_a_function_of_the_output(name):
    entry = BY_NAME[name]
    z = _points().requires_grad_(True)
    h = entry.phi(z)
    (derivative,) = torch.autograd.grad(h.sum(), z)
    slope = entry.slope_of_output(h.detach())
    torch.testing.assert_close(slope.to(torch.float64), derivative, rtol=1e-12, atol=1e-14)


def test_relu_slope_at_zero_is_autograds():
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (derivative,) = torch.autograd.grad(torch.relu(z).sum(), z)
    slope = BY_NAME["relu"].slope_of_output(torch.relu(z).detach())
    torch.testing.assert_close(slope.to(torch.float64), derivative)


@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_activations_whose_slope_the_output_does_not_give_have_none(name):
    # silu and gelu are not monotone: an output value can come from two inputs.
    assert BY_NAME[name].slope_of_output is None


def test_lookups_by_module_function_and_method():
    assert {m: a.name for m, a in BY_MODULE.items()} == {
        nn.ReLU: "relu",
        nn.Tanh: "tanh",
        nn.Sigmoid: "sigmoid",
        nn.SiLU: "silu",
        nn.GELU: "gelu",
    }
    assert BY_FUNCTION[torch.relu].name == BY_FUNCTION[F.relu].name == "relu"
    assert BY_FUNCTION[torch.tanh].name == "tanh"
    assert BY_FUNCTION[torch.sigmoid].name == "sigmoid"
    assert BY_FUNCTION[F.silu].name == "silu" and BY_FUNCTION[F.gelu].name == "gelu"
    assert {k: a.name for k, a in BY_METHOD.items()} == {
        "relu": "relu",
        "tanh": "tanh",
        "sigmoid": "sigmoid",
    }


def test_module_lookup_is_by_exact_type():
    class Shifted(nn.ReLU):  # a subclass may compute something else
        def forward(self, x):
            return super().forward(x) + 1

    assert Shifted not in BY_MODULE and nn.LeakyReLU not in BY_MODULE


def test_elementwise_modules():
    expected = {
        nn.ReLU,
        nn.Tanh,
        nn.Sigmoid,
        nn.SiLU,
        nn.GELU,
        nn.LeakyReLU,
        nn.ELU,
        nn.Softplus,
        nn.Mish,
        nn.Hardtanh,
        nn.ReLU6,
        nn.Identity,
        nn.Dropout,
    }
    assert set(ELEMENTWISE_MODULES) == expected and len(ELEMENTWISE_MODULES) == len(expected)
    assert set(IDENTITIES) == {nn.Identity, nn.Dropout}


@pytest.mark.parametrize("module", ELEMENTWISE_MODULES, ids=lambda m: m.__name__)
def test_elementwise_modules_act_on_each_entry_alone(module):
    layer = module().eval()
    z = _points()[0, :6].clone()
    jac = torch.autograd.functional.jacobian(layer, z)
    torch.testing.assert_close(jac, torch.diag(torch.diagonal(jac)), rtol=0, atol=0)
    if module in IDENTITIES:  # the identity in eval mode
        torch.testing.assert_close(layer(z), z, rtol=0, atol=0)
