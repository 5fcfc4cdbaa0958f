"""Pending contractions (``_routes.forms.traced_pending``): each way a pending cotangent is
carried, folded, laid out and summed gives what the plain einsum gives."""

import pytest
import torch

from sklearn_lib._routes.forms.traced_ops import OPS
from sklearn_lib._routes.forms.traced_pending import (
    Pending,
    Pieces,
    contract,
    fold,
    folds_kept,
    matmul_form,
    pending_product,
    sum_of,
)

G = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def pending(n=5, broadcast=False):
    """The cotangent of ``v`` in ``z = P @ v``: rows (R, n, h, p, e), ``P`` (n, h, p, s)."""
    g = randn(3, 1 if broadcast else n, 2, 4, 6)
    P = randn(n, 2, 4, 4)
    return pending_product(g, "nhpe", P, "nhps", "nhse"), torch.einsum("rnhpe,nhps->rnhse", g, P)


@pytest.mark.parametrize("broadcast", [False, True])
def test_materialize_is_the_einsum(broadcast):
    p, want = pending(broadcast=broadcast)
    assert p.shape == want.shape
    torch.testing.assert_close(p.materialize(), want, rtol=1e-13, atol=1e-13)


def test_permuted_reshaped_and_scaled_follow_the_tensor():
    p, want = pending()
    # the cotangent of x in x.permute(0, 2, 1, 3) = v: axis order[j] of x was axis j of v
    order = [0, 2, 1, 3]
    torch.testing.assert_close(p.permuted(order).materialize(), want.permute(0, 1, 3, 2, 4))
    merged = p.permuted(order).reshaped((5, 4, 12))
    torch.testing.assert_close(
        merged.materialize(), want.permute(0, 1, 3, 2, 4).reshape(3, 5, 4, 12)
    )
    assert p.reshaped((5, 5, 12)) is None  # would cut a label
    torch.testing.assert_close(p.scaled(-2.0).materialize(), -2.0 * want)


@pytest.mark.parametrize("w_sub", ["hde", "hed"])
@pytest.mark.parametrize("broadcast", [False, True])
def test_fold_is_the_three_way_contraction(w_sub, broadcast):
    """v = einsum('npd,hde->nhpe', x, W): x's cotangent is the pending one times W."""
    p, want = pending(broadcast=broadcast)
    W = randn(2, 8, 6) if w_sub == "hde" else randn(2, 6, 8)
    folded = fold(p, W, w_sub, "nhpe", "npd")
    if folded is None:  # materializing first was no dearer
        assert not broadcast
        return
    reference = torch.einsum(f"rnhpe,{w_sub}->rnpd", want, W)
    torch.testing.assert_close(folded.materialize(), reference, rtol=1e-12, atol=1e-12)


def test_fold_through_merged_heads():
    """A linear map on the merged heads (``view`` of ``(h, e)`` as ``h * e``); rows the same
    for all samples, where folding the weight into them first is the cheapest."""
    p, want = pending(broadcast=True)
    merged = p.permuted([0, 2, 1, 3]).reshaped((5, 4, 12))  # (n, s, h*e)
    W = randn(12, 7)  # u = x W^T with F.linear's weight W^T of shape (12, 7)
    assert fold(merged, W, "oi", "Ao", "Ai") is None  # axes do not match
    folded = fold(merged, W, "oi", "ABo", "ABi")
    assert folded is not None
    reference = want.permute(0, 1, 3, 2, 4).reshape(3, 5, 4, 12) @ W
    torch.testing.assert_close(folded.materialize(), reference, rtol=1e-12, atol=1e-12)


def test_contract_takes_broadcast_batch_axes():
    rows, value = randn(3, 1, 2, 4), randn(5, 2, 4, 6)
    got = contract(rows, "anhp", value, "nhps", "ans")
    torch.testing.assert_close(got, torch.einsum("anhp,nhps->ans", rows, value))


@pytest.mark.parametrize("broadcast_in", ["rows", "value"])
def test_an_axis_one_operand_broadcasts_is_the_others_own_not_a_batch(broadcast_in):
    # Rows shared by all samples (n of size 1) against a per-sample value: one product
    # (r h, p) @ (p, n s), not n small ones each with its own copy of the rows.
    rows, value = randn(3, 1, 2, 4), randn(5, 2, 4, 6)
    if broadcast_in == "value":
        rows, value = randn(3, 5, 2, 4), randn(1, 2, 4, 6)
    _, lhs, (_, rhs), product = matmul_form(rows, "anhp", value, "nhps", "anhs")
    assert lhs().ndim == rhs().ndim == 3 and lhs().shape[0] == rhs().shape[0] == 2  # h only
    got = product(lhs(), rhs())
    torch.testing.assert_close(got, torch.einsum("anhp,nhps->anhs", rows, value))
    torch.testing.assert_close(
        contract(rows, "anhp", value, "nhps", "ans"), torch.einsum("anhp,nhps->ans", rows, value)
    )


