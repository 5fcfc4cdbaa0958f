"""The closed-form contract: a new form is one file and a registration, and the fit uses it."""

import numpy as np
import pytest
from linear_form import LinearForm
from toy_models import TanhThenLinear

from sklearn_lib import LIBTransformer
from sklearn_lib._routes.forms import REGISTRY, Affine, ClosedForm, register
from sklearn_lib._routes.forms.base import unregister


@pytest.fixture
def linear_form():
    register(LinearForm, first=True)
    LinearForm.calls = 0
    try:
        yield LinearForm
    finally:
        unregister(LinearForm)


def _plan_line(capsys):
    return next(line for line in capsys.readouterr().err.splitlines() if "fitting runs" in line)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a failed check would warn
def test_a_registered_form_serves_the_fit_and_its_graph(linear_form, capsys):
    model = TanhThenLinear().double()
    X = np.random.default_rng(0).normal(size=(80, 6, 3))
    fast = LIBTransformer(model, "head", compute_graph=True, verbose=True).fit(X)
    # The plan names it: the head's M' by closed form, where the affine route served before.
    assert "'head' -> 'output': by closed form" in _plan_line(capsys)
    assert LinearForm.calls > 0
    calls = LinearForm.calls
    graph = fast.interaction_graph(X)
    assert LinearForm.calls > calls  # the edges' directional derivatives too
    slow = LIBTransformer(model, "head", jacobian="autograd").fit(X)
    np.testing.assert_allclose(fast.lambdas_, slow.lambdas_, rtol=1e-10)
    np.testing.assert_allclose(fast.components_, slow.components_, rtol=1e-8, atol=1e-12)
    reference = slow.interaction_graph(X)
    for key, E in reference.edges.items():
        np.testing.assert_allclose(fast.interaction_graph_.edges[key], E, rtol=1e-9)
        np.testing.assert_allclose(graph.edges[key], E, rtol=1e-9)


def test_without_the_registration_the_affine_route_serves(capsys):
    assert LinearForm not in REGISTRY
    model = TanhThenLinear().double()
    X = np.random.default_rng(0).normal(size=(40, 6, 3))
    LIBTransformer(model, "head", verbose=True).fit(X)
    assert "'head' -> 'output': affine, its rows made once" in _plan_line(capsys)


class Broken(LinearForm):
    """The same form, off by a factor: its check fails, and the fit falls back."""

    title = "A broken nn.Linear formula"

    def gram(self, x, points, weights, cotangents):
        return 1.1 * super().gram(x, points, weights, cotangents)


def test_a_wrong_registered_form_warns_and_falls_back():
    register(Broken, first=True)
    try:
        model = TanhThenLinear().double()
        X = np.random.default_rng(0).normal(size=(40, 6, 3))
        with pytest.warns(RuntimeWarning, match="A broken nn.Linear formula is not used"):
            fast = LIBTransformer(model, "head").fit(X)
    finally:
        unregister(Broken)
    slow = LIBTransformer(model, "head", jacobian="autograd").fit(X)
    np.testing.assert_allclose(fast.lambdas_, slow.lambdas_, rtol=1e-10)


def test_the_registry_holds_forms_most_specific_first():
    names = [form.__name__ for form in REGISTRY]
    assert names == [
        "ModelProtocol",
        "LinearElementwise",
        "ResidualMLP",
        "Affine",
        "FinalLinear",
        "TracedSection",
    ]
    assert REGISTRY[-3] is Affine
    with pytest.raises(TypeError, match="not a ClosedForm subclass"):
        register(object)
    assert issubclass(LinearForm, ClosedForm)
