"""Models that return more than a tensor, or take keyword arguments (issue 11, parts 1-2).

``output=`` picks the output node among what the model returns;
``forward_kwargs=`` is passed to every call.  Each form must give exactly the
fit of a hand-written wrapper that returns the tensor.
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn
from toy_models import tanh_mlp

from sklearn_lib import ActivationTransformer, LIBTransformer, ablation_curve


class ModelOutput(OrderedDict):
    """Like Hugging Face's ModelOutput: keys and attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


class Returns(nn.Module):
    """``tanh_mlp`` whose forward returns its logits in the form ``how``, scaled by ``scale``."""

    def __init__(self, how):
        super().__init__()
        self.net, self.how = tanh_mlp(), how

    def forward(self, x, scale=1.0, *, shift=0.0):
        logits = self.net(x) * scale + shift
        if self.how == "dict":
            return ModelOutput(loss=None, logits=logits, hidden=x)
        if self.how == "tuple":
            return (logits, x)
        if self.how == "object":
            return type("Out", (), {"logits": logits, "extra": 1})()
        return logits


class Wrapped(nn.Module):
    """The hand-written wrapper users needed before."""

    def __init__(self, inner, **kwargs):
        super().__init__()
        self.inner, self.kwargs = inner, kwargs

    def forward(self, x):
        out = self.inner(x, **self.kwargs)
        return out if torch.is_tensor(out) else out[0] if isinstance(out, tuple) else out.logits


@pytest.fixture
def X(rng):
    return rng.normal(size=(120, 4))


def _assert_same_fit(a, b, X):
    # To rounding: batches of other sizes sum their Grams in other chunks, the same to
    # the bit on some CPUs only (``_core.gram_sum``).
    np.testing.assert_allclose(a.lambdas_, b.lambdas_, rtol=1e-12, atol=1e-12 * a.lambdas_.max())
    np.testing.assert_allclose(a.transform(X), b.transform(X), rtol=1e-10, atol=1e-12)
    assert a.output_shape_ == b.output_shape_ == (3,)
    assert a.score(X) == pytest.approx(b.score(X), rel=1e-12)


@pytest.mark.parametrize(
    "how, output",
    [
        ("dict", "logits"),
        ("object", "logits"),
        ("tuple", 0),
        ("tuple", -2),
        ("dict", lambda out: out["logits"]),
        ("tensor", None),
    ],
    ids=["key", "attribute", "index", "negative-index", "callable", "tensor"],
)
def test_output_picks_the_output_node(X, how, output):
    model = Returns(how).double()
    # Bit for bit, so on the same routes: forms read from the code do not serve a
    # section to a selected output (the wrapper's would take the traced section's).
    lib = LIBTransformer(
        model, "net.fc2", downstream_layers=["net.fc3"], output=output, jacobian="autograd"
    )
    lib.fit(X)
    wrapped = LIBTransformer(
        Wrapped(model), "inner.net.fc2", downstream_layers=["inner.net.fc3"], jacobian="autograd"
    )
    reference = wrapped.fit(X)
    _assert_same_fit(lib, reference, X)
    graph, expected = lib.interaction_graph(X), reference.interaction_graph(X)
    for edges, expected_edges in zip(graph.edges.values(), expected.edges.values()):
        np.testing.assert_array_equal(edges, expected_edges)
    np.testing.assert_array_equal(
        ablation_curve(lib, X, n_features=[1, 2])[1],
        ablation_curve(reference, X, n_features=[1, 2])[1],
    )
    acts = ActivationTransformer(model, "net.fc2", output=output).fit_transform(X)
    expected_acts = ActivationTransformer(Wrapped(model), "inner.net.fc2").fit_transform(X)
    np.testing.assert_array_equal(acts, expected_acts)