def test_sum_of_makes_alike_terms_in_one_product_and_never_changes_a_term():
    a, a_want = pending()
    b, b_want = pending()
    plain = randn(3, 1, 2, 4, 6)
    kept = plain.clone()
    with folds_kept({}):
        total = sum_of([a, b, plain])
    torch.testing.assert_close(total, a_want + b_want + plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain, kept, rtol=0, atol=0)
    # Only tensors: the sum is new, its terms untouched.
    x, y = randn(2, 3), randn(2, 3)
    x0 = x.clone()
    torch.testing.assert_close(sum_of([x, y]), x0 + y)
    torch.testing.assert_close(x, x0, rtol=0, atol=0)


def test_value_layouts_are_kept_for_the_next_chunks_only_inside_the_context():
    p, want = pending()
    kept = {}
    with folds_kept(kept):
        first = p.materialize()
    assert kept  # the value's layout
    with folds_kept(kept):
        again = p.materialize()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert isinstance(p, Pending)


def test_a_fold_that_would_outgrow_its_operands_is_not_taken(monkeypatch):
    from sklearn_lib._routes.forms import traced_pending

    p, want = pending(broadcast=True)
    W = randn(2, 8, 6)
    assert fold(p, W, "hde", "nhpe", "npd") is not None
    monkeypatch.setattr(traced_pending, "JOINED_ELEMENTS", 1)
    largest = max(p.rows.numel(), p.value.numel(), W.numel())
    folded = fold(p, W, "hde", "nhpe", "npd")
    # Taken only where the first product is no larger than the largest operand.
    if folded is not None:
        assert max(folded.rows.numel(), folded.value.numel()) <= largest


# -- pieces of a split -------------------------------------------------------------------
def pieces_of_a_split(present=(1, 2), n=4, width=3):
    """The cotangent of a fused ``q, k, v`` projection's output ``(n, p, 3 w)`` whose pieces
    ``present`` have rows, as the split's product makes it."""
    fused = randn(n, 5, 3 * width)
    out = fused.split(width, -1)
    g = {i: randn(2, n, 5, width) for i in present}
    a = {"input": fused, "size": width, "dim": -1}
    made = OPS["split"].vjp(a, out, g, None, frozenset({"input"}))["input"]
    want = torch.zeros(2, n, 5, 3 * width, dtype=torch.float64)
    for i, t in g.items():
        want[..., i * width : (i + 1) * width] = t
    return made, want


@pytest.mark.parametrize("present", [(0,), (1, 2), (0, 1, 2)])
def test_a_split_along_the_features_gives_pieces_equal_to_the_joined_tensor(present):
    made, want = pieces_of_a_split(present)
    assert isinstance(made, Pieces) and made.shape == want.shape
    assert torch.equal(made.materialize(), want)
    flat = made.reshaped((4 * 5, 9))  # Conv1D's view of the positions as rows
    assert torch.equal(flat.materialize(), want.reshape(2, 20, 9))
    assert made.reshaped((4, 45)) is None  # the features cut: no pieces


def test_a_weight_takes_each_piece_with_its_own_rows():
    made, want = pieces_of_a_split((1, 2))
    flat, joined = made.reshaped((20, 9)), want.reshape(2, 20, 9)
    W, b = randn(4, 9), randn(9)  # addmm(b, x, W): x (20, 4)
    x = randn(20, 4)
    a = {"input": b, "mat1": x, "mat2": W, "beta": 1, "alpha": 1}
    got = OPS["addmm"].vjp(a, None, flat, None, frozenset({"mat1"}))["mat1"]
    torch.testing.assert_close(got, joined @ W.T, rtol=1e-13, atol=1e-13)
    linear = randn(9, 4)  # F.linear(x, weight): weight (9, 4)
    a = {"input": randn(4, 5, 4), "weight": linear, "bias": None}
    got = OPS["linear"].vjp(a, None, made, None, frozenset({"input"}))["input"]
    torch.testing.assert_close(got, want @ linear, rtol=1e-13, atol=1e-13)
    y = randn(4, 9)  # x @ y
    a = {"input": randn(4, 5, 4), "other": y}
    got = OPS["matmul"].vjp(a, randn(4, 5, 9), made, None, frozenset({"input"}))["input"]
    torch.testing.assert_close(got, want @ y.T, rtol=1e-13, atol=1e-13)
