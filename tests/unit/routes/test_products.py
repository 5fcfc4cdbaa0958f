"""The products every route shares (``_routes.products``), against hand computations."""

import numpy as np
import pytest
import torch

from sklearn_lib._routes import products
from sklearn_lib._routes.cotangents import Cotangents, ExactRows, scaled
from sklearn_lib._routes.forms.base import ClosedForm
from sklearn_lib._routes.products import (
    KINDS,
    as_rows,
    directional,
    fold_positions,
    form_directional,
    form_gram,
    form_rows,
    form_square_sums,
    gram_of,
    masked,
    new_sums,
    offered,
    probe_rows,
    row_chunks,
    square_sums,
    square_sums_of,
)

RULES = {"gradient": ((1.0,), (1.0,)), "three points": ((0.2, 0.6, 1.0), (0.25, 0.35, 0.4))}


def _t(rng, *shape):
    return torch.as_tensor(rng.normal(size=shape))


def _rule(name):
    return tuple(torch.tensor(v, dtype=torch.float64) for v in RULES[name])


def test_the_kinds_of_product():
    assert KINDS == ("rows", "gram", "tangents")


# -- Grams of rows -------------------------------------------------------------------------
def test_gram_of_sums_the_outer_products_of_every_chunk(rng):
    chunks = [_t(rng, 2, 4, 3, 5), _t(rng, 3, 4, 3, 5)]
    expected = sum(torch.einsum("rnpd,rnpe->de", g, g) for g in chunks)
    got = gram_of(iter(chunks), 4, 5)
    assert got.dtype == torch.float64 and got.shape == (5, 5)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)


def test_gram_of_counts_a_size_one_sample_axis_n_times(rng):
    shared = _t(rng, 3, 1, 2, 5)  # the same rows for each of 7 samples
    per_sample = _t(rng, 2, 7, 2, 5)
    expected = torch.einsum("rnpd,rnpe->de", shared.expand(3, 7, 2, 5), shared.expand(3, 7, 2, 5))
    expected = expected + torch.einsum("rnpd,rnpe->de", per_sample, per_sample)
    torch.testing.assert_close(gram_of([shared, per_sample], 7, 5), expected, rtol=1e-13, atol=0)


def test_gram_of_float32_chunks_is_float64(rng):
    g = _t(rng, 2, 3, 1, 4)
    got = gram_of([g.float()], 3, 4)
    assert got.dtype == torch.float64
    flat = g.float().double().reshape(-1, 4)
    torch.testing.assert_close(got, flat.T @ flat, rtol=1e-13, atol=1e-13)


def test_as_rows_keeps_every_row_and_reads_permuted_views_without_a_copy(rng):
    base = _t(rng, 4, 3, 2, 5)  # (n, r, P, d) in memory
    g = base.permute(1, 0, 2, 3)  # (r, n, P, d), as a closed form may return it
    flat = as_rows(g)
    assert flat.shape == (24, 5)
    assert flat.data_ptr() == base.data_ptr()  # a view: no copy
    assert sorted(map(tuple, flat.tolist())) == sorted(map(tuple, g.reshape(-1, 5).tolist()))
    torch.testing.assert_close(gram_of([g], 3, 5), torch.einsum("rnpd,rnpe->de", g, g))


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (1, 0, 2, 3), (2, 1, 0, 3)])
def test_times_is_one_product_in_memory_order(rng, order):
    base = _t(rng, 4, 3, 2, 5)
    g = base.permute(*order)  # a closed form's permuted view
    matrix = _t(rng, 5, 6)
    got = products.times(g, matrix)
    assert got.shape == (*g.shape[:-1], 6)
    torch.testing.assert_close(got, g @ matrix, rtol=1e-13, atol=1e-13)
    # A slice along a middle axis (not one block of memory) as well.
    torch.testing.assert_close(products.times(g[:, 1:], matrix), g[:, 1:] @ matrix)


# -- directional derivatives ----------------------------------------------------------------
def test_directional_derivatives_by_hand(rng):
    g = _t(rng, 2, 3, 4, 5)  # (r, n, P, d)
    directions, coefficients = _t(rng, 6, 5), _t(rng, 3, 4, 6)
    expected = np.zeros((2, 3, 6))
    G, V, A = g.numpy(), directions.numpy(), coefficients.numpy()
    for r in range(2):
        for x in range(3):
            for j in range(6):
                expected[r, x, j] = sum(A[x, s, j] * G[r, x, s] @ V[j] for s in range(4))
    got = directional(g, directions, coefficients)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # Rows laid out samples first (a permuted view) give the same.
    permuted = g.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    np.testing.assert_allclose(directional(permuted, directions, coefficients), expected, 1e-12)


