"""Exact rows kept per output position (``_routes.forms.traced_positions``): each operation's
position map against the entries its product really connects, and the whole rows made back."""

import pytest
import torch
import torch.nn.functional as F

from sklearn_lib._routes.forms.traced_positions import (
    Diagonal,
    diagonal_sum,
    output_positions,
    pieces_map,
    position_map,
)

N, P, D = 3, 5, 4


def by_position(shape, axis):
    """A position map that is the index along ``axis``, constant elsewhere."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return torch.arange(shape[axis]).reshape(view)


def reached(function, x, out_positions):
    """The output positions each entry of ``x`` reaches, found by autograd: for every
    output position ``t``, the entries with a non-zero derivative of the outputs at ``t``.

    Returns a map with -1 where nothing is reached, or None where an entry reaches two.
    """
    x = x.detach().requires_grad_(True)
    out = function(x)
    found = torch.full(x.shape, -1, dtype=torch.long)
    for t in out_positions.unique().tolist():
        weights = torch.randn(out.shape) * (out_positions.expand(out.shape) == t)
        (g,) = torch.autograd.grad((out * weights).sum(), x, retain_graph=True)
        hit = g != 0
        if (hit & (found >= 0)).any():
            return None
        found[hit] = t
    return found


def agrees(function, x, name, mapped, positions):
    """Whether ``mapped`` (the position map of ``x``, argument ``name`` of the node) is what
    autograd finds for ``function`` of ``x``."""
    truth = reached(function, x, positions)
    if truth is None:
        return mapped is None
    assert mapped is not None, name
    mapped = mapped.expand(x.shape)
    return bool(((truth == mapped) | (truth < 0)).all())


def test_a_linear_map_on_the_features_keeps_positions():
    x, W = torch.randn(N, P, D), torch.randn(6, D)
    out = F.linear(x, W)
    positions = by_position(out.shape, 1)
    maps = position_map("linear", {"input": x, "weight": W}, out, positions, frozenset({"input"}))
    assert maps["input"].shape == (1, P, 1)
    assert agrees(lambda input: F.linear(input, W), x, "input", maps["input"], positions)


def test_a_map_that_varies_along_the_features_mixes_in_a_linear_map():
    x, W = torch.randn(N, P, D), torch.randn(6, D)
    out = F.linear(x, W)
    positions = by_position(out.shape, 2)  # each feature its own "position"
    maps = position_map("linear", {"input": x, "weight": W}, out, positions, frozenset({"input"}))
    assert maps == {"input": None}


def test_addmm_on_flattened_positions_as_hugging_faces_conv1d():
    x, W, b = torch.randn(N * P, D), torch.randn(D, 6), torch.randn(6)
    out = torch.addmm(b, x, W)
    positions = output_positions((P, 6), "cpu").expand(N, P, 6).reshape(N * P, 6)
    a = {"input": b, "mat1": x, "mat2": W, "beta": 1, "alpha": 1}
    maps = position_map("addmm", a, out, positions, frozenset({"mat1"}))
    assert agrees(lambda mat1: torch.addmm(b, mat1, W), x, "mat1", maps["mat1"], positions)


@pytest.mark.parametrize("dims, kept", [((-1,), True), ((1,), False)])
def test_softmax_keeps_positions_only_along_the_features(dims, kept):
    x = torch.randn(N, P, D)
    positions = by_position(x.shape, 1)
    maps = position_map("softmax", {"input": x, "dim": dims[0]}, x, positions, frozenset({"input"}))
    assert (maps["input"] is not None) == kept
    if kept:
        assert agrees(lambda input: input.softmax(dims[0]), x, "input", maps["input"], positions)


def test_layer_norm_keeps_positions():
    x = torch.randn(N, P, D)
    positions = by_position(x.shape, 1)
    a = {"input": x, "normalized_shape": (D,), "weight": None, "bias": None, "eps": 1e-5}
    maps = position_map("layer_norm", a, x, positions, frozenset({"input"}))
    function = lambda input: F.layer_norm(input, (D,))  # noqa: E731
    assert agrees(function, x, "input", maps["input"], positions)


def test_a_reshape_that_merges_samples_and_positions():
    x = torch.randn(N * P, D)
    out = x.view(N, P, D)
    positions = by_position(out.shape, 1)
    maps = position_map("reshape", {"input": x}, out, positions, frozenset({"input"}))
    assert agrees(lambda input: input.view(N, P, D), x, "input", maps["input"], positions)


@pytest.mark.parametrize("op, a", [("transpose", {"dim0": 1, "dim1": 2}),
                                   ("permute", {"dims": (2, 0, 1)})])  # fmt: skip
def test_transposes_and_permutes_move_the_map(op, a):
    x = torch.randn(N, P, D)
    out = x.transpose(1, 2) if op == "transpose" else x.permute(2, 0, 1)
    positions = by_position(out.shape, 2 if op == "transpose" else 2)
    maps = position_map(op, {"input": x, **a}, out, positions, frozenset({"input"}))
    function = (lambda input: input.transpose(1, 2)) if op == "transpose" else (
        lambda input: input.permute(2, 0, 1))  # fmt: skip
    assert agrees(function, x, "input", maps["input"], positions)


def test_attention_keeps_the_queries_and_mixes_keys_and_values():
    q, k, v = torch.randn(N, 2, P, D), torch.randn(N, 2, P, D), torch.randn(N, 2, P, D)
    scores = q @ k.mT
    positions = by_position(scores.shape, 2)  # the query's position
    maps = position_map("matmul", {"input": q, "other": k.mT}, scores, positions,
                        frozenset({"input", "other"}))  # fmt: skip
    assert maps["other"] is None
    assert agrees(lambda input: input @ k.mT, q, "input", maps["input"], positions)
    assert not agrees(lambda other: q @ other, k.mT, "other", positions, positions)
    out = F.scaled_dot_product_attention(q, k, v)
    positions = by_position(out.shape, 2)
    a = {"query": q, "key": k, "value": v}
    maps = position_map("sdpa", a, out, positions, frozenset({"query", "key", "value"}))
    assert maps["key"] is None and maps["value"] is None
    sdpa = lambda query: F.scaled_dot_product_attention(query, k, v)  # noqa: E731
    assert agrees(sdpa, q, "query", maps["query"], positions)


def test_einsum_operands_one_at_a_time():
    x, W = torch.randn(N, P, D), torch.randn(2, D, 3)
    out = torch.einsum("npd,hde->nhpe", x, W)
    positions = by_position(out.shape, 2)
    a = {"equation": "npd,hde->nhpe", "operands": (x, W)}
    maps = position_map("einsum", a, out, positions, frozenset({"operands#0"}))
    function = lambda z: torch.einsum("npd,hde->nhpe", z, W)  # noqa: E731
    assert agrees(function, x, "operands#0", maps["operands#0"], positions)
    pattern, v = torch.randn(N, 2, P, P).softmax(-1), torch.randn(N, 2, P, 3)
    out = torch.einsum("nhqk,nhke->nhqe", pattern, v)
    positions = by_position(out.shape, 2)
    a = {"equation": "nhqk,nhke->nhqe", "operands": (pattern, v)}
    maps = position_map("einsum", a, out, positions, frozenset({"operands#0", "operands#1"}))
    assert maps["operands#1"] is None  # the values are read at every query
    function = lambda z: torch.einsum("nhqk,nhke->nhqe", z, v)  # noqa: E731
    assert agrees(function, pattern, "operands#0", maps["operands#0"], positions)


def test_a_sum_over_positions_sends_every_entry_to_the_one_it_is_summed_into():
    x = torch.randn(N, P, D)
    out = x.sum(1)
    positions = torch.zeros(1, 1, dtype=torch.long) + 2
    a = {"input": x, "dim": 1, "keepdim": False, "dtype": None}
    maps = position_map("sum", a, out, positions, frozenset({"input"}))
    assert agrees(lambda input: input.sum(1), x, "input", maps["input"], positions)


def test_a_sliced_input_reaches_nothing_where_it_is_not_read():
    x = torch.randn(N, P, D)
    out = x[:, 1:3]
    positions = by_position(out.shape, 1)
    a = {"input": x, "index": (slice(None), slice(1, 3))}
    maps = position_map("getitem", a, out, positions, frozenset({"input"}))
    assert (maps["input"][:, [0, 3, 4]] == -1).all()
    assert agrees(lambda input: input[:, 1:3], x, "input", maps["input"], positions)


def test_an_entrywise_sum_with_a_mean_over_positions_mixes():
    x = torch.randn(N, P, D)
    mean = x.mean(1, keepdim=True)
    out = x + mean
    positions = by_position(out.shape, 1)
    a = {"input": x, "other": mean, "alpha": 1}
    maps = position_map("add", a, out, positions, frozenset({"input", "other"}))
    assert maps["other"] is None and maps["input"] is not None


def test_a_split_with_one_piece_of_rows_takes_its_siblings_map():
    fused = torch.randn(N, P, 3 * D)
    out = fused.split(D, -1)
    piece = by_position(out[0].shape, 1)
    joined = pieces_map("split", {"input": fused, "size": D, "dim": -1}, out, {0: piece})
    assert joined.shape == fused.shape
    assert (joined == by_position(fused.shape, 1)).all()  # constant along the features


def test_the_whole_rows_are_the_exact_rows_by_position():
    k = 3
    rows = torch.randn(k, N, P, D)
    positions = output_positions((P, D), "cpu")
    term = Diagonal(rows, positions)
    want = torch.zeros(P * k, N, P, D)
    for t in range(P):
        for i in range(k):
            want[t * k + i, :, t] = rows[i, :, t]
    assert torch.equal(term.dense(0, P * k), want)
    for start, stop in [(0, 2), (2, 7), (7, 8), (4, P * k)]:  # across positions
        assert torch.equal(term.dense(start, stop), want[start:stop])


def test_terms_of_different_maps_are_not_summed():
    rows = torch.randn(2, N, P, D)
    a = Diagonal(rows, by_position(rows.shape[1:], 1))
    b = Diagonal(rows, by_position(rows.shape[1:], 1).flip(1))
    assert diagonal_sum([a, b]) is None
    total = diagonal_sum([a, a])
    assert torch.equal(total.rows, 2 * rows)


def test_a_query_or_operand_broadcast_over_positions_mixes():
    """A query pooled over one position axis is read at every position of it (found in
    review: taken per position, 8% off in the middle rows)."""
    x = torch.randn(N, 3, P, D)
    q = x.mean(1, keepdim=True)  # (N, 1, P, D)
    out = F.scaled_dot_product_attention(q, x, x)
    positions = output_positions(out.shape[1:], "cpu")
    a = {"query": q, "key": x, "value": x}
    assert position_map("sdpa", a, out, positions, frozenset({"query"})) == {"query": None}
    sdpa = lambda query: F.scaled_dot_product_attention(query, x, x)  # noqa: E731
    assert reached(sdpa, q, positions) is None  # the truth: it mixes
    out = torch.einsum("npd,npd->npd", q[:, 0, :1], x[:, 0])  # (N, 1, D) against (N, P, D)
    positions = by_position(out.shape, 1)
    a = {"equation": "npd,npd->npd", "operands": (q[:, 0, :1], x[:, 0])}
    maps = position_map("einsum", a, out, positions, frozenset({"operands#0", "operands#1"}))
    assert maps["operands#0"] is None and maps["operands#1"] is not None