def test_forward_kwargs_reach_every_call(X):
    model = Returns("dict").double()
    kwargs = {"scale": 2.0, "shift": 0.5}
    lib = LIBTransformer(model, "net.fc2", output="logits", forward_kwargs=kwargs).fit(X)
    reference = LIBTransformer(Wrapped(model, **kwargs), "inner.net.fc2").fit(X)
    _assert_same_fit(lib, reference, X)
    plain = LIBTransformer(model, "net.fc2", output="logits").fit(X)
    assert not np.allclose(plain.lambdas_, lib.lambdas_)  # the kwargs changed the model
    assert clone(lib).get_params()["forward_kwargs"] == kwargs


def test_a_model_output_without_output_is_named_with_the_fix(X):
    with pytest.raises(ValueError, match=r"produced ModelOutput, not a tensor; choose .*output="):
        LIBTransformer(Returns("dict").double(), "net.fc2").fit(X)


@pytest.mark.parametrize(
    "how, output, match",
    [
        ("dict", "scores", r"output='scores', but the model returned a ModelOutput without it"),
        ("object", "scores", r"output='scores', but the model returned a Out without it"),
        ("dict", 0, r"output=0 is an index, but the model returned a ModelOutput"),
        ("tuple", 2, r"output=2 is out of range: the model returned 2 items"),
        ("dict", lambda out: out["hidden"].long(), r"dtype torch.int64"),
    ],
    ids=["missing-key", "missing-attribute", "index-of-dict", "index-out-of-range", "bad-callable"],
)
def test_a_wrong_output_is_named(X, how, output, match):
    with pytest.raises(ValueError, match=match):
        LIBTransformer(Returns(how).double(), "net.fc2", output=output).fit(X)


@pytest.mark.parametrize(
    "params", [{"output": True}, {"output": 1.5}, {"forward_kwargs": [("scale", 2.0)]}]
)
def test_bad_output_parameters_are_refused(X, params):
    with pytest.raises(ValueError, match="parameter of LIBTransformer must be"):
        LIBTransformer(Returns("dict").double(), "net.fc2", **params).fit(X)


class Block(nn.Module):
    """A transformer-style block: called with a cache and keyword arguments, returns a tuple."""

    def __init__(self, d, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(d, d)

    def forward(self, h, cache=None, *, attention_scale=1.0):
        if cache is None or attention_scale != 0.5:
            raise RuntimeError("the block's other arguments did not pass through")
        out = h + torch.tanh(self.fc(h)) * attention_scale
        return out, {"cache": cache, "weights": out.detach() * 0}


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.blocks = nn.ModuleList([Block(6, 1), Block(6, 2)])
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.embed(x)
        for i, block in enumerate(self.blocks):
            h, _ = block(h, {"layer": i}, attention_scale=0.5)
        return self.head(h)


class PlainBlock(Block):
    def forward(self, h):
        return h + torch.tanh(self.fc(h)) * 0.5


class PlainStack(Stack):
    """The same network with blocks that take and return one tensor, as a reference."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([PlainBlock(6, 1), PlainBlock(6, 2)])

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


@pytest.mark.parametrize("capture", ["input", "output"])
def test_blocks_called_with_extra_arguments(X, capture):
    layers = ["blocks.0", "blocks.1"] if capture == "input" else ["embed", "blocks.0"]
    params = dict(downstream_layers=layers[1:], capture=capture)
    lib = LIBTransformer(Stack().double(), layers[0], **params).fit(X)
    plain = PlainStack().double()
    plain.load_state_dict(lib.model.state_dict())
    reference = LIBTransformer(plain, layers[0], **params).fit(X)
    np.testing.assert_allclose(
        lib.lambdas_, reference.lambdas_, rtol=1e-12, atol=1e-12 * lib.lambdas_.max()
    )  # to rounding: see above
    np.testing.assert_allclose(lib.transform(X), reference.transform(X), rtol=1e-10, atol=1e-12)
    graph, expected = lib.interaction_graph(X), reference.interaction_graph(X)
    for edges, expected_edges in zip(graph.edges.values(), expected.edges.values()):
        np.testing.assert_allclose(edges, expected_edges, rtol=1e-10, atol=1e-14)