def test_square_sums_of_per_sample_rows(rng):
    g = _t(rng, 3, 5, 2, 4)
    directions, coefficients = _t(rng, 2, 4), _t(rng, 5, 2, 2)
    along = torch.einsum("rxsd,jd,xsj->rxj", g, directions, coefficients)
    torch.testing.assert_close(square_sums(g, directions, coefficients), (along**2).sum(1))


@pytest.mark.parametrize("positions", [1, 3])
def test_square_sums_of_constant_rows_equal_the_per_sample_product(rng, positions):
    g = _t(rng, 4, 1, positions, 5)  # the same rows for every sample
    directions, coefficients = _t(rng, 3, 5), _t(rng, 7, positions, 3)
    expanded = g.expand(4, 7, positions, 5).contiguous()
    along = torch.einsum("rxsd,jd,xsj->rxj", expanded, directions, coefficients)
    got = square_sums(g, directions, coefficients)
    assert got.shape == (4, 3) and got.dtype == torch.float64
    torch.testing.assert_close(got, (along**2).sum(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, square_sums(expanded, directions, coefficients))


def test_square_sums_of_constant_rows_are_never_negative(rng):
    """Issue 24: a feature the same at every position and rows that sum to zero over
    the positions give squared derivatives of zero, which the quadratic form rounds to
    values on both sides of it (99 of 600 negative, measured): graphs refuse negative
    edges, so the form's value is clamped at its exact lower bound."""
    positions = 6
    g = _t(rng, 100, 1, positions, 5)
    g = g - g.mean(2, keepdim=True)  # rows summing to zero over the positions
    directions = _t(rng, 6, 5)
    coefficients = _t(rng, 9, 1, 6).expand(9, positions, 6).contiguous()  # position-free
    got = square_sums(g, directions, coefficients)
    assert got.min() >= 0
    torch.testing.assert_close(got, torch.zeros_like(got), rtol=0, atol=1e-20)


def test_square_sums_of_writes_every_chunk_in_order(rng):
    chunks = [_t(rng, 2, 5, 3, 4), _t(rng, 1, 1, 3, 4), _t(rng, 3, 5, 3, 4)]
    tangents = (_t(rng, 2, 4), _t(rng, 5, 3, 2))
    got = square_sums_of(iter(chunks), tangents, 6)
    expected = torch.cat([square_sums(g, *tangents) for g in chunks])
    assert got.shape == (6, 2) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    per_sample = torch.cat([chunks[0], chunks[1].expand(1, 5, 3, 4), chunks[2]])
    along = torch.einsum("rxsd,jd,xsj->rxj", per_sample, *tangents)
    torch.testing.assert_close(got, (along**2).sum(1))


def test_new_sums_is_one_float64_tensor():
    sums = new_sums(5, 3, torch.device("cpu"))
    assert sums.shape == (5, 3) and sums.dtype == torch.float64


def test_offered_passes_every_chunk_and_stops_offering_once_declined():
    offered_to = []

    def keep(g):
        offered_to.append(g)
        return g < 2

    assert list(offered(iter(range(5)), keep)) == [0, 1, 2, 3, 4]
    assert offered_to == [0, 1, 2]


# -- chunks, folds, probes, padding ----------------------------------------------------------
@pytest.mark.parametrize("budget", [None, 1, 100, 10_000])
@pytest.mark.parametrize("n_rows", [1, 7, 40])
def test_row_chunks_cover_all_rows_once(monkeypatch, budget, n_rows):
    if budget is not None:
        monkeypatch.setattr(products, "CHUNK_ELEMENTS", budget)
    points, rows = torch.zeros(6, 2, 3), torch.zeros(n_rows, 2, 4)
    chunks = row_chunks(points, rows)
    assert chunks[0][0] == 0 and chunks[-1][1] == n_rows
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))  # contiguous, no overlap
    size = max(1, products.CHUNK_ELEMENTS // points.numel())
    assert all(0 < stop - start <= size for start, stop in chunks)
    assert len(chunks) == -(-n_rows // size)


def test_fold_positions_makes_positions_samples(rng):
    points = _t(rng, 6, 2, 3, 4)  # (A * n, P1, P2, d)
    folded = fold_positions(points)
    assert folded.shape == (36, 1, 4)
    torch.testing.assert_close(folded[:, 0], points.reshape(-1, 4), rtol=0, atol=0)
    torch.testing.assert_close(folded[7, 0], points[1, 0, 1], rtol=0, atol=0)


def _signs_of(probe, rows):
    """The coefficients of each probe row in the (independent) rows, by least squares."""
    A = rows.reshape(rows.shape[0], -1).T  # (P * d, R)
    B = probe.reshape(probe.shape[0], -1).T
    coefficients = torch.linalg.lstsq(A, B).solution.T  # (1 + c, R)
    torch.testing.assert_close(coefficients @ A.T, probe.reshape(probe.shape[0], -1))
    return coefficients


def test_probe_rows_of_a_tensor_are_the_first_row_and_signed_sums(rng):
    rows = _t(rng, 5, 3, 4)  # 5 independent rows of 12 numbers
    probe = probe_rows(rows, 3)
    assert probe.shape == (4, 3, 4)
    torch.testing.assert_close(probe[0], rows[0], rtol=0, atol=0)
    signs = _signs_of(probe[1:], rows)
    torch.testing.assert_close(signs.abs(), torch.ones_like(signs))
    assert torch.equal(probe, probe_rows(rows, 3))  # seeded: the same every time
    assert not torch.equal(signs[0], signs[1])  # combinations differ


def test_probe_rows_of_exact_rows_equal_those_of_the_whole_tensor(rng):
    rows = Cotangents(_t(rng, 4, 2), 3).rows  # 6 rows of shape (3, 4)
    assert isinstance(rows, ExactRows)
    whole = rows[:]
    probe = probe_rows(rows, 2)
    assert probe.shape == (3, 3, 4)
    torch.testing.assert_close(probe, probe_rows(whole, 2), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(probe[0], whole[0], rtol=0, atol=0)
    signs = _signs_of(probe[1:], whole)
    torch.testing.assert_close(signs.abs(), torch.ones_like(signs))


def test_probe_rows_keep_the_dtype(rng):
    rows = _t(rng, 3, 2, 2).float()
    assert probe_rows(rows, 2).dtype == torch.float32
    assert probe_rows(Cotangents(_t(rng, 2, 2).float(), 2).rows, 2).dtype == torch.float32


def _padded(n=3, T=4):
    mask = torch.ones(n, T, dtype=torch.int64)
    mask[0, 2:] = 0
    return {"input_ids": torch.zeros(n, T, dtype=torch.int64), "attention_mask": mask}


@pytest.mark.parametrize(
    "inputs, points_shape, rows_shape, expected",
    [
        ("tensor", (6, 4, 5), (2, 4, 3), False),
        ("no mask", (6, 4, 5), (2, 4, 3), False),
        ("mask", (6, 4, 5), (2, 1, 3), True),  # input positions are the mask's
        ("mask", (6, 5), (2, 4, 3), True),  # output positions are the mask's
        ("mask", (6, 5), (2, 1, 3), False),  # neither: pooled before and after
        ("mask", (6, 3, 5), (2, 2, 3), False),  # other positions than the mask's
    ],
)
def test_masked_where_the_mask_meets_input_or_output_positions(
    inputs, points_shape, rows_shape, expected
):
    x = {
        "tensor": torch.zeros(3, 4),
        "no mask": {"input_ids": torch.zeros(3, 4, dtype=torch.int64)},
        "mask": _padded(),
    }[inputs]
    assert masked(x, torch.zeros(points_shape), torch.zeros(rows_shape)) is expected


def test_masked_with_exact_rows():
    rows = Cotangents(torch.eye(3, dtype=torch.float64), 4).rows
    assert masked(_padded(), torch.zeros(6, 5), rows) is True


# -- calling a closed form -------------------------------------------------------------------
class Squares(ClosedForm):
    """``F(h) = (h * h) W`` per position: rows ``2 h * (c W^T)``, different at every point."""

    title = "squares"

    def __init__(self, W):
        self.W = W
        self.seen = []

    @classmethod
    def detect(cls, session, section):
        return None

    def __call__(self, h):
        return (h * h) @ self.W

    def vjp(self, x, points, cotangents, tangents=None):
        self.seen.append(type(cotangents))
        rows = 2 * points.unsqueeze(0) * (cotangents @ self.W.T).unsqueeze(1)  # (R, m, P, d)
        if tangents is None:
            return rows
        directions, coefficients = tangents
        return torch.einsum("rmpd,jd,mpj->rmj", rows, directions, coefficients)


class Linear(Squares):
    """``F(h) = h W``: the same rows ``c W^T`` at every point (a size-1 point axis)."""

    def __call__(self, h):
        return h @ self.W

    def vjp(self, x, points, cotangents, tangents=None):
        self.seen.append(type(cotangents))
        rows = (cotangents @ self.W.T).unsqueeze(1)  # (R, 1, P, d)
        if tangents is None:
            return rows
        directions, coefficients = tangents
        return torch.einsum("rpd,jd,mpj->rmj", rows[:, 0], directions, coefficients)

    def gram(self, x, points, weights, cotangents):
        self.seen.append(type(cotangents))
        m = points.shape[0] // weights.shape[0]
        c = cotangents.reshape(-1, cotangents.shape[-1])
        # float32 on purpose: form_gram hands back float64.
        return (m * weights.sum() ** 2 * (self.W @ (c.T @ c) @ self.W.T)).float()


class Declines(Squares):
    def vjp(self, x, points, cotangents, tangents=None):
        return NotImplemented


def _brute_rows(fn, f, rows, alphas, weights):
    """``sum_a w_a J(alpha_a f_x)^T c_r``, (R, n, P, d), from the full Jacobian."""
    out = []
    for point in f:
        g = 0
        for alpha, weight in zip(alphas, weights):
            jac = torch.autograd.functional.jacobian(fn, alpha * point)  # (P, k, P, d)
            g = g + weight * torch.tensordot(rows, jac, dims=2)
        out.append(g)
    return torch.stack(out, 1)


def _form_case(rng, cls, rule):
    form = cls(_t(rng, 4, 3))  # d = 4 -> d_next = 3
    f = _t(rng, 5, 2, 4)  # n = 5, P = 2
    alphas, weights = _rule(rule)
    rows = _t(rng, 6, 2, 3)
    return form, f, scaled(f, alphas), rows, weights, _brute_rows(form, f, rows, *RULES[rule])


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("cls", [Squares, Linear])
def test_form_rows_integrate_the_forms_rows(rng, cls, rule):
    form, f, points, rows, weights, expected = _form_case(rng, cls, rule)
    got = form_rows(form, None, points, rows, weights, f.shape[0])
    assert got.shape == ((6, 1, 2, 4) if cls is Linear else (6, 5, 2, 4))
    torch.testing.assert_close(got.expand_as(expected), expected, rtol=1e-12, atol=1e-12)


def test_form_rows_flatten_positions(rng):
    form = Squares(_t(rng, 4, 3))
    f = _t(rng, 3, 2, 2, 4)  # two position axes
    rows = _t(rng, 2, 2, 2, 3)
    got = form_rows(form, None, f, rows, torch.ones(1, dtype=torch.float64), 3)
    expected = form.vjp(None, f, rows).reshape(2, 3, 4, 4)
    assert got.shape == (2, 3, 4, 4)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("rule", list(RULES))
def test_form_gram_is_the_forms_gram_in_float64_on_whole_rows(rng, rule):
    form, f, points, _, weights, _ = _form_case(rng, Linear, rule)
    rows = Cotangents(_t(rng, 3, 2), 2).rows
    got = form_gram(form, None, points, weights, rows)
    assert got.dtype == torch.float64
    assert form.seen == [torch.Tensor]  # exact rows are made whole for the form
    expected = _brute_rows(form, f, rows[:], *RULES[rule])
    flat = expected.reshape(-1, 4)
    torch.testing.assert_close(got, flat.T @ flat, rtol=1e-6, atol=1e-6)  # float32 from the form


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("cls", [Squares, Linear])
def test_form_directional_integrates_the_forms_derivatives(rng, cls, rule):
    form, f, points, rows, weights, expected_rows = _form_case(rng, cls, rule)
    tangents = (_t(rng, 3, 4), _t(rng, 5, 2, 3))
    got = form_directional(form, None, points, rows, weights, tangents)
    assert got.dtype == torch.float64 and got.shape == (6, 5, 3)
    expected = directional(expected_rows, *tangents)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [Squares, Linear])
def test_form_square_sums_in_small_chunks(rng, monkeypatch, cls):
    form, f, points, rows, weights, expected_rows = _form_case(rng, cls, "three points")
    tangents = (_t(rng, 3, 4), _t(rng, 5, 2, 3))
    expected = (directional(expected_rows, *tangents) ** 2).sum(1)
    whole = form_square_sums(form, None, points, rows, weights, tangents)
    monkeypatch.setattr(products, "CHUNK_ELEMENTS", 1)  # one row at a time
    calls = len(form.seen)
    chunked = form_square_sums(form, None, points, rows, weights, tangents)
    assert len(form.seen) - calls == len(rows) * len(weights)  # a call per row and point
    for got in (whole, chunked):
        assert got.shape == (6, 3) and got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_not_implemented_passes_through(rng):
    form, f, points, rows, weights, _ = _form_case(rng, Declines, "three points")
    tangents = (_t(rng, 3, 4), _t(rng, 5, 2, 3))
    assert form_rows(form, None, points, rows, weights, 5) is NotImplemented
    assert form_directional(form, None, points, rows, weights, tangents) is NotImplemented
    assert form_gram(form, None, points, weights, rows) is NotImplemented  # the default gram
