"""A model's own ``lib_section_vjp`` / ``lib_section_gram`` (``_routes.forms.model_protocol``)."""

from collections import OrderedDict

import pytest
import torch
from _sections import route_of
from torch import nn

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.forms import LinearElementwise, ModelProtocol
from sklearn_lib._routes.forms.base import applicable_forms, structural_veto

#: What the protocol's methods were called with, by any copy of the models below.
CALLS = []


def _mlp_layers():
    torch.manual_seed(0)
    return OrderedDict(fc1=nn.Linear(3, 5), act=nn.Tanh(), fc2=nn.Linear(5, 2))


class Plain(nn.Sequential):
    """``fc1 -> tanh -> fc2`` without the protocol."""

    def __init__(self):
        super().__init__(_mlp_layers())


class VjpOnly(Plain):
    """The right rows of ``fc1 -> fc2`` (``W1^T (tanh'(z) * c)``), recording every call."""

    answer = None  # None: compute; else what to return

    def lib_section_vjp(self, params, src, dst, capture, points, cotangents, *, tangents=None):
        CALLS.append(("vjp", self, params, src, dst, capture, points, cotangents, tangents))
        if self.answer is not None or (src, dst) != ("fc1", "fc2"):
            return NotImplemented if self.answer is None else self.answer
        W, b = params["fc1.weight"], params["fc1.bias"]
        slope = 1 - torch.tanh(points @ W.T + b) ** 2  # (m, *positions, 5)
        c = cotangents.reshape(cotangents.shape[0], *slope.shape[1:])  # no position axis: none
        rows = (slope.unsqueeze(0) * c.unsqueeze(1)) @ W  # (R, m, *positions, 3)
        if tangents is None:
            return rows
        v, a = tangents
        return torch.einsum("rm...d,jd,m...j->rmj", rows, v, a)


class GramOnly(Plain):
    def lib_section_gram(self, params, src, dst, capture, points, weights, cotangents):
        CALLS.append(("gram", self, params, src, dst, capture, points, weights, cotangents))
        return NotImplemented


class Both(VjpOnly, GramOnly):
    pass


class WrongRows(VjpOnly):
    def lib_section_vjp(self, *args, **kwargs):
        out = super().lib_section_vjp(*args, **kwargs)
        return out if out is NotImplemented else 1.01 * out


def _randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.fixture(autouse=True)
def calls():
    CALLS.clear()
    yield CALLS
    CALLS.clear()


def test_detect_needs_either_method():
    section = Section("fc1", "fc2")
    assert ModelProtocol.detect(ModelSession(Plain()), section) is None
    for model in (VjpOnly(), GramOnly(), Both()):
        session = ModelSession(model)
        form = ModelProtocol.detect(session, section)
        assert isinstance(form, ModelProtocol)
        assert form.session is session and form.section is section


def test_the_model_decides_where_its_methods_apply():
    """Not traced: the structural veto, which rules out the traced forms, does not apply."""
    assert ModelProtocol.traced is False and LinearElementwise.traced is True
    section = Section("fc1", "fc2")
    registry = [ModelProtocol, LinearElementwise]
    found = applicable_forms(ModelSession(VjpOnly()), section, registry)
    assert [type(f) for f in found] == registry
    for vetoed, why in [
        ({"capture": "output"}, "node layers are module outputs"),
        ({"forward_kwargs": {"scale": 2.0}}, "the model is called with forward_kwargs"),
    ]:
        session = ModelSession(VjpOnly(), **vetoed)
        assert structural_veto(session, section) == why
        assert [type(f) for f in applicable_forms(session, section, registry)] == [ModelProtocol]


@pytest.mark.parametrize("capture", ["input", "output"])
@pytest.mark.parametrize("dst", ["fc2", OUTPUT_NODE])
def test_the_methods_get_the_sessions_params_names_and_capture(capture, dst):
    model = Both()
    session = ModelSession(model, capture=capture)
    form = ModelProtocol(session, Section("fc1", dst))
    points, cotangents = _randn(4, 3), _randn(2, 1, 5)
    weights, tangents = torch.ones(1, dtype=torch.float64), (_randn(2, 3), _randn(4, 1, 2))
    x = _randn(4, 3)
    form.vjp(x, points, cotangents)
    form.vjp(x, points, cotangents, tangents=tangents)
    form.gram(x, points, weights, cotangents)
    expected_dst = None if dst == OUTPUT_NODE else dst  # the protocol's output node
    assert [c[0] for c in CALLS] == ["vjp", "vjp", "gram"]
    for call in CALLS:
        _, self, params, src, got_dst, got_capture, got_points = call[:7]
        assert self is session.model and self is not model  # the session's private copy
        assert params is session.params
        assert (src, got_dst, got_capture) == ("fc1", expected_dst, capture)
        assert got_points is points
    assert CALLS[0][7] is cotangents and CALLS[0][8] is None
    assert CALLS[1][8] is tangents
    assert CALLS[2][7] is weights and CALLS[2][8] is cotangents


def test_not_implemented_passes_through():
    points, cotangents = _randn(4, 3), _randn(2, 1, 5)
    section = Section("fc2", OUTPUT_NODE)  # covered by no method below
    for model in (VjpOnly(), GramOnly(), Both()):  # a method the model lacks answers the same
        form = ModelProtocol(ModelSession(model), section)
        assert form.vjp(None, points, cotangents) is NotImplemented
        assert form.gram(None, points, torch.ones(1), cotangents) is NotImplemented
    # The methods a model has were asked: VjpOnly's, GramOnly's, and both of Both's.
    assert [c[0] for c in CALLS] == ["vjp", "gram", "vjp", "gram"]


def test_a_tensor_answer_is_returned_as_is():
    model = VjpOnly()
    model.answer = torch.arange(6.0).reshape(2, 1, 3)
    form = ModelProtocol(ModelSession(model), Section("fc1", "fc2"))
    assert form.vjp(None, torch.randn(4, 3), torch.randn(2, 1, 5)) is form.session.model.answer


@pytest.mark.parametrize(
    "kind, method",
    [("rows", "lib_section_vjp"), ("tangents", "lib_section_vjp"), ("gram", "lib_section_gram")],
)
def test_describe_names_the_method(kind, method):
    form = ModelProtocol(ModelSession(Both()), Section("fc1", "fc2"))
    assert form.describe(kind) == f"Both.{method}"


@pytest.mark.filterwarnings("error::RuntimeWarning")  # every check passes
def test_right_methods_serve_and_a_declined_kind_goes_to_the_next_form():
    x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    route = route_of(ModelSession(Both()), x, "fc1", "fc2")
    assert isinstance(route.rows, ModelProtocol) and isinstance(route.tangents, ModelProtocol)
    assert isinstance(route.gram, LinearElementwise)  # the model's Gram said NotImplemented
    # Gram and directional derivatives first; rows only where asked for on their own.
    assert [(v.form, v.kind, v.passed) for v in route.verdicts] == [
        ("The Linear -> elementwise formula", "gram", True),
        ("Both.lib_section_vjp", "tangents", True),
        ("Both.lib_section_vjp", "rows", True),
    ]


def test_wrong_methods_are_checked_and_refused_by_name():
    x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match=r"WrongRows\.lib_section_vjp is not used"):
        route = route_of(ModelSession(WrongRows()), x, "fc1", "fc2", kinds=("rows",))
    assert isinstance(route.rows, LinearElementwise)
    assert route.verdicts[0].form == "WrongRows.lib_section_vjp" and not route.verdicts[0].passed
