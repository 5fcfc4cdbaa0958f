"""The table of batched products (``_routes.forms.traced_ops``): each operation's product for
many rows at once against autograd's, one row at a time, with broadcast cotangents."""

import operator

import pytest
import torch
import torch.nn.functional as F

from sklearn_lib._routes.forms.traced_ops import FUNCTIONS, OPS, Unsupported, unbroadcast
from sklearn_lib._routes.forms.traced_pending import Pending

G = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


CASES = {
    "matmul": (operator.matmul, lambda: (randn(3, 2, 4), randn(3, 4, 5)), {}),
    "softmax": (F.softmax, lambda: (randn(3, 2, 4),), {"dim": -1}),
    "layer_norm": (F.layer_norm, lambda: (randn(3, 2, 4), (4,), randn(4), randn(4)), {}),
    "einsum": (torch.einsum, lambda: ("npd,hde->nhpe", randn(3, 2, 4), randn(2, 4, 5)), {}),
    "sdpa": (
        F.scaled_dot_product_attention,
        lambda: (randn(3, 2, 4, 5), randn(3, 2, 4, 5), randn(3, 2, 4, 5)),
        {"is_causal": True},
    ),  # fmt: skip
    "var": (torch.var, lambda: (randn(3, 2, 4), -1), {"keepdim": True, "unbiased": False}),
    "getitem": (operator.getitem, lambda: (randn(3, 4, 5), (slice(None), -1)), {}),
    "cat": (torch.cat, lambda: ([randn(3, 2), randn(3, 4)], 1), {}),
    "div": (operator.truediv, lambda: (randn(3, 4), randn(3, 4).exp()), {}),
}


def _dependent(args):
    return [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.ndim >= 1 and (
        i == 0 or a.shape[0] == 3)]  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("broadcast", [False, True])
def test_products_equal_autograds(name, broadcast):
    function, make, kwargs = CASES[name]
    args = list(make())
    op = OPS[FUNCTIONS[function]]
    out = function(*args, **kwargs)
    bound = op.bind(args, kwargs)
    tensors = {k: v for k, v in bound.items() if isinstance(v, torch.Tensor)}
    lists = {k: v for k, v in bound.items() if isinstance(v, (list, tuple)) and v and
             isinstance(v[0], torch.Tensor)}  # fmt: skip
    wanted = {k for k, v in tensors.items() if v.shape[:1] == out.shape[:1]}
    wanted |= {f"{k}#{i}" for k, v in lists.items() for i in range(len(v))}
    saved = op.save(bound, out, lambda z: function(z, *args[1:], **kwargs)) if op.save else None
    rows = randn(4, 1 if broadcast else out.shape[0], *out.shape[1:])
    grads = op.vjp(bound, out, rows, saved, frozenset(wanted))
    for name_, grad in grads.items():
        inputs = bound[name_] if name_ in lists else [bound[name_]]
        grads_ = grad if name_ in lists else [grad]
        for x, g in zip(inputs, grads_):
            if g is None:
                continue
            for r in range(rows.shape[0]):
                x_leaf = x.detach().requires_grad_(True)
                new_args = [x_leaf if a is x else a for a in args]
                if name_ in lists:
                    new_args = [[x_leaf if t is x else t for t in a] if isinstance(a, list) else a
                                for a in new_args]  # fmt: skip
                (ref,) = torch.autograd.grad(function(*new_args, **kwargs), x_leaf,
                                             rows[r].expand_as(out))  # fmt: skip
                g = g.materialize() if isinstance(g, Pending) else g
                got = g.expand(g.shape[0], *x.shape)[r]
                torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_unbroadcast_sums_the_broadcast_axes_only():
    g = randn(2, 3, 4)
    torch.testing.assert_close(unbroadcast(g, (1, 4), (3, 4)), g.sum(1, keepdim=True))
    torch.testing.assert_close(unbroadcast(g, (4,), (3, 4)), g.sum(1))
    assert unbroadcast(g, (3, 4), (3, 4)) is g
    # A cotangent itself broadcast (the same entry 5 times) sums to 5 times it.
    once = randn(2, 3, 1)
    torch.testing.assert_close(unbroadcast(once, (3, 1), (3, 5)), 5 * once)
    torch.testing.assert_close(unbroadcast(once, (1,), (3, 5)), 5 * once.sum(1))


def test_cases_outside_a_product_say_so():
    op = OPS["getitem"]
    x = randn(3, 4)
    index = torch.tensor([0, 2])
    with pytest.raises(Unsupported, match="indexing by tensors"):
        op.vjp({"input": x, "index": index}, x[index], randn(2, 2, 4), None, {"input"})
    cast = OPS["cast"]
    with pytest.raises(Unsupported, match="cast to a dtype without derivatives"):
        cast.vjp({"input": x}, x.long(), randn(2, 3, 4), None, {"input"})
    # A cast between floating dtypes sends the cotangent back in the input's, as autograd.
    grads = cast.vjp({"input": x}, x.float(), randn(2, 3, 4).float(), None, {"input"})
    assert grads["input"].dtype == torch.float64
